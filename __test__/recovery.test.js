'use strict';
// Connection state recovery across servers (Socket.IO's connectionStateRecovery) on the recovery
// log. Clients reach the servers through a TCP proxy, as through a load balancer: when a client
// loses its connection the proxy sends its reconnect to another server, which must recover it.
const { describe, it, after } = require('node:test');
const assert = require('node:assert/strict');
const amqplib = require('amqplib');
const notepack = require('notepack.io');
const { io: connectClient } = require('socket.io-client');
const { Emitter } = require('..');
const { TcpProxy } = require('./tcp-proxy');
const { AMQP_URL, startCluster, waitFor, within, eventually, record, uniqueName, brokerHasQueue } = require('./helpers');

const RECOVERY = { connectionStateRecovery: { maxDisconnectionDuration: 30000 } };
const streams = new Set();

after(async () => {
  // Streams are durable: the test deletes its own.
  const connection = await amqplib.connect(AMQP_URL);
  const channel = await connection.createChannel();
  for (const stream of streams) await channel.deleteQueue(stream);
  await connection.close();
});

// A cluster of `count` servers with recovery on; each connection puts the socket in room `r` and
// gives it `socket.data` — unless it was recovered, which must bring both back by itself.
async function recoveringCluster(count, { serverOptions = RECOVERY, adapterOptions = {} } = {}) {
  const exchangeName = uniqueName('rec');
  streams.add(`${exchangeName}.recovery`);
  const cluster = await startCluster(count, {
    exchangeName,
    serverOptions,
    adapterOptions,
    setup(io, i) {
      io.on('connection', (socket) => {
        if (!socket.recovered) {
          socket.join(socket.handshake.auth.room ?? 'r');
          socket.data = { user: socket.handshake.auth.user ?? 'someone', firstServer: i };
        }
      });
    },
  });
  const proxy = await TcpProxy.start(cluster.servers[0].port);
  cluster.proxy = proxy;
  const clients = [];
  /** A client connected through the proxy (to whichever server it points at), reconnecting fast. */
  cluster.proxied = async (auth = {}, nsp = '/') => {
    const client = connectClient(`http://127.0.0.1:${proxy.port}${nsp}`, {
      transports: ['websocket'],
      forceNew: true,
      reconnectionDelay: 50,
      reconnectionDelayMax: 50,
      randomizationFactor: 0,
      auth,
    });
    clients.push(client);
    await waitFor(client, 'connect', 'a client to connect through the proxy');
    return client;
  };
  const close = cluster.close;
  cluster.close = async () => {
    for (const client of clients) client.disconnect();
    await proxy.close();
    await close();
  };
  return cluster;
}

/** The server-side socket of `client` on server `io`. */
function serverSocket(io, client, nsp = '/') {
  return io.of(nsp).sockets.get(client.id);
}

/** Names of the events in a `record` list, and checks each ends with an offset. */
function eventNames(seen) {
  return seen.map((args) => {
    assert.match(String(args[args.length - 1]), /^\d+-\w+-\d+$/, 'a stored packet ends with its offset');
    return args[0];
  });
}

// Sends the client's reconnect to server `to`: the proxy points at it, refuses new connections
// until `resume()`, and drops the client's current connection (a network failure: the old server
// persists the session, reason "transport close").
async function moveClient(cluster, client, to, from) {
  cluster.proxy.targetPort = cluster.servers[to].port;
  cluster.proxy.refuse();
  const persisted = cluster.ios[from].of('/').adapter.stats().sessionsPersisted;
  const gone = waitFor(client, 'disconnect', 'the client to lose its connection');
  cluster.proxy.drop();
  await gone;
  await eventually(() => cluster.ios[from].of('/').adapter.stats().sessionsPersisted > persisted, `server ${from} to persist the session`);
  return { resume: () => cluster.proxy.restore() };
}

