'use strict';
// `npm run demo`: three Socket.IO servers in three processes share one RabbitMQ exchange, each
// serving the chat page. Two bots (on different servers) greet each other at start, so the log
// shows messages crossing servers even without a browser. Ctrl-C stops everything cleanly.
//
// AMQP_URL    broker (default amqp://guest:guest@127.0.0.1:5672)
// DEMO_PORTS  the three ports, comma-separated (default 3001,3002,3003; 0 picks free ones)
const path = require('node:path');
const crypto = require('node:crypto');
const { fork } = require('node:child_process');
const { io: connect } = require('socket.io-client');

const NAMES = ['server-a', 'server-b', 'server-c'];
const ports = (process.env.DEMO_PORTS || '3001,3002,3003').split(',').map(Number);
const exchange = process.env.DEMO_EXCHANGE || `socket.io-demo-${crypto.randomBytes(3).toString('hex')}`;
const STARTUP_MS = 20000;
const STOP_MS = 5000;

const servers = [];
const bots = [];
let stopping = false;

function once(emitter, event) {
  return new Promise((resolve) => emitter.once(event, resolve));
}

async function start() {
  console.log(`RabbitMQ ${process.env.AMQP_URL || 'amqp://guest:guest@127.0.0.1:5672'}, exchange ${exchange}`);
  const startup = setTimeout(() => fail(`the servers did not start within ${STARTUP_MS} ms`), STARTUP_MS);
  const urls = await Promise.all(
    NAMES.map(async (name, i) => {
      const env = { ...process.env, DEMO_SERVER_NAME: name, DEMO_EXCHANGE: exchange, DEMO_PORT: String(ports[i] ?? 0) };
      const child = fork(path.join(__dirname, 'server.js'), [], { env });
      servers.push(child);
      child.on('message', (msg) => {
        if (msg.stopping) child.stoppedOnPurpose = true;
      });
      child.on('exit', () => {
        if (stopping) return;
        if (child.stoppedOnPurpose) console.log(`${name} stopped from a page: its pages reconnect to another server`);
        else fail(`${name} stopped`);
      });
      const msg = await once(child, 'message');
      if (!msg.ready) fail(`${name} could not start`);
      return `http://127.0.0.1:${msg.port}`;
    }),
  );
  clearTimeout(startup);
  for (const child of servers) child.send({ peers: urls });
  urls.forEach((url, i) => {
    console.log(`${NAMES[i]}  ${url}`);
  });
  console.log('Open the URLs in a browser (one tab per server), pick a name and a room, and chat. Ctrl-C stops.');
  console.log('"Stop this server" on a page closes its server: its pages move to another one and show what they missed.');
  await greet(urls);
}

// alice (server-a) and bob (server-b) meet in #lobby: each line below crossed servers.
async function greet(urls) {
  const [alice, bob] = await Promise.all(
    [
      ['alice', urls[0]],
      ['bob', urls[1]],
    ].map(async ([name, url]) => {
      const bot = connect(url, { transports: ['websocket'], auth: { name: `${name} (bot)` } });
      bots.push(bot);
      await once(bot, 'connect');
      await bot.emitWithAck('join', 'lobby');
      return bot;
    }),
  );
  const heard = once(bob, 'chat');
  await alice.emitWithAck('chat', 'hello from server-a!');
  const message = await heard;
  console.log(`bob (bot) on server-b got "${message.text}" from ${message.from} on ${message.server}: it crossed through RabbitMQ`);
}

async function stop(code = 0) {
  if (stopping) return;
  stopping = true;
  for (const bot of bots) bot.disconnect();
  const exits = servers
    .filter((c) => c.exitCode === null)
    .map((child) => {
      const exited = once(child, 'exit');
      if (child.connected) child.send({ close: true });
      return exited;
    });
  const forced = setTimeout(() => {
    for (const c of servers) c.kill('SIGKILL');
  }, STOP_MS);
  await Promise.all(exits);
  clearTimeout(forced);
  await deleteRecoveryLog();
  console.log('demo stopped');
  process.exit(code);
}

// The servers' recovery log is a durable stream named after this run's exchange: remove it, or
// every run of the demo would leave one on the broker.
async function deleteRecoveryLog() {
  try {
    const amqplib = require('amqplib');
    const connection = await amqplib.connect(process.env.AMQP_URL || 'amqp://guest:guest@127.0.0.1:5672');
    const channel = await connection.createChannel();
    await channel.deleteQueue(`${exchange}.recovery`);
    await connection.close();
  } catch (err) {
    console.error(`demo: could not delete the recovery log ${exchange}.recovery: ${err.message}`);
  }
}

function fail(message) {
  console.error(`demo failed: ${message}`);
  stop(1);
}

process.on('SIGINT', () => stop(0));
process.on('SIGTERM', () => stop(0));
start().catch((err) => fail(err.stack || err.message));
