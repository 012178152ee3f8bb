'use strict';
// One benchmark server (child process): Socket.IO with the adapter under test, driven over IPC.
// argv: kind ("native" | "native-rooms" (roomRouting on) | "native-recovery" (the Server's
// connectionStateRecovery on) | "redis" | "memory"), cluster name (exchange or Redis channel prefix).
const crypto = require('node:crypto');
const http = require('node:http');
const { performance } = require('node:perf_hooks');
const inspector = require('node:inspector');
const fs = require('node:fs');
const path = require('node:path');
const { Server } = require('socket.io');
const { serveCommands } = require('./ipc');
const threads = require('./threads');

const [kind, clusterName] = process.argv.slice(2);
const AMQP_URL = process.env.AMQP_URL || 'amqp://guest:guest@127.0.0.1:5672';
const REDIS_URL = process.env.REDIS_URL || 'redis://127.0.0.1:6379';

async function adapterFor() {
  if (kind.startsWith('native')) {
    const { createAdapter } = require('..');
    return createAdapter(AMQP_URL, { exchangeName: clusterName, roomRouting: kind === 'native-rooms' });
  }
  if (kind === 'redis') {
    const { createAdapter } = require('@socket.io/redis-adapter');
    const { createClient } = require('redis');
    const pub = createClient({ url: REDIS_URL });
    const sub = pub.duplicate();
    await Promise.all([pub.connect(), sub.connect()]);
    return createAdapter(pub, sub, { key: clusterName });
  }
  return null; // Socket.IO's in-memory adapter
}

async function main() {
  const httpServer = http.createServer();
  const recovery = kind === 'native-recovery' ? { connectionStateRecovery: { maxDisconnectionDuration: 120000 } } : {};
  const io = new Server(httpServer, { pingTimeout: 60000, ...recovery });
  const adapter = await adapterFor();
  if (adapter) io.adapter(adapter);
  await io.of('/').adapter.init?.();
  io.on('connection', (socket) => {
    socket.on('join', async (rooms, done) => {
      await socket.join(rooms); // with roomRouting: until the broker routes the rooms here
      done();
    });
  });
  io.on('ping', (reply) => reply('pong'));
  await new Promise((resolve) => httpServer.listen(0, '127.0.0.1', resolve));

  let mark = null;
  const profiler = process.env.BENCH_PROFILE ? windowProfiler(process.env.BENCH_PROFILE) : null;
  const commands = {
    async ready() {
      return { port: httpServer.address().port };
    },
    async serverCount() {
      return { count: await io.of('/').adapter.serverCount() };
    },
    // Starts a measurement window: process CPU, event-loop busy time.
    async markStart() {
      await profiler?.start();
      mark = { cpu: process.cpuUsage(), elu: performance.eventLoopUtilization(), at: performance.now(), threads: threads.sample() };
      return {};
    },
    async markStop() {
      const cpu = process.cpuUsage(mark.cpu);
      const elu = performance.eventLoopUtilization(mark.elu);
      await profiler?.stop();
      return {
        cpuMs: (cpu.user + cpu.system) / 1000,
        loopBusyMs: elu.active,
        wallMs: performance.now() - mark.at,
        rss: process.memoryUsage().rss,
        threads: threads.difference(mark.threads, threads.sample()),
      };
    },
    // Emits `rate` messages a second for `seconds` (to a random one of `rooms` rooms, or everyone).
    async emitAtRate({ rate, seconds, rooms, event }) {
      const tickMs = 10;
      const total = Math.round(rate * seconds);
      let sent = 0;
      const start = performance.now();
      await new Promise((resolve) => {
        const timer = setInterval(() => {
          const due = Math.min(total, Math.round(((performance.now() - start) / 1000) * rate));
          for (; sent < due; sent++) {
            const target = rooms ? io.to(`r${Math.floor(Math.random() * rooms)}`) : io;
            target.emit(event, Date.now());
          }
          if (sent >= total) {
            clearInterval(timer);
            resolve();
          }
        }, tickMs);
      });
      return { sent };
    },
    // Emits `count` messages `event` to `room` (no room: everyone) as fast as the event loop allows
    // (in slices, so IPC stays alive).
    async blast({ count, room, event = 'blast' }) {
      const target = room ? io.to(room) : io;
      let sent = 0;
      await new Promise((resolve) => {
        const slice = () => {
          for (let i = 0; i < 500 && sent < count; i++, sent++) target.emit(event, Date.now());
          if (sent < count) setImmediate(slice);
          else resolve();
        };
        slice();
      });
      return { sent };
    },
    async serverSideEmitRoundTrips({ count }) {
      const times = [];
      for (let i = 0; i < count; i++) {
        const start = performance.now();
        await io.serverSideEmitWithAck('ping');
        times.push(performance.now() - start);
      }
      return { times };
    },
    async fetchSocketsRoundTrips({ count }) {
      const times = [];
      let sockets = 0;
      for (let i = 0; i < count; i++) {
        const start = performance.now();
        sockets = (await io.fetchSockets()).length;
        times.push(performance.now() - start);
      }
      return { times, sockets };
    },
    // Connection state recovery: a stored packet's offset (the emit of a packet no client gets).
    async markOffset() {
      const adapter = io.of('/').adapter;
      const broadcast = adapter.broadcast;
      let offset = null;
      adapter.broadcast = function (packet, opts) {
        broadcast.call(this, packet, opts);
        offset = packet.data[packet.data.length - 1];
      };
      io.to('nobody').emit('mark');
      adapter.broadcast = broadcast;
      return { offset };
    },
    // Sessions as Socket.IO persists them when sockets disconnect, each in room r1.
    async persistSessions({ count }) {
      const pids = [];
      for (let i = 0; i < count; i++) {
        const sid = crypto.randomBytes(15).toString('base64url');
        const pid = crypto.randomBytes(15).toString('base64url');
        io.of('/').adapter.persistSession({ sid, pid, rooms: [sid, 'r1'], data: { i } });
        pids.push(pid);
      }
      return { pids };
    },
    // Restores the sessions one after another (no shared scans), timing each.
    async restoreTimes({ pids, offset }) {
      const times = [];
      const missed = [];
      for (const pid of pids) {
        const start = performance.now();
        const session = await io.of('/').adapter.restoreSession(pid, offset);
        times.push(performance.now() - start);
        missed.push(session ? session.missedPackets.length : -1);
      }
      return { times, missed };
    },
    async stats() {
      return { stats: io.of('/').adapter.stats?.() ?? null };
    },
    async close() {
      await io.close();
      setTimeout(() => process.exit(0), 100).unref();
      return {};
    },
  };
  serveCommands(commands);
}

// BENCH_PROFILE=<dir>: a V8 CPU profile of each measurement window (markStart to markStop), so
// start-up and client connections do not blur what a delivery costs.
function windowProfiler(dir) {
  const session = new inspector.Session();
  session.connect();
  const post = (method) => new Promise((resolve, reject) => session.post(method, (err, result) => (err ? reject(err) : resolve(result))));
  let windows = 0;
  return {
    async start() {
      await post('Profiler.enable');
      await post('Profiler.start');
    },
    async stop() {
      const { profile } = await post('Profiler.stop');
      windows += 1;
      fs.writeFileSync(path.join(dir, `${kind}-${process.pid}-${windows}.cpuprofile`), JSON.stringify(profile));
    },
  };
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