describe('connection state recovery', { timeout: 120000 }, () => {
  it('recovers a client on another server: same id, rooms and data, exactly the stored packets it missed, in order, then live traffic', async () => {
    const cluster = await recoveringCluster(3);
    try {
      const [a, b, c] = cluster.ios;
      b.of('/chat'); // the other namespace exists on b
      await eventually(async () => (await a.of('/').adapter.serverCount()) === 3, 'three servers counted');
      const x = await cluster.proxied({ user: 'x' });
      const witness = await cluster.client(1); // in room r on server b
      const id = x.id;
      const seen = [];
      x.onAny((event, ...args) => seen.push([event, ...args]));
      const first = waitFor(x, 'm0', 'x to receive m0');
      b.to('r').emit('m0', 0);
      await first;
      assert.equal(typeof x._lastOffset, 'string', 'the client holds an offset');

      const { resume } = await moveClient(cluster, x, 2, 0);
      const witnessed = record(witness, 'm2');
      b.to('r').emit('m1', 1); // stored, to x's room
      b.to(id).emit('direct', 'to x'); // stored, to x alone
      b.volatile.to('r').emit('volatile', 'v'); // not stored
      b.to('other').emit('other-room', 'o'); // another room
      b.to('r').except('r').emit('excepted', 'e'); // excepted
      b.of('/chat').emit('other-nsp', 'n'); // another namespace
      b.to('r').emit('m2', 2);
      await eventually(() => witnessed.length === 1, 'm2 to reach the witness on server b');
      c.emit('m3', 3); // stored, to everyone, from a third server
      await waitFor(witness, 'm3', 'm3 to reach the witness');
      const reconnected = waitFor(x, 'connect', 'x to reconnect to server c', 10000);
      await resume();
      await reconnected;

      assert.equal(x.recovered, true, 'the client says it was recovered');
      assert.equal(x.id, id, 'same id');
      const onC = serverSocket(c, x);
      assert.ok(onC, 'the socket lives on server c now');
      assert.equal(onC.recovered, true);
      assert.deepEqual([...onC.rooms].sort(), [id, 'r'].sort());
      assert.deepEqual(onC.data, { user: 'x', firstServer: 0 });
      const missed = seen.slice(1);
      assert.deepEqual(eventNames(missed), ['m1', 'direct', 'm2', 'm3'], 'exactly the stored packets, in send order');
      assert.deepEqual(
        missed.map((args) => args[1]),
        [1, 'to x', 2, 3],
      );
      const live = waitFor(x, 'm4', 'live traffic after the recovery');
      b.to('r').emit('m4', 4);
      await live;
      assert.equal(seen.filter(([event]) => event === 'm4').length, 1);
      assert.equal(c.of('/').adapter.stats().sessionsRestored, 1);
    } finally {
      await cluster.close();
    }
  });

  for (const [label, adapterOptions] of [
    ['', {}],
    [' (roomRouting: the new server binds the rooms first)', { roomRouting: true }],
  ]) {
    it(`hands over to live traffic without a gap or a duplicate while the room keeps receiving${label}`, async () => {
      const cluster = await recoveringCluster(3, { adapterOptions });
      try {
        const [, b] = cluster.ios;
        await eventually(async () => (await b.of('/').adapter.serverCount()) === 3, 'three servers counted');
        const x = await cluster.proxied();
        const numbers = [];
        x.on('n', (n) => numbers.push(n));
        let next = 1;
        let sending = true;
        // Server b emits a numbered series to room r every millisecond or so, through the whole move.
        const pump = (async () => {
          while (sending) {
            b.to('r').emit('n', next++);
            await new Promise((resolve) => setImmediate(resolve));
            if (next % 20 === 0) await new Promise((resolve) => setTimeout(resolve, 1));
          }
        })();
        await eventually(() => numbers.length >= 50, 'x to receive the series');
        // What server c replays, to say where a gap would be.
        const adapterC = cluster.ios[2].of('/').adapter;
        const restore = adapterC.restoreSession.bind(adapterC);
        let replayed = null;
        adapterC.restoreSession = async (...args) => {
          const session = await restore(...args);
          replayed = session?.missedPackets.map((data) => data[1]) ?? null;
          return session;
        };
        const { resume } = await moveClient(cluster, x, 2, 0);
        const beforeMove = numbers.length;
        const reconnected = waitFor(x, 'connect', 'x to reconnect to server c', 10000);
        await resume();
        await reconnected;
        assert.equal(x.recovered, true);
        const resumedAt = numbers.length;
        await eventually(() => numbers.length >= resumedAt + 200, 'live numbers after the recovery', 10000);
        sending = false;
        await pump;
        const last = next - 1;
        await eventually(() => numbers[numbers.length - 1] === last, 'the last number', 10000);
        const expected = Array.from({ length: last - numbers[0] + 1 }, (_, i) => numbers[0] + i);
        const missing = expected.filter((n) => !numbers.includes(n));
        const twice = numbers.filter((n, i) => numbers.indexOf(n) !== i);
        const where = `received ${beforeMove} before the move (last ${numbers[beforeMove - 1]}); replayed ${replayed?.length} (${replayed?.[0]}..${replayed?.at(-1)}); then live from ${numbers[beforeMove + (replayed?.length ?? 0)]}`;
        assert.deepEqual({ missing, twice }, { missing: [], twice: [] }, `every number once across the move: ${where}`);
        assert.deepEqual(numbers, expected, 'in order');
      } finally {
        await cluster.close();
      }
    });
  }

  it('uses a session once; unknown pids, bogus offsets and expired sessions are not recovered, quickly', async () => {
    const cluster = await recoveringCluster(2, {
      serverOptions: { connectionStateRecovery: { maxDisconnectionDuration: 1500 } },
    });
    try {
      const [a, b] = cluster.ios;
      await eventually(async () => (await a.of('/').adapter.serverCount()) === 2, 'two servers counted');
      const x = await cluster.proxied();
      const got = waitFor(x, 'hello', 'x to receive a stored packet');
      a.emit('hello');
      await got;
      const credentials = { pid: x._pid, offset: x._lastOffset };
      const { resume } = await moveClient(cluster, x, 1, 0);
      const back = waitFor(x, 'connect', 'x to reconnect', 10000);
      await resume();
      await back;
      assert.equal(x.recovered, true);

      // The same session again (a copy of the client's credentials): already used.
      const scansBefore = b.of('/').adapter.stats().recoveryScans;
      const started = Date.now();
      const copy = await cluster.proxied(credentials);
      assert.notEqual(copy.id, x.id);
      assert.equal(serverSocket(b, copy).recovered, false, 'a session is restored once');
      const unknownPid = await cluster.proxied({ pid: 'no-such-pid', offset: credentials.offset });
      assert.equal(serverSocket(b, unknownPid).recovered, false);
      for (const offset of ['garbage', '1-2', `${Date.now()}-x-1; drop table`, '9'.repeat(200)]) {
        const bogus = await cluster.proxied({ pid: credentials.pid, offset });
        assert.equal(serverSocket(b, bogus).recovered, false, `offset ${offset.slice(0, 20)}`);
      }
      const ancient = await cluster.proxied({ pid: credentials.pid, offset: `${Date.now() - 86400000}-abc-1` });
      assert.equal(serverSocket(b, ancient).recovered, false);
      assert.equal(b.of('/').adapter.stats().recoveryScans, scansBefore + 2, 'malformed or too old offsets read nothing');
      assert.ok(Date.now() - started < 3000, `seven refusals took ${Date.now() - started} ms`);

      // Expiry: a session older than maxDisconnectionDuration (1.5 s) is not restored.
      const y = await cluster.proxied();
      const gotY = waitFor(y, 'hello2', 'y to receive a stored packet');
      b.emit('hello2');
      await gotY;
      const moved = await moveClient(cluster, y, 0, 1);
      const persistedAt = Date.now();
      await eventually(() => Date.now() - persistedAt > 1700, 'the session to expire', 5000);
      const yBack = waitFor(y, 'connect', 'y to reconnect', 10000);
      await moved.resume();
      await yBack;
      assert.equal(y.recovered, false, 'an expired session is not restored');
    } finally {
      await cluster.close();
    }
  });

  it('recovers clients after their server closed (rolling deploy): 200 at once, with a few shared scans', async (t) => {
    const cluster = await recoveringCluster(3);
    try {
      const [a, b, c] = cluster.ios;
      await eventually(async () => (await a.of('/').adapter.serverCount()) === 3, 'three servers counted');
      const clients = [];
      for (let i = 0; i < 200; i++) clients.push(await cluster.proxied({ room: `room-${i % 10}` }));
      const firsts = clients.map((client) => waitFor(client, 'before', 'a client to receive "before"'));
      b.emit('before');
      await Promise.all(firsts);
      const ids = clients.map((client) => client.id);
      const afters = clients.map((client) => record(client, 'after'));
      cluster.proxy.targetPort = cluster.servers[2].port;
      cluster.proxy.refuse();
      const gone = clients.map((client) => waitFor(client, 'disconnect', 'a client to lose server a'));
      await within(a.close(), 'server a to close');
      await Promise.all(gone);
      for (let i = 0; i < 10; i++) b.to(`room-${i}`).emit('after', i);
      const scans = c.of('/').adapter.stats().recoveryScans;
      const back = clients.map((client) => waitFor(client, 'connect', 'a client to reconnect to server c', 20000));
      await cluster.proxy.restore();
      await Promise.all(back);
      assert.deepEqual(
        clients.map((client) => client.recovered),
        clients.map(() => true),
        'every client recovered',
      );
      assert.deepEqual(
        clients.map((client) => client.id),
        ids,
      );
      await eventually(() => afters.every((seen) => seen.length === 1), 'each client to get its missed packet');
      assert.deepEqual(
        afters.map((seen) => seen[0][0]),
        clients.map((_, i) => i % 10),
        'each client got the packet of its own room only',
      );
      const stats = c.of('/').adapter.stats();
      assert.equal(stats.sessionsRestored, 200);
      const used = stats.recoveryScans - scans;
      assert.ok(used <= 50, `200 restores took ${used} scans of the log`);
      t.diagnostic(`200 restores took ${used} scans of the recovery log`);
    } finally {
      await cluster.close();
    }
  });

  it('a stored packet the restoring server cannot decode: not recovered, reported, nothing left behind', async () => {
    const cluster = await recoveringCluster(2);
    const connection = await amqplib.connect(AMQP_URL);
    try {
      const [a, b] = cluster.ios;
      const errors = [];
      b.of('/').adapter.on('error', (err) => errors.push(err.message));
      await eventually(async () => (await a.of('/').adapter.serverCount()) === 2, 'two servers counted');
      const x = await cluster.proxied();
      const got = waitFor(x, 'hello', 'x to receive a stored packet');
      a.emit('hello');
      await got;
      const oldId = x.id;
      const { resume } = await moveClient(cluster, x, 1, 0);
      // A record in the log (as a foreign or broken sender would write it) whose packet is garbage.
      const forged = notepack.encode({
        v: 1,
        uid: 'forger',
        nsp: '/',
        message: {
          type: 'broadcast',
          data: {
            target: { rooms: [], except: [] },
            flags: { volatile: false, compress: null },
            packet: ['2garbage'],
            ack: null,
            offset: `${Date.now()}-forger-1`,
          },
        },
      });
      const channel = await connection.createChannel();
      channel.publish(cluster.exchangeName, 'recovery-log', forged);
      await channel.close();
      const back = waitFor(x, 'connect', 'x to reconnect', 10000);
      await resume();
      await back;
      assert.equal(x.recovered, false, 'not recovered');
      assert.notEqual(x.id, oldId);
      assert.ok(
        errors.some((message) => /a session was not restored/.test(message)),
        `reported: ${errors.join(' | ')}`,
      );
      assert.equal(b.of('/').adapter.sids.has(oldId), false, 'the old id is not left in the room index');
      assert.equal(b.of('/').adapter.rooms.has('r'), true, 'the new socket joined as a new one');
    } finally {
      await connection.close();
      await cluster.close();
    }
  });

  it('replays what an emitter sent with recoverable: true', async () => {
    const cluster = await recoveringCluster(2);
    const emitter = new Emitter({ amqpUrl: AMQP_URL, exchangeName: cluster.exchangeName, recoverable: true });
    try {
      await emitter.ready();
      const [a] = cluster.ios;
      await eventually(async () => (await a.of('/').adapter.serverCount()) === 2, 'two servers counted');
      const x = await cluster.proxied();
      const seen = record(x, 'from-emitter');
      const first = waitFor(x, 'from-emitter', 'the first emit');
      emitter.to('r').emit('from-emitter', 1);
      await first;
      const { resume } = await moveClient(cluster, x, 1, 0);
      emitter.to('r').emit('from-emitter', 2);
      emitter.volatile.to('r').emit('from-emitter', 'volatile');
      await eventually(() => emitter.stats().buffered === 0, 'the emitter to publish');
      const back = waitFor(x, 'connect', 'x to reconnect', 10000);
      await resume();
      await back;
      assert.equal(x.recovered, true);
      await eventually(() => seen.length === 2, 'the missed emit');
      assert.deepEqual(
        seen.map((args) => args[0]),
        [1, 2],
      );
    } finally {
      await emitter.close();
      await cluster.close();
    }
  });

  it('changes nothing with recovery off: no offset argument, no stream, no session', async () => {
    const cluster = await startCluster(2);
    try {
      const [a] = cluster.ios;
      const client = await cluster.client(1);
      const got = waitFor(client, 'plain', 'the broadcast');
      a.emit('plain', 1, 'two');
      const [args] = [await got];
      assert.deepEqual(args, [1, 'two'], 'the arguments as sent, nothing appended');
      assert.equal(await a.of('/').adapter.restoreSession('pid', `${Date.now()}-abc-1`), null);
      assert.equal(brokerHasQueue(`${cluster.exchangeName}.recovery`), false, 'no stream declared');
      assert.equal(a.of('/').adapter.stats().sessionsPersisted, 0);
    } finally {
      await cluster.close();
    }
  });
});
