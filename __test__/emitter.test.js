'use strict';
// The emitter, from Node and from Rust: every method reaches clients and servers through the
// adapters, as if a server had done it.
const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const crypto = require('node:crypto');
const { execFile } = require('node:child_process');
const { Emitter } = require('..');
const { AMQP_URL, startCluster, waitFor, within, eventually, record, brokerConnectionsMatching } = require('./helpers');

// Resolves once everything `send` emitted before has reached `client` (same emitter, same order).
async function emitterBarrier(send, client) {
  const marker = `barrier-${crypto.randomBytes(4).toString('hex')}`;
  const arrived = waitFor(client, marker, `the ${marker} marker from the emitter`);
  await send(marker, client.id);
  await arrived;
}

describe('the Node emitter', () => {
  let cluster;
  let clients;
  let emitter;
  const serverEvents = [[], []];
  before(async () => {
    cluster = await startCluster(2, {
      setup: (io, i) => io.on('from-worker', (...args) => serverEvents[i].push(args)),
    });
    await within(cluster.ios[0].of('/admin').adapter.init(), 'the /admin namespace');
    await within(cluster.ios[1].of('/admin').adapter.init(), 'the /admin namespace');
    clients = [await cluster.client(0), await cluster.client(1)];
    emitter = new Emitter(AMQP_URL, { exchangeName: cluster.exchangeName });
    await within(emitter.ready(), 'the emitter to connect');
  });
  after(async () => {
    await emitter?.close();
    await cluster.close();
  });

  const barrier = (client) => emitterBarrier((marker, id) => emitter.to(id).emit(marker), client);

  it('emit, to, in and except reach the selected clients of every server, binary intact', async () => {
    cluster.ios[1].of('/').sockets.get(clients[1].id).join('vip');
    const all = clients.map((c) => record(c, 'all'));
    const vip = clients.map((c) => record(c, 'vip'));
    const notVip = clients.map((c) => record(c, 'not-vip'));
    emitter.emit('all', 'hello', { bytes: Buffer.from([1, 2, 3]) });
    emitter.to('vip').emit('vip', 1);
    emitter.in('vip').emit('vip', 2);
    emitter.except('vip').emit('not-vip');
    for (const client of clients) await barrier(client);
    assert.deepEqual(
      all.map((s) => s.length),
      [1, 1],
    );
    assert.ok(Buffer.isBuffer(all[1][0][1].bytes));
    assert.deepEqual([...all[1][0][1].bytes], [1, 2, 3]);
    assert.deepEqual(
      vip.map((s) => s.map(([n]) => n)),
      [[], [1, 2]],
    );
    assert.deepEqual(
      notVip.map((s) => s.length),
      [1, 0],
    );
  });

  it('of(nsp) targets that namespace only', async () => {
    const admin = await cluster.client(1, '/admin');
    const adminSeen = record(admin, 'ns');
    const rootSeen = record(clients[1], 'ns');
    emitter.of('/admin').emit('ns', 'admin only');
    await emitterBarrier((marker, id) => emitter.of('/admin').to(id).emit(marker), admin);
    await barrier(clients[1]);
    assert.deepEqual(adminSeen, [['admin only']]);
    assert.deepEqual(rootSeen, []);
  });

  it('volatile and compress(false) reach the engine writes', async () => {
    const socket = cluster.ios[0].of('/').sockets.get(clients[0].id);
    const writes = [];
    const original = socket.client.writeToEngine;
    socket.client.writeToEngine = function (encoded, opts) {
      writes.push(opts);
      return original.call(this, encoded, opts);
    };
    try {
      emitter.volatile.emit('flag', 'v');
      emitter.compress(false).emit('flag', 'c');
      await barrier(clients[0]);
    } finally {
      socket.client.writeToEngine = original;
    }
    assert.equal(writes[0].volatile, true);
    assert.equal(writes[1].compress, false);
  });

  it('socketsJoin, socketsLeave and disconnectSockets act on every server', async () => {
    emitter.socketsJoin('joined-by-worker');
    for (const client of clients) await barrier(client);
    for (let i = 0; i < 2; i++) assert.ok(cluster.ios[i].of('/').adapter.rooms.has('joined-by-worker'), `server ${i}`);
    emitter.in('joined-by-worker').socketsLeave('joined-by-worker');
    for (const client of clients) await barrier(client);
    for (let i = 0; i < 2; i++) assert.ok(!cluster.ios[i].of('/').adapter.rooms.has('joined-by-worker'), `server ${i}`);

    const doomed = await cluster.client(1);
    const gone = waitFor(doomed, 'disconnect', 'the emitter to disconnect a socket');
    emitter.in(doomed.id).disconnectSockets(true);
    const [reason] = await gone;
    assert.equal(reason, 'io server disconnect');
  });

  it('serverSideEmit reaches every server; the emitter is never counted as one', async () => {
    emitter.serverSideEmit('from-worker', 'job done', Buffer.from('x'));
    await eventually(() => serverEvents.every((list) => list.length === 1), 'both servers to hear the emit');
    assert.equal(serverEvents[0][0][0], 'job done');
    assert.ok(Buffer.isBuffer(serverEvents[1][0][1]));
    assert.equal(await cluster.ios[0].of('/').adapter.serverCount(), 2);
  });

  it('refuses acknowledgements and reserved events with clear errors', () => {
    assert.throws(() => emitter.emit('x', () => {}), /does not support acknowledgements/);
    assert.throws(() => emitter.serverSideEmit('x', () => {}), /does not support acknowledgements/);
    assert.throws(() => emitter.emit('disconnect'), /reserved event/);
  });

  it('a bad URL is a TypeError; an unreachable broker rejects ready() with a clear error', async () => {
    assert.throws(() => new Emitter('http://localhost'), /unsupported URL scheme/);
    assert.throws(() => new Emitter(AMQP_URL, { prefetch: 10 }), /unknown option "prefetch"/);
    const lost = new Emitter('amqp://127.0.0.1:1', { reconnectDelay: 100 });
    lost.on('error', () => {});
    await assert.rejects(within(lost.ready(), 'ready() to reject'), /could not connect to the AMQP broker at amqp:\/\/127\.0\.0\.1:1/);
    await lost.close();
  });

  it('close() sends what is buffered and releases the connection', async () => {
    const worker = new Emitter({ amqpUrl: AMQP_URL, exchangeName: cluster.exchangeName });
    const seen = record(clients[0], 'last-words');
    worker.emit('last-words', 'bye'); // before the connection is even up
    await within(worker.close(), 'close()');
    await eventually(() => seen.length === 1, 'the emit made before close() to arrive');
    assert.equal(brokerConnectionsMatching(worker._native.uid), 0);
  });
});

