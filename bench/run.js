'use strict';
// `npm run bench`: this adapter against @socket.io/redis-adapter and Socket.IO's in-memory adapter
// (one server: the upper bound), side by side in one run, alternating, plus the raw broker limit.
// Servers and clients run in separate processes on this machine. Prints medians and ratios, writes
// the raw results to bench-results/, and stops by itself.
//
// BENCH_SERVERS (3), BENCH_CLIENTS per server (30), BENCH_REPS (3), BENCH_SECONDS per timed
// fan-out (4), BENCH_ROOMS_SECONDS for the many-rooms CPU measurement (10: at 500 emits/s a
// shorter window is dominated by noise — GC cycles, the machine's other tenants), BENCH_KINDS (native,native-rooms,redis,memory), BENCH_SCENARIOS
// (fanout,rooms,maxRate,crowd,roundTrips,memory,raw,restore), BENCH_CROWD (300 clients in all for
// crowd, the maximum rate to everyone) and BENCH_CROWD_BLAST (500 emits), BENCH_RESTORE_SECONDS (10,60: seconds of
// traffic in the recovery log before timing restores), BENCH_PROFILE=<dir> (a V8 CPU profile of
// each server's measurement windows); AMQP_URL, REDIS_URL. native-recovery is this adapter with the Server's
// connectionStateRecovery on: what storing packets in the recovery log costs, and restores.
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const crypto = require('node:crypto');
const { fork, execFileSync } = require('node:child_process');

const SERVERS = Number(process.env.BENCH_SERVERS || 3);
const CLIENTS = Number(process.env.BENCH_CLIENTS || 30);
const REPS = Number(process.env.BENCH_REPS || 3);
const SECONDS = Number(process.env.BENCH_SECONDS || 4);
const ROOMS_SECONDS = Number(process.env.BENCH_ROOMS_SECONDS || 10);
const ROOMS = 1000;
const BLAST = Number(process.env.BENCH_BLAST || 5000);
const CROWD = Number(process.env.BENCH_CROWD || 300); // clients in all, for maxRateCrowd
const CROWD_BLAST = Number(process.env.BENCH_CROWD_BLAST || 500); // emits to all of them
const ROOMS_RATE = Number(process.env.BENCH_ROOMS_RATE || 500); // emits/s per server, to random rooms
// native: this adapter with its defaults; native-rooms: with roomRouting (per-room bindings);
// native-recovery: with connection state recovery on.
const KINDS = (process.env.BENCH_KINDS || 'native,native-rooms,redis,memory,native-recovery').split(',');
const SCENARIOS = new Set((process.env.BENCH_SCENARIOS || 'fanout,rooms,maxRate,crowd,roundTrips,memory,raw,restore').split(','));
const RESTORE_SECONDS = (process.env.BENCH_RESTORE_SECONDS || '10,60').split(',').map(Number);
const RESTORES = 30;
const ROOT = path.join(__dirname, '..');
const DEADLINE_MS = Number(process.env.BENCH_DEADLINE_MS || 20 * 60 * 1000);

const watchdog = setTimeout(() => {
  console.error(`bench: did not finish within ${DEADLINE_MS / 1000} s; stopping`);
  process.exit(1);
}, DEADLINE_MS);
watchdog.unref();

const children = [];
process.on('exit', () => {
  for (const child of children) child.kill('SIGKILL');
});

// ---- child processes driven over IPC ------------------------------------------------------

