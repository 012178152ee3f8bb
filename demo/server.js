'use strict';
// One server of the demo cluster, in its own process (started by demo/cluster.js): a Socket.IO
// server with the adapter that serves the chat page. Chat messages go to the sender's room on every
// server; each one is also announced to the other servers (serverSideEmit) so their logs show it
// crossing. The page lists the users of every server with fetchSockets(). Connection state
// recovery is on: the page's "Stop this server" button closes this server gracefully, and its
// pages reconnect to another server, which recovers them with the messages they missed.
const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');
const { Server } = require('socket.io');
const { createAdapter } = require('..');

const name = process.env.DEMO_SERVER_NAME;
const url = process.env.AMQP_URL || 'amqp://guest:guest@127.0.0.1:5672';
const page = fs.readFileSync(path.join(__dirname, 'public', 'index.html'));

const httpServer = http.createServer((req, res) => {
  if (req.url === '/' || req.url.startsWith('/?')) {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(page);
  } else {
    res.writeHead(404).end();
  }
});
// Recovery across servers: a page keeps its id, room and name on the server it moves to, and gets
// what was said while it moved.
const io = new Server(httpServer, { connectionStateRecovery: { maxDisconnectionDuration: 2 * 60 * 1000 } });
let peers = []; // every server's URL (from demo/cluster.js), for pages to move to
io.adapter(createAdapter(url, { exchangeName: process.env.DEMO_EXCHANGE, instanceName: name }));
const adapter = io.of('/').adapter;
adapter.on('error', (err) => {
  console.error(`[${name}] ${err.message}`);
  if (!started) exitWith(1); // a demo server without its broker has nothing to show
});
adapter.on('disconnect', (err) => console.error(`[${name}] ${err.message}`));
adapter.on('reconnect', () => console.log(`[${name}] reconnected to RabbitMQ`));
let started = false;

const log = (line) => console.log(`[${name}] ${line}`);
const presenceChanged = () => io.emit('presence');

io.on('connection', (socket) => {
  if (socket.recovered) {
    // Id, room and data came back from the server the page was on; it lives here now.
    log(`${socket.data.name} recovered here from ${socket.data.server}, still in #${socket.data.room}`);
    socket.data.server = name;
  } else {
    socket.data = { name: String(socket.handshake.auth?.name || `guest-${socket.id.slice(0, 4)}`).slice(0, 24), server: name, room: null };
  }
  socket.emit('welcome', { server: name, peers, recovered: socket.recovered, room: socket.data.room });
  presenceChanged();

  socket.on('join', (room, ack) => {
    room = String(room || 'lobby').slice(0, 32);
    if (socket.data.room) socket.leave(socket.data.room);
    socket.join(room);
    socket.data.room = room;
    log(`${socket.data.name} joined #${room}`);
    presenceChanged();
    if (typeof ack === 'function') ack(room);
  });

  socket.on('chat', (text, ack) => {
    const { room } = socket.data;
    if (!room) return typeof ack === 'function' && ack({ error: 'join a room first' });
    const message = { from: socket.data.name, server: name, room, text: String(text).slice(0, 500), at: Date.now() };
    io.to(room).emit('chat', message);
    io.serverSideEmit('chat-crossed', message);
    log(`${message.from} in #${room}: ${message.text}`);
    if (typeof ack === 'function') ack({ ok: true });
  });

  socket.on('who', async (ack) => {
    if (typeof ack !== 'function') return;
    try {
      const sockets = await io.fetchSockets();
      const serverCount = await adapter.serverCount();
      ack({ serverCount, users: sockets.map((s) => s.data).filter((d) => d?.name) });
    } catch (err) {
      ack({ error: err.message });
    }
  });

  // The demo's way to show recovery: close this server gracefully (sessions are saved first).
  socket.on('stop-server', () => {
    log(`stopped from the page by ${socket.data.name}: its pages move to another server`);
    process.send?.({ stopping: true });
    shutdown().then(() => process.exit(0));
  });

  socket.on('disconnect', presenceChanged);
});

// Another server's chat message: what "crossing servers" looks like from here.
io.on('chat-crossed', (message) => log(`crossed from ${message.server}: ${message.from} in #${message.room}: ${message.text}`));

adapter.init().then(
  () =>
    httpServer.listen(Number(process.env.DEMO_PORT || 0), '127.0.0.1', () => {
      started = true;
      process.send?.({ ready: true, port: httpServer.address().port });
    }),
  () => {}, // reported by the error event above
);

httpServer.on('error', (err) => {
  console.error(`[${name}] cannot listen: ${err.message}`);
  exitWith(1);
});

async function shutdown() {
  await io.close();
  process.disconnect?.();
}

function exitWith(code) {
  process.send?.({ failed: true });
  process.exit(code);
}

process.on('message', (msg) => {
  if (msg.peers) peers = msg.peers;
  if (msg.close) shutdown();
});
process.on('SIGINT', () => {}); // the launcher decides when to stop (see demo/cluster.js)
