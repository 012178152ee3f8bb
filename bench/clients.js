'use strict';
// Benchmark clients (child process): `count` real socket.io-client connections to one server; counts
// deliveries per event and their latency (same machine clock) in a 1 ms histogram.
// argv: port, count.
const { io: connect } = require('socket.io-client');
const { serveCommands } = require('./ipc');

const [port, count] = process.argv.slice(2).map(Number);
const clients = [];
const MAX_MS = 30000;
let counters = {};

function counter(event) {
  if (!counters[event]) counters[event] = { received: 0, histogram: new Uint32Array(MAX_MS + 1), max: 0 };
  return counters[event];
}

function record(event, sentAt) {
  const c = counter(event);
  const latency = Math.max(0, Date.now() - sentAt);
  c.received++;
  c.histogram[Math.min(latency, MAX_MS)]++;
  if (latency > c.max) c.max = latency;
}

function percentile(c, p) {
  const target = Math.ceil(c.received * p);
  let seen = 0;
  for (let ms = 0; ms <= MAX_MS; ms++) {
    seen += c.histogram[ms];
    if (seen >= target) return ms;
  }
  return MAX_MS;
}

const commands = {
  async connect() {
    for (let i = 0; i < count; i++) {
      const client = connect(`http://127.0.0.1:${port}`, { transports: ['websocket'], reconnection: false, forceNew: true });
      for (const event of ['fanout', 'room', 'blast', 'crowd']) client.on(event, (sentAt) => record(event, sentAt));
      clients.push(client);
      await new Promise((resolve, reject) => {
        client.once('connect', resolve);
        client.once('connect_error', reject);
      });
    }
    return { connected: clients.length };
  },
  // Client i joins roomsByClient[i] (the orchestrator assigns rooms by global index).
  async join({ roomsByClient }) {
    await Promise.all(clients.map((client, i) => client.timeout(10000).emitWithAck('join', roomsByClient[i])));
    return {};
  },
  async reset() {
    counters = {};
    return {};
  },
  async report({ event }) {
    const c = counter(event);
    return { received: c.received, p50: percentile(c, 0.5), p99: percentile(c, 0.99), max: c.max };
  },
  async close() {
    for (const client of clients) client.disconnect();
    setTimeout(() => process.exit(0), 100).unref();
    return {};
  },
};

serveCommands(commands);