function spawnWorker(script, args) {
  const child = fork(path.join(__dirname, script), args.map(String), { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  children.push(child);
  const pending = new Map();
  let nextId = 1;
  const started = new Promise((resolve, reject) => {
    pending.set(0, { resolve, reject });
  });
  child.on('message', ({ id, result, error }) => {
    const waiter = pending.get(id);
    pending.delete(id);
    if (waiter) error ? waiter.reject(new Error(error)) : waiter.resolve(result);
  });
  child.on('exit', (code) => {
    for (const waiter of pending.values()) waiter.reject(new Error(`${script} exited with ${code}`));
    pending.clear();
  });
  const call = (cmd, args2 = {}, timeoutMs = 120000) =>
    new Promise((resolve, reject) => {
      const id = nextId++;
      const timer = setTimeout(() => {
        pending.delete(id);
        reject(new Error(`${script} ${cmd} timed out after ${timeoutMs} ms`));
      }, timeoutMs);
      pending.set(id, {
        resolve: (value) => {
          clearTimeout(timer);
          resolve(value);
        },
        reject: (err) => {
          clearTimeout(timer);
          reject(err);
        },
      });
      child.send({ id, cmd, args: args2 });
    });
  return { child, call, started };
}

async function startCluster(kind) {
  const name = `bench-${kind}-${crypto.randomBytes(3).toString('hex')}`;
  const serverCount = kind === 'memory' ? 1 : SERVERS;
  const servers = [];
  for (let i = 0; i < serverCount; i++) {
    const server = spawnWorker('server.js', [kind, name]);
    await server.started;
    server.port = (await server.call('ready')).port;
    servers.push(server);
  }
  // The in-memory adapter serves everyone from its one server: the same clients, one process.
  const clientGroups = [];
  for (let i = 0; i < SERVERS; i++) {
    const server = servers[Math.min(i, servers.length - 1)];
    const group = spawnWorker('clients.js', [server.port, CLIENTS]);
    group.port = server.port;
    await group.started;
    await group.call('connect');
    const first = i * CLIENTS;
    // Each client is in two of the 1000 rooms; the first client of each group is in "sink".
    const roomsByClient = Array.from({ length: CLIENTS }, (_, k) => {
      const g = first + k;
      return [`r${g % ROOMS}`, `r${(g * 7 + 3) % ROOMS}`, ...(k === 0 ? ['sink'] : [])];
    });
    await group.call('join', { roomsByClient });
    clientGroups.push(group);
  }
  if (kind !== 'memory') {
    await until(async () => (await servers[0].call('serverCount')).count === serverCount, `${kind}: every server counted`);
  }
  return { kind, name, servers, clientGroups };
}

async function until(condition, what, ms = 30000) {
  const deadline = Date.now() + ms;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`bench: timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

// ---- scenarios --------------------------------------------------------------------------

async function received(cluster, event) {
  const reports = await Promise.all(cluster.clientGroups.map((g) => g.call('report', { event })));
  return {
    perGroup: reports.map((r) => r.received),
    total: reports.reduce((sum, r) => sum + r.received, 0),
    p50: Math.max(...reports.map((r) => r.p50)),
    p99: Math.max(...reports.map((r) => r.p99)),
    max: Math.max(...reports.map((r) => r.max)),
  };
}

async function resetClients(cluster) {
  await Promise.all(cluster.clientGroups.map((g) => g.call('reset')));
}

async function fanout(cluster, rate) {
  await resetClients(cluster);
  const expectedPerMessage = SERVERS * CLIENTS;
  await Promise.all(cluster.servers.map((s) => s.call('markStart')));
  const { sent } = await cluster.servers[0].call('emitAtRate', { rate, seconds: SECONDS, event: 'fanout' });
  const expected = sent * expectedPerMessage;
  const start = Date.now();
  let result = await received(cluster, 'fanout');
  while (result.total < expected && Date.now() - start < 5000) {
    await new Promise((resolve) => setTimeout(resolve, 100));
    result = await received(cluster, 'fanout');
  }
  // CPU per delivery over the whole cluster: the sender's share and the receivers' together.
  const marks = await Promise.all(cluster.servers.map((s) => s.call('markStop')));
  const perDelivery = (key) => (marks.reduce((sum, mark) => sum + mark[key], 0) / result.total) * 1000;
  return {
    cpuMsPer1000: perDelivery('cpuMs'),
    loopMsPer1000: perDelivery('loopBusyMs'),
    rate,
    sent,
    expected,
    delivered: result.total,
    loss: expected - result.total,
    p50: result.p50,
    p99: result.p99,
    max: result.max,
  };
}

async function manyRooms(cluster, ratePerServer) {
  await resetClients(cluster);
  await Promise.all(cluster.servers.map((s) => s.call('markStart')));
  // Every server of the cluster emits (the in-memory one does all of it alone).
  const emit = (server, rate) => server.call('emitAtRate', { rate, seconds: ROOMS_SECONDS, rooms: ROOMS, event: 'room' });
  const sends =
    cluster.kind === 'memory' ? [emit(cluster.servers[0], ratePerServer * SERVERS)] : cluster.servers.map((s) => emit(s, ratePerServer));
  await Promise.all(sends);
  await new Promise((resolve) => setTimeout(resolve, 500)); // let the last messages land
  const marks = await Promise.all(cluster.servers.map((s) => s.call('markStop')));
  const result = await received(cluster, 'room');
  // Deliveries per server: the clients of group i are on server i (all on one for in-memory).
  const perServer = marks.map((mark, i) => {
    const deliveries = cluster.kind === 'memory' ? result.total : result.perGroup[i];
    return {
      deliveries,
      cpuMsPer1000: (mark.cpuMs / deliveries) * 1000,
      loopMsPer1000: (mark.loopBusyMs / deliveries) * 1000,
      rssMB: mark.rss / 1048576,
      // Per thread kind (bench/threads.js): hand-offs and CPU per 1000 deliveries.
      threads: mark.threads
        ? Object.fromEntries(
            Object.entries(mark.threads).map(([kind, t]) => [
              kind,
              { switchesPer1000: (t.switches / deliveries) * 1000, cpuMsPer1000: (t.cpuMs / deliveries) * 1000 },
            ]),
          )
        : null,
    };
  });
  const median = (key) => medianOf(perServer.map((s) => s[key]));
  const threadMedian = (kind, key) => {
    const values = perServer.map((s) => s.threads?.[kind]?.[key]).filter((v) => v !== undefined);
    return values.length ? medianOf(values) : undefined;
  };
  const threadKinds = ['js', 'runtime', 'lapin', 'other'];
  return {
    deliveries: result.total,
    cpuMsPer1000: median('cpuMsPer1000'),
    loopMsPer1000: median('loopMsPer1000'),
    rssMB: median('rssMB'),
    threads: Object.fromEntries(
      threadKinds.map((kind) => [
        kind,
        { switchesPer1000: threadMedian(kind, 'switchesPer1000'), cpuMsPer1000: threadMedian(kind, 'cpuMsPer1000') },
      ]),
    ),
    switchesPer1000: medianOf(
      perServer.map((s) => (s.threads ? Object.values(s.threads).reduce((sum, t) => sum + t.switchesPer1000, 0) : NaN)),
    ),
    perServer,
  };
}

// Runs the emit paths once, unmeasured, so V8 has compiled them before the first measured run
// (without it the first run of every adapter costs up to twice the CPU of the next ones).
async function warmUp(cluster) {
  const emitters = cluster.kind === 'memory' ? [cluster.servers[0]] : cluster.servers;
  await Promise.all(emitters.map((s) => s.call('emitAtRate', { rate: ROOMS_RATE, seconds: 2, rooms: ROOMS, event: 'room' })));
  await cluster.servers[0].call('emitAtRate', { rate: 500, seconds: 1, event: 'fanout' });
  await cluster.servers[0].call('blast', { count: 2000, room: 'sink' });
  await new Promise((resolve) => setTimeout(resolve, 500));
  await resetClients(cluster);
}

async function maxRate(cluster) {
  await resetClients(cluster);
  const sinks = SERVERS; // one "sink" client per group
  const start = Date.now();
  await cluster.servers[0].call('blast', { count: BLAST, room: 'sink' });
  let result = await received(cluster, 'blast');
  while (result.total < BLAST * sinks && Date.now() - start < 60000) {
    await new Promise((resolve) => setTimeout(resolve, 20));
    result = await received(cluster, 'blast');
  }
  const seconds = (Date.now() - start) / 1000;
  // Cross-server deliveries: those to clients of the other servers (all of them for in-memory).
  const crossServer = cluster.kind === 'memory' ? result.total : result.total - result.perGroup[0];
  return {
    delivered: result.total,
    expected: BLAST * sinks,
    seconds,
    crossServerPerSecond: crossServer / seconds,
    perSecond: result.total / seconds,
  };
}

// The maximum rate with a crowd: CROWD clients in all (BENCH_CROWD, 300; the extra ones connect for
// this scenario only), one server emitting to everyone as fast as it can, until every client has
// every message. The box is CPU-bound: what the adapters cost decides the rate. Also the sending
// server's event-loop time per emit.
async function maxRateCrowd(cluster) {
  const extraPerGroup = Math.max(0, Math.ceil(CROWD / SERVERS) - CLIENTS);
  const extra = [];
  for (const group of cluster.clientGroups) {
    const port = group.port;
    const crowd = spawnWorker('clients.js', [port, extraPerGroup]);
    await crowd.started;
    await crowd.call('connect', {}, 60000);
    extra.push(crowd);
  }
  // The cluster with the crowd's client groups, for received() and resetClients().
  const crowded = { ...cluster, clientGroups: [...cluster.clientGroups, ...extra] };
  const clients = cluster.clientGroups.length * CLIENTS + extra.length * extraPerGroup;
  try {
    await resetClients(crowded);
    const sender = cluster.servers[0];
    await sender.call('markStart');
    const start = Date.now();
    const { sent } = await sender.call('blast', { count: CROWD_BLAST, event: 'crowd' }, 120000);
    const sentMark = await sender.call('markStop');
    const expected = sent * clients;
    let delivered = (await received(crowded, 'crowd')).total;
    while (delivered < expected && Date.now() - start < 60000) {
      await new Promise((resolve) => setTimeout(resolve, 20));
      delivered = (await received(crowded, 'crowd')).total;
    }
    const seconds = (Date.now() - start) / 1000;
    return {
      clients,
      sent,
      expected,
      delivered,
      seconds,
      perSecond: delivered / seconds,
      senderLoopMsPerEmit: sentMark.loopBusyMs / sent,
      // CPU, not wall time: the event loop's busy time also counts the time it was preempted, and
      // on a CPU-bound box that depends on what the broker and the other processes use.
      senderJsCpuMsPerEmit: sentMark.threads ? sentMark.threads.js.cpuMs / sent : undefined,
    };
  } finally {
    await Promise.all(extra.map((g) => g.call('close').catch(() => {})));
  }
}

// Connection state recovery: `seconds` of the many-rooms traffic (every server at ROOMS_RATE) go
// into the log after a client's offset, then RESTORES sessions are restored on another server one
// after another; each restore reads the log from that offset (the worst case: the client's last
// packet is as old as the traffic). Their times, p50 and p99 (of 30: the second highest).
async function restoreTimes(cluster, seconds) {
  const [, holder, restorer] = cluster.servers;
  const { offset } = await holder.call('markOffset');
  await Promise.all(cluster.servers.map((s) => s.call('emitAtRate', { rate: ROOMS_RATE, seconds, rooms: ROOMS, event: 'room' })));
  const { pids } = await holder.call('persistSessions', { count: RESTORES });
  await new Promise((resolve) => setTimeout(resolve, 500)); // the sessions reach the log
  const { times, missed } = await restorer.call('restoreTimes', { pids, offset }, 600000);
  const sorted = [...times].sort((a, b) => a - b);
  return {
    seconds,
    recordsInLog: ROOMS_RATE * cluster.servers.length * seconds,
    recovered: missed.filter((n) => n >= 0).length,
    missedMedian: medianOf(missed),
    p50: medianOf(times),
    p99: sorted[Math.ceil(sorted.length * 0.99) - 1],
  };
}

async function deleteRecoveryStream(cluster) {
  const amqplib = require('amqplib');
  const connection = await amqplib.connect(process.env.AMQP_URL || 'amqp://guest:guest@127.0.0.1:5672');
  const channel = await connection.createChannel();
  await channel.deleteQueue(`${cluster.name}.recovery`);
  await connection.close();
}

async function roundTrips(cluster) {
  if (cluster.kind === 'memory') return null;
  // The event loops' busy time over the serverSideEmit round trips, all servers together: the
  // JavaScript work a round trip costs (the requester's and every responder's), which no adapter
  // can take off the critical path.
  await Promise.all(cluster.servers.map((s) => s.call('markStart')));
  const sse = await cluster.servers[0].call('serverSideEmitRoundTrips', { count: 200 });
  const marks = await Promise.all(cluster.servers.map((s) => s.call('markStop')));
  const fetch = await cluster.servers[0].call('fetchSocketsRoundTrips', { count: 100 });
  return {
    serverSideEmitMs: medianOf(sse.times),
    serverSideEmitLoopMs: marks.reduce((sum, m) => sum + m.loopBusyMs, 0) / sse.times.length,
    fetchSocketsMs: medianOf(fetch.times),
    fetchedSockets: fetch.sockets,
  };
}

async function memory(kind) {
  const child = fork(path.join(__dirname, 'memory.js'), [kind, `bench-mem-${crypto.randomBytes(3).toString('hex')}`], {
    execArgv: ['--expose-gc'],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  children.push(child);
  const result = await new Promise((resolve, reject) => {
    child.once('message', resolve);
    child.once('exit', (code) => reject(new Error(`memory.js exited with ${code} before reporting`)));
  });
  return result.rssBytes / 1048576;
}

function rawBroker() {
  execFileSync(
    process.execPath,
    [path.join(ROOT, 'scripts', 'cargo.js'), 'build', '--release', '--no-default-features', '--example', 'raw_broker'],
    { stdio: 'inherit', timeout: 600000 },
  );
  const binary = path.join(process.env.CARGO_TARGET_DIR || path.join(ROOT, 'target'), 'release', 'examples', 'raw_broker');
  const out = execFileSync(binary, [process.env.AMQP_URL || 'amqp://guest:guest@127.0.0.1:5672', '100000', '100'], {
    encoding: 'utf8',
    timeout: 120000,
  });
  return JSON.parse(out.trim());
}

// ---- report -----------------------------------------------------------------------------

function medianOf(values) {
  const sorted = values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b);
  if (sorted.length === 0) return NaN;
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

const fmt = (v, digits = 1) => (Number.isFinite(v) ? v.toFixed(digits) : 'n/a');

function table(results) {
  const m = (kind, pick) =>
    medianOf(
      results.runs
        .filter((r) => r.kind === kind)
        .map((r) => {
          try {
            return pick(r);
          } catch {
            return undefined; // a scenario left out with BENCH_SCENARIOS
          }
        })
        .filter((v) => v !== undefined),
    );
  const rows = [
    ['fan-out 100/s: p50 ms', (r) => r.fanout100.p50, 0],
    ['fan-out 100/s: p99 ms', (r) => r.fanout100.p99, 0],
    ['fan-out 100/s: max ms', (r) => r.fanout100.max, 0],
    ['fan-out 100/s: lost', (r) => r.fanout100.loss, 0],
    ['fan-out 100/s: CPU ms / 1000 deliveries', (r) => r.fanout100.cpuMsPer1000, 2],
    ['fan-out 100/s: event-loop ms / 1000 deliveries', (r) => r.fanout100.loopMsPer1000, 2],
    ['fan-out 500/s: p50 ms', (r) => r.fanout500.p50, 0],
    ['fan-out 500/s: p99 ms', (r) => r.fanout500.p99, 0],
    ['fan-out 500/s: max ms', (r) => r.fanout500.max, 0],
    ['fan-out 500/s: lost', (r) => r.fanout500.loss, 0],
    ['fan-out 500/s: CPU ms / 1000 deliveries', (r) => r.fanout500.cpuMsPer1000, 2],
    ['fan-out 500/s: event-loop ms / 1000 deliveries', (r) => r.fanout500.loopMsPer1000, 2],
    ['max rate: deliveries/s', (r) => r.maxRate.perSecond, 0],
    ['max rate: cross-server deliveries/s', (r) => r.maxRate.crossServerPerSecond, 0],
    [`max rate, ${CROWD} clients: deliveries/s`, (r) => r.crowd.perSecond, 0],
    [`max rate, ${CROWD} clients: lost`, (r) => r.crowd.expected - r.crowd.delivered, 0],
    [`max rate, ${CROWD} clients: sender event-loop ms / emit`, (r) => r.crowd.senderLoopMsPerEmit, 3],
    [`max rate, ${CROWD} clients: sender JS-thread CPU ms / emit`, (r) => r.crowd.senderJsCpuMsPerEmit, 3],
    ['1000 rooms: CPU ms / 1000 deliveries', (r) => r.rooms.cpuMsPer1000, 2],
    ['1000 rooms: event-loop ms / 1000 deliveries', (r) => r.rooms.loopMsPer1000, 2],
    ['1000 rooms: server RSS MB', (r) => r.rooms.rssMB, 0],
    ['1000 rooms: context switches / 1000 deliveries', (r) => r.rooms.switchesPer1000, 0],
    ['  of the JS thread', (r) => r.rooms.threads.js.switchesPer1000, 0],
    ['  of the adapter runtime thread', (r) => r.rooms.threads.runtime.switchesPer1000, 0],
    ['  of lapin I/O threads', (r) => r.rooms.threads.lapin.switchesPer1000, 0],
    ['  of other threads (libuv, V8)', (r) => r.rooms.threads.other.switchesPer1000, 0],
    ['1000 rooms: CPU ms / 1000 deliveries, JS thread', (r) => r.rooms.threads.js.cpuMsPer1000, 2],
    ['  runtime + lapin threads', (r) => r.rooms.threads.runtime.cpuMsPer1000 + r.rooms.threads.lapin.cpuMsPer1000, 2],
    ['serverSideEmit with ack: round trip ms', (r) => r.roundTrips?.serverSideEmitMs, 2],
    ['  event-loop ms per round trip, all servers', (r) => r.roundTrips?.serverSideEmitLoopMs, 3],
    ['fetchSockets: round trip ms', (r) => r.roundTrips?.fetchSocketsMs, 2],
  ];
  const lines = [];
  const header = [
    'scenario (median of runs)',
    'native',
    '+rooms',
    'redis',
    'in-memory',
    'native/redis',
    '+rooms/redis',
    'native/in-mem',
    '+rooms/in-mem',
  ];
  lines.push(header);
  const row = (label, [n, nr, r, mem], digits) => [
    label,
    ...[n, nr, r, mem].map((v) => fmt(v, digits)),
    ...[n / r, nr / r, n / mem, nr / mem].map((v) => fmt(v, 2)),
  ];
  for (const [label, pick, digits] of rows) {
    lines.push(
      row(
        label,
        ['native', 'native-rooms', 'redis', 'memory'].map((k) => m(k, pick)),
        digits,
      ),
    );
  }
  const memoryRow = ['native', 'native-rooms', 'redis', 'memory'].map((k) => results.memory[k]);
  lines.push(row('10k sockets x 10 rooms: index RSS MB', memoryRow, 1));
  lines.push(['raw broker (publish+consume, no Socket.IO) msg/s', fmt(results.rawBroker?.perSecond, 0), '', '', '', '', '', '', '']);
  lines.push(['raw broker round trip ms (lapin, no Socket.IO)', fmt(results.rawBroker?.roundTripMs, 2), '', '', '', '', '', '', '']);
  // The counters of one native server over the whole run: messages that concerned none of its
  // sockets were dropped in Rust and never reached the event loop; with roomRouting most of them
  // never reach the server at all.
  for (const kind of ['native', 'native-rooms']) {
    const last = results.runs.filter((r) => r.kind === kind && r.nativeStats).pop()?.nativeStats;
    if (!last) continue;
    const share = last.noLocalRecipient / (last.noLocalRecipient + last.delivered);
    lines.push([
      `${kind}: received / dropped in Rust with no JS call (one server)`,
      `${last.received}`,
      `${last.noLocalRecipient}`,
      '',
      '',
      `${fmt(share * 100, 0)}%`,
      '',
      '',
      '',
    ]);
  }
  // Connection state recovery (native-recovery: the same adapter with it on), against native.
  if (KINDS.includes('native-recovery')) {
    const pair = (label, pick, digits) => {
      const [on, off] = ['native-recovery', 'native'].map((k) => m(k, pick));
      lines.push([label, fmt(on, digits), '', '', '', `${fmt(on / off, 2)} x native`, '', '', '']);
    };
    pair('recovery on: 1000 rooms, CPU ms / 1000 deliveries', (r) => r.rooms.cpuMsPer1000, 2);
    pair('recovery on: 1000 rooms, event-loop ms / 1000', (r) => r.rooms.loopMsPer1000, 2);
    pair('recovery on: fan-out 500/s p99 ms', (r) => r.fanout500.p99, 0);
    pair('recovery on: max rate deliveries/s', (r) => r.maxRate.perSecond, 0);
    for (const restore of results.restores ?? []) {
      lines.push([
        `restore with ${restore.seconds} s in the log (${restore.recordsInLog} packets): p50 / p99 ms`,
        `${fmt(restore.p50, 0)} / ${fmt(restore.p99, 0)}`,
        `${restore.recovered}/${RESTORES} ok`,
        '',
        '',
        `${fmt(restore.missedMedian, 0)} replayed`,
        '',
        '',
        '',
      ]);
    }
  }
  const widths = header.map((_, c) => Math.max(...lines.map((l) => String(l[c]).length)));
  return lines
    .map((l) => l.map((cell, c) => (c === 0 ? String(cell).padEnd(widths[c]) : String(cell).padStart(widths[c]))).join('  '))
    .join('\n');
}

// ---- main -------------------------------------------------------------------------------

async function main() {
  const started = Date.now();
  console.log(
    `bench: ${SERVERS} servers x ${CLIENTS} clients, ${REPS} runs, ${SECONDS} s per fan-out, ${ROOMS_SECONDS} s of many rooms, on ${os.cpus().length} cores`,
  );
  const results = {
    machine: { cores: os.cpus().length, model: os.cpus()[0]?.model, memGB: os.totalmem() / 2 ** 30, node: process.version },
    config: { SERVERS, CLIENTS, REPS, SECONDS, ROOMS_SECONDS, ROOMS, BLAST },
    runs: [],
    memory: {},
  };
  if (SCENARIOS.has('raw')) {
    console.log('bench: raw broker limit');
    results.rawBroker = rawBroker();
  }
  console.log(`bench: starting the clusters (${KINDS.join(', ')})`);
  const clusters = {};
  for (const kind of KINDS) clusters[kind] = await startCluster(kind);
  console.log('bench: warming up');
  for (const kind of KINDS) await warmUp(clusters[kind]);
  for (let rep = 0; rep < REPS; rep++) {
    // Alternate the adapters within each repetition, rotating who goes first.
    const order = KINDS.map((_, i) => KINDS[(i + rep) % KINDS.length]);
    for (const kind of order) {
      const cluster = clusters[kind];
      console.log(`bench: run ${rep + 1}/${REPS}, ${kind}`);
      const run = { kind, rep };
      if (SCENARIOS.has('fanout')) {
        run.fanout100 = await fanout(cluster, 100);
        run.fanout500 = await fanout(cluster, 500);
      }
      if (SCENARIOS.has('rooms')) run.rooms = await manyRooms(cluster, ROOMS_RATE);
      if (SCENARIOS.has('maxRate')) run.maxRate = await maxRate(cluster);
      if (SCENARIOS.has('crowd')) run.crowd = await maxRateCrowd(cluster);
      if (SCENARIOS.has('roundTrips')) run.roundTrips = await roundTrips(cluster);
      run.nativeStats = kind.startsWith('native') ? (await cluster.servers[1].call('stats')).stats : undefined;
      results.runs.push(run);
    }
  }
  if (SCENARIOS.has('restore') && clusters['native-recovery']) {
    results.restores = [];
    for (const seconds of RESTORE_SECONDS) {
      console.log(`bench: restores with ${seconds} s of traffic in the recovery log`);
      results.restores.push(await restoreTimes(clusters['native-recovery'], seconds));
    }
  }
  if (SCENARIOS.has('memory')) for (const kind of KINDS.filter((k) => k !== 'native-recovery')) results.memory[kind] = await memory(kind);
  for (const cluster of Object.values(clusters)) {
    await Promise.all([...cluster.servers, ...cluster.clientGroups].map((w) => w.call('close').catch(() => {})));
  }
  // The recovery log is a durable stream: the benchmark removes its own.
  if (clusters['native-recovery']) await deleteRecoveryStream(clusters['native-recovery']);
  results.seconds = (Date.now() - started) / 1000;
  const report = table(results);
  console.log(`\n${report}\n`);
  const dir = path.join(ROOT, 'bench-results');
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `bench-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  fs.writeFileSync(file, JSON.stringify({ ...results, table: report }, null, 2));
  console.log(`bench: raw results in ${path.relative(ROOT, file)} (${results.seconds.toFixed(0)} s)`);
  process.exit(0);
}

main().catch((err) => {
  console.error(`bench failed: ${err.stack || err.message}`);
  process.exit(1);
});
