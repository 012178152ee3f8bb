'use strict';
// Shared test plumbing: real Socket.IO servers on the real broker, real clients, bounded waits.
const http = require('node:http');
const crypto = require('node:crypto');
const { Server } = require('socket.io');
const { io: connectClient } = require('socket.io-client');

const AMQP_URL = process.env.AMQP_URL || 'amqp://guest:guest@127.0.0.1:5672';
const WAIT_MS = 5000;

/** A name no other test run on this shared broker uses. */
function uniqueName(label = 'test') {
  return `sio-native-${label}-${process.pid}-${crypto.randomBytes(4).toString('hex')}`;
}

/** Resolves with the event's arguments, or rejects after `ms` with a message naming `what`. */
function waitFor(emitter, event, what, ms = WAIT_MS) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      emitter.off(event, onEvent);
      reject(new Error(`timed out after ${ms} ms waiting for ${what}`));
    }, ms);
    function onEvent(...args) {
      clearTimeout(timer);
      resolve(args);
    }
    emitter.once(event, onEvent);
  });
}

/** Rejects with `what` if the promise does not settle within `ms`. */
function within(promise, what, ms = WAIT_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Collects every `event` a client receives, so a test can assert exact counts later. */
function record(client, event) {
  const seen = [];
  client.on(event, (...args) => seen.push(args));
  return seen;
}

/**
 * Starts `count` Socket.IO servers on one exchange, each on its own port, and waits until each
 * one's default namespace is bound. `setup(io, i)` runs before the adapter is set; `url` is the
 * broker's (the shared one unless a test puts a proxy or a private node in between).
 */
async function startCluster(
  count,
  { url = AMQP_URL, exchangeName = uniqueName('ex'), serverOptions = {}, adapterOptions = {}, clientOptions = {}, setup } = {},
) {
  const servers = [];
  for (let i = 0; i < count; i++) {
    const httpServer = http.createServer();
    const io = new Server(httpServer, serverOptions);
    if (setup) setup(io, i);
    io.adapter(require('..').createAdapter(url, { exchangeName, ...adapterOptions }));
    await within(io.of('/').adapter.init(), `server ${i} to bind its namespace`);
    await new Promise((resolve) => httpServer.listen(0, '127.0.0.1', resolve));
    servers.push({ io, httpServer, port: httpServer.address().port });
  }
  const clients = [];
  return {
    exchangeName,
    servers,
    ios: servers.map((s) => s.io),
    /** Connects a real client to server `i` (namespace `nsp`) and waits for the connection. */
    async client(i, nsp = '/', options = {}) {
      const client = connectClient(`http://127.0.0.1:${servers[i].port}${nsp}`, {
        transports: ['websocket'],
        reconnection: false,
        forceNew: true,
        ...clientOptions,
        ...options,
      });
      clients.push(client);
      await waitFor(client, 'connect', `a client to connect to server ${i}${nsp}`);
      return client;
    },
    async close() {
      for (const client of clients) client.disconnect();
      await Promise.all(servers.map(({ io }) => within(io.close(), 'a server to close')));
    },
  };
}

/**
 * Resolves once every later message from the same origin has been delivered: the server emits a
 * marker to the client (after whatever the test emitted before), so absence can be asserted
 * without sleeping. Messages from one server reach a queue in order (one AMQP channel).
 */
async function barrier(fromIo, client, nsp = '/') {
  const marker = `barrier-${crypto.randomBytes(4).toString('hex')}`;
  const arrived = waitFor(client, marker, `the ${marker} marker to reach client ${client.id}`);
  fromIo.of(nsp).to(client.id).emit(marker);
  await arrived;
}

module.exports = { AMQP_URL, WAIT_MS, uniqueName, waitFor, within, record, startCluster, barrier };
// Loaded on first use, so a test that never starts a server here (the install test, which runs
// the packed package elsewhere) does not need this checkout's build.
Object.defineProperty(module.exports, 'createAdapter', { enumerable: true, get: () => require('..').createAdapter });

/**
 * Timings for tests that wait on heartbeats, expiry or reconnects: a peer is forgotten after 1 s of
 * silence, a lost connection is retried after 50 ms, then at most every 500 ms.
 */
const FAST = { heartbeatInterval: 200, heartbeatTimeout: 1000, reconnectDelay: 50, reconnectDelayMax: 500 };

/** Runs `rabbitmqctl <args> -q` on the shared broker; the output's non-empty lines. */
function rabbitmqctl(...args) {
  const { execFileSync } = require('node:child_process');
  return execFileSync('rabbitmqctl', [...args, '-q'], { encoding: 'utf8', timeout: 20000 })
    .split('\n')
    .filter((line) => line.trim() !== '');
}

/** How many broker connections carry `fragment` in their connection name. */
function brokerConnectionsMatching(fragment) {
  return rabbitmqctl('list_connections', 'client_properties').filter((line) => line.includes(fragment)).length;
}

/** Whether a queue of that name exists on the broker. */
function brokerHasQueue(name) {
  return rabbitmqctl('list_queues', 'name').some((line) => line.trim() === name);
}

/** The queues whose name contains `fragment`: [name, messages ready, messages unacknowledged] each. */
function brokerQueueDepths(fragment) {
  return rabbitmqctl('list_queues', 'name', 'messages_ready', 'messages_unacknowledged')
    .filter((line) => line.includes(fragment))
    .map((line) => line.split('\t').map((value, i) => (i === 0 ? value : Number(value))));
}

module.exports.FAST = FAST;
module.exports.rabbitmqctl = rabbitmqctl;
module.exports.brokerConnectionsMatching = brokerConnectionsMatching;
module.exports.brokerHasQueue = brokerHasQueue;
module.exports.brokerQueueDepths = brokerQueueDepths;

/** Polls `condition` every 20 ms until it holds; rejects with `what` after `ms`. */
async function eventually(condition, what, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await condition();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** Starts __test__/fixtures/server-process.js on `exchangeName`; resolves with {child, port, uid}. */
async function forkServer(exchangeName, adapterOptions = {}) {
  const path = require('node:path');
  const { fork } = require('node:child_process');
  const child = fork(path.join(__dirname, 'fixtures', 'server-process.js'), [AMQP_URL, exchangeName, JSON.stringify(adapterOptions)], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const [ready] = await waitFor(child, 'message', 'a forked server to start', 15000);
  if (!ready.ready) {
    child.kill('SIGKILL');
    throw new Error(`the forked server failed: ${JSON.stringify(ready)}`);
  }
  return { child, port: ready.port, uid: ready.uid };
}

module.exports.eventually = eventually;
module.exports.forkServer = forkServer;

/** The broker's pids of the connections whose name contains `fragment` (e.g. an adapter uid). */
function brokerConnectionPids(fragment) {
  return rabbitmqctl('list_connections', 'pid', 'client_properties')
    .filter((line) => line.includes(fragment))
    .map((line) => line.split('\t')[0]);
}

/** Closes (as the broker) only the connections named with `fragment`: a fault for our own servers. */
function closeBrokerConnections(fragment) {
  const pids = brokerConnectionPids(fragment);
  for (const pid of pids) rabbitmqctl('close_connection', pid, 'fault injected by a test');
  return pids.length;
}

/** Channels of the connection named with `fragment`, and queues named with it with their consumers. */
function brokerFootprint(fragment) {
  const pids = new Set(brokerConnectionPids(fragment));
  const channels = rabbitmqctl('list_channels', 'connection').filter((line) => pids.has(line.trim())).length;
  const queues = rabbitmqctl('list_queues', 'name', 'consumers')
    .filter((line) => line.includes(fragment))
    .map((line) => Number(line.split('\t')[1]));
  return { connections: pids.size, channels, queues: queues.length, consumers: queues.reduce((a, b) => a + b, 0) };
}

module.exports.closeBrokerConnections = closeBrokerConnections;
module.exports.brokerFootprint = brokerFootprint;
