'use strict';
// `npm run demo`: three Socket.IO servers in three processes share one RabbitMQ exchange. A client
// on each server joins a room; broadcasts made on one server reach the clients of the others.
// Set AMQP_URL to use another broker (default amqp://guest:guest@127.0.0.1:5672).
const path = require('path');
const { fork } = require('child_process');
const crypto = require('crypto');
const { io: connect } = require('socket.io-client');

const NAMES = ['server-a', 'server-b', 'server-c'];
const ROOMS = ['lobby', 'lobby', 'kitchen'];
const exchange = `socket.io-demo-${crypto.randomBytes(3).toString('hex')}`;
const TIMEOUT_MS = 15000;

const servers = [];

function fail(message) {
  console.error(`demo failed: ${message}`);
  for (const child of servers) child.kill();
  process.exit(1);
}
const watchdog = setTimeout(() => fail(`did not finish within ${TIMEOUT_MS} ms`), TIMEOUT_MS);

function once(emitter, event) {
  return new Promise((resolve) => emitter.once(event, resolve));
}

async function main() {
  console.log(`RabbitMQ: ${process.env.AMQP_URL || 'amqp://guest:guest@127.0.0.1:5672'} (exchange ${exchange})`);
  for (const name of NAMES) {
    const env = { ...process.env, DEMO_SERVER_NAME: name, DEMO_EXCHANGE: exchange };
    servers.push(fork(path.join(__dirname, 'server.js'), [], { env }));
  }
  const ports = await Promise.all(
    servers.map(async (child, i) => {
      const msg = await once(child, 'message');
      if (!msg.ready) fail(`${NAMES[i]}: ${msg.failed}`);
      console.log(`${NAMES[i]} listening on http://127.0.0.1:${msg.port} (pid ${child.pid})`);
      return msg.port;
    }),
  );

  const clients = await Promise.all(
    ports.map(async (port, i) => {
      const client = connect(`http://127.0.0.1:${port}`, { transports: ['websocket'], reconnection: false });
      await once(client, 'connect');
      await client.emitWithAck('join', ROOMS[i]);
      return client;
    }),
  );
  console.log(`clients: one on each server; rooms ${NAMES.map((n, i) => `${n}:${ROOMS[i]}`).join(', ')}`);

  const expected = [];
  const received = [];
  const heard = new Promise((resolve) => {
    clients.forEach((client, i) =>
      client.on('news', (msg) => {
        received.push(`${NAMES[i]}'s client got "${msg.text}" from ${msg.from}`);
        if (received.length === expected.length) resolve();
      }),
    );
  });
  // Everyone hears io.emit on server-a; only lobby members (on a and b) hear server-c's room emit.
  expected.push(...NAMES, ...NAMES.filter((_, i) => ROOMS[i] === 'lobby'));
  servers[0].send({ emit: 'news', text: 'hello everyone' });
  servers[2].send({ emit: 'news', room: 'lobby', text: 'hello lobby' });
  await heard;
  for (const line of received.sort()) console.log(`  ${line}`);

  for (const client of clients) client.disconnect();
  await Promise.all(
    servers.map((child) => {
      const exited = once(child, 'exit');
      child.send({ close: true });
      return exited;
    }),
  );
  clearTimeout(watchdog);
  console.log('demo done: broadcasts crossed servers through RabbitMQ');
}

main().catch((err) => fail(err.stack || err.message));