describe('the Rust emitter (examples/emit.rs)', () => {
  let cluster;
  let clients;
  let binary;
  const serverEvents = [[], []];
  before(
    async () => {
      const root = path.join(__dirname, '..');
      await new Promise((resolve, reject) =>
        execFile(
          process.execPath,
          [path.join(root, 'scripts', 'cargo.js'), 'build', '--release', '--no-default-features', '--example', 'emit'],
          { cwd: root, timeout: 600000 },
          (err, _stdout, stderr) => (err ? reject(new Error(`building the example failed: ${stderr}`)) : resolve()),
        ),
      );
      binary = path.join(process.env.CARGO_TARGET_DIR || path.join(root, 'target'), 'release', 'examples', 'emit');
      cluster = await startCluster(2, {
        setup: (io, i) => io.on('from-rust', (...args) => serverEvents[i].push(args)),
      });
      clients = [await cluster.client(0), await cluster.client(1)];
    },
    { timeout: 620000 },
  );
  after(() => cluster?.close());

  // Runs the example with the given commands (joined by "+"), then a marker to each client.
  function rust(...commands) {
    const markers = clients.map(() => `barrier-${crypto.randomBytes(4).toString('hex')}`);
    const arrived = clients.map((client, i) => waitFor(client, markers[i], `the Rust emitter's marker for client ${i}`, 10000));
    const argv = [AMQP_URL, cluster.exchangeName, '/'];
    for (const command of [...commands, ...clients.map((c, i) => ['emit', markers[i], c.id])]) {
      if (argv.length > 3) argv.push('+');
      argv.push(...command);
    }
    return within(
      new Promise((resolve, reject) =>
        execFile(binary, argv, { timeout: 20000 }, (err, _stdout, stderr) =>
          err ? reject(new Error(`emit failed: ${stderr}`)) : resolve(),
        ),
      ),
      'the Rust emitter to finish',
      25000,
    ).then(() => Promise.all(arrived));
  }

  it('emits JSON and binary arguments to rooms and everyone', async () => {
    cluster.ios[0].of('/').sockets.get(clients[0].id).join('rust-room');
    const room = clients.map((c) => record(c, 'room-news'));
    const everyone = clients.map((c) => record(c, 'all-news'));
    const bin = clients.map((c) => record(c, 'bytes'));
    await rust(['emit', 'room-news', 'rust-room', '{"n":1}', '"two"'], ['emit', 'all-news', '-', '3'], ['emit-binary', 'bytes', 'raw']);
    assert.deepEqual(room, [[[{ n: 1 }, 'two']], []]);
    assert.deepEqual(
      everyone.map((s) => s.length),
      [1, 1],
    );
    assert.ok(Buffer.isBuffer(bin[1][0][0]));
    assert.equal(bin[1][0][0].toString(), 'raw');
  });

  it('joins, leaves and disconnects sockets, and emits to the servers', async () => {
    await rust(['join', clients[1].id, 'rusty']);
    assert.ok(cluster.ios[1].of('/').adapter.rooms.get('rusty').has(clients[1].id));
    await rust(['leave', clients[1].id, 'rusty']);
    assert.ok(!cluster.ios[1].of('/').adapter.rooms.has('rusty'));
    await rust(['server-side-emit', 'from-rust', '{"job":7}']);
    await eventually(() => serverEvents.every((list) => list.length === 1), 'both servers to hear the Rust emit');
    assert.deepEqual(serverEvents[0][0], [{ job: 7 }]);

    const extra = await cluster.client(0);
    const gone = waitFor(extra, 'disconnect', 'the Rust emitter to disconnect a socket');
    await within(
      new Promise((resolve, reject) =>
        execFile(binary, [AMQP_URL, cluster.exchangeName, '/', 'disconnect', extra.id], { timeout: 20000 }, (err, _o, stderr) =>
          err ? reject(new Error(stderr)) : resolve(),
        ),
      ),
      'the disconnect command',
    );
    const [reason] = await gone;
    assert.equal(reason, 'io server disconnect');
  });
});
