'use strict';
// Socket.IO's whole multi-server API through RabbitMQ, with three servers and real clients, run for
// each way a cluster is set up: default options, roomRouting, and a custom parser (msgpack) on
// servers and clients.
const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { startCluster, waitFor, within, eventually, barrier } = require('./helpers');

const VARIANTS = [
  { name: '', options: {} },
  { name: ' (roomRouting)', options: { adapterOptions: { roomRouting: true } } },
  (() => {
    const parser = require('socket.io-msgpack-parser');
    return { name: ' (msgpack parser)', options: { serverOptions: { parser }, clientOptions: { parser } } };
  })(),
];

/** startCluster with the variant's options (the test's own adapter options on top). */
function clusterOf(variant, count, options = {}) {
  const base = variant.options;
  return startCluster(count, {
    ...base,
    ...options,
    adapterOptions: { ...base.adapterOptions, ...options.adapterOptions },
  });
}

for (const variant of VARIANTS) {
  describe(`acknowledgements across servers${variant.name}`, () => {
    let cluster;
    let clients;
    before(async () => {
      cluster = await clusterOf(variant, 3);
      clients = [await cluster.client(0), await cluster.client(1), await cluster.client(2)];
      clients.forEach((client, i) => {
        client.on('ask', (question, reply) => reply({ from: i, question, bytes: Buffer.from([i]) }));
      });
      await eventually(async () => (await cluster.ios[0].of('/').adapter.serverCount()) === 3, 'server 0 to count 3 servers');
    });
    after(() => cluster.close());

    it('io.timeout().emit collects one ack per client of every server, binary intact', async () => {
      const [err, replies] = await within(
        new Promise((resolve) => cluster.ios[0].timeout(3000).emit('ask', 'q1', (...args) => resolve(args))),
        'the acks from all servers',
      );
      assert.equal(err, null);
      assert.deepEqual(replies.map((r) => r.from).sort(), [0, 1, 2]);
      for (const reply of replies) {
        assert.equal(reply.question, 'q1');
        assert.ok(Buffer.isBuffer(reply.bytes), 'a binary ack reply stays a Buffer');
        assert.deepEqual([...reply.bytes], [reply.from]);
      }
    });

    it('io.to(room).timeout().emit asks only the room', async () => {
      cluster.ios[2].of('/').sockets.get(clients[2].id).join('askers');
      const replies = await within(cluster.ios[0].to('askers').timeout(3000).emitWithAck('ask', 'q2'), 'the room acks');
      assert.deepEqual(
        replies.map((r) => r.from),
        [2],
      );
    });

    it('no matching client gives (null, []) without waiting for the timeout', async () => {
      const [err, replies] = await within(
        new Promise((resolve) =>
          cluster.ios[1]
            .to('nobody-here')
            .timeout(20000)
            .emit('ask', 'q3', (...args) => resolve(args)),
        ),
        'the empty result (it must not wait for the 20 s timeout)',
        3000,
      );
      assert.equal(err, null);
      assert.deepEqual(replies, []);
    });

    it('a silent client yields a timeout error with the replies that arrived, and leaves nothing behind', async () => {
      const silent = await cluster.client(1);
      silent.on('ask', () => {}); // never answers
      const [err, replies] = await within(
        new Promise((resolve) => cluster.ios[0].timeout(700).emit('ask', 'q4', (...args) => resolve(args))),
        'the ack timeout',
      );
      assert.ok(err instanceof Error);
      assert.deepEqual(replies.map((r) => r.from).sort(), [0, 1, 2]);
      const remoteSocket = cluster.ios[1].of('/').sockets.get(silent.id);
      await eventually(() => remoteSocket.acks.size === 0, "the silent socket's pending ack to be forgotten");
      await eventually(() => cluster.ios[0].of('/').adapter.stats().pendingRequests === 0, 'the requester to forget the ack request');
      silent.disconnect();
    });
  });

  describe(`fetchSockets and remote sockets${variant.name}`, () => {
    let cluster;
    let clients;
    before(async () => {
      cluster = await clusterOf(variant, 3);
      clients = [];
      for (let i = 0; i < 3; i++) {
        const client = await cluster.client(i, '/', { auth: { user: `user-${i}` } });
        const socket = cluster.ios[i].of('/').sockets.get(client.id);
        socket.data = { index: i, avatar: Buffer.from([i, 42]) };
        if (i > 0) socket.join('odd-or-two');
        clients.push(client);
      }
      await eventually(async () => (await cluster.ios[0].of('/').adapter.serverCount()) === 3, 'three servers counted');
    });
    after(() => cluster.close());

    it('io.fetchSockets() returns the sockets of every server with id, handshake, rooms and data', async () => {
      const sockets = await within(cluster.ios[0].fetchSockets(), 'fetchSockets');
      assert.deepEqual(sockets.map((s) => s.id).sort(), clients.map((c) => c.id).sort());
      for (const socket of sockets) {
        const i = socket.data.index;
        assert.equal(socket.handshake.auth.user, `user-${i}`);
        assert.ok(socket.rooms.has(socket.id));
        assert.equal(socket.rooms.has('odd-or-two'), i > 0);
        assert.ok(Buffer.isBuffer(socket.data.avatar), 'binary in socket.data stays a Buffer');
      }
    });

    it('io.in(room).fetchSockets() and io.local.fetchSockets() filter', async () => {
      const inRoom = await within(cluster.ios[0].in('odd-or-two').fetchSockets(), 'fetchSockets in a room');
      assert.deepEqual(inRoom.map((s) => s.data.index).sort(), [1, 2]);
      const local = await within(cluster.ios[0].local.fetchSockets(), 'local fetchSockets');
      assert.deepEqual(
        local.map((s) => s.id),
        [clients[0].id],
      );
    });

    it('remote sockets emit, answer acks, join, leave and disconnect on their own server', async () => {
      const [remote] = await cluster.ios[0].in(clients[2].id).fetchSockets();
      assert.equal(remote.constructor.name, 'RemoteSocket');

      const [greeting] = await Promise.all([waitFor(clients[2], 'hello', 'the remote emit'), remote.emit('hello', 'there')]);
      assert.deepEqual(greeting, ['there']);

      clients[2].once('question', (reply) => reply('answer-from-2'));
      const answer = await within(remote.timeout(3000).emitWithAck('question'), 'the remote emitWithAck');
      assert.equal(answer, 'answer-from-2');

      const real = cluster.ios[2].of('/').sockets.get(clients[2].id);
      remote.join('remote-joined');
      await barrier(cluster.ios[0], clients[2]);
      assert.ok(real.rooms.has('remote-joined'));
      remote.leave('remote-joined');
      await barrier(cluster.ios[0], clients[2]);
      assert.ok(!real.rooms.has('remote-joined'));

      const disconnected = waitFor(clients[2], 'disconnect', 'the remote disconnect');
      remote.disconnect();
      const [reason] = await disconnected;
      assert.equal(reason, 'io server disconnect');
    });
  });

  describe(`socketsJoin, socketsLeave, disconnectSockets${variant.name}`, () => {
    let cluster;
    let clients;
    before(async () => {
      cluster = await clusterOf(variant, 3);
      clients = [await cluster.client(0), await cluster.client(1), await cluster.client(2)];
    });
    after(() => cluster.close());

    it('socketsJoin acts on every server, in order with the emit that follows it', async () => {
      const seen = clients.map(() => 0);
      clients.forEach((client, i) => {
        client.on('joined-news', () => seen[i]++);
      });
      cluster.ios[0].socketsJoin('news');
      cluster.ios[0].to('news').emit('joined-news');
      for (const client of clients) await barrier(cluster.ios[0], client);
      assert.deepEqual(seen, [1, 1, 1]);
      for (let i = 0; i < 3; i++) assert.ok(cluster.ios[i].of('/').adapter.rooms.has('news'));
    });

    it("remote joins and leaves emit join-room and leave-room on the socket's server", async () => {
      const adapter = cluster.ios[2].of('/').adapter;
      const events = [];
      const onJoin = (room, id) => events.push(['join', room, id]);
      const onLeave = (room, id) => events.push(['leave', room, id]);
      adapter.on('join-room', onJoin);
      adapter.on('leave-room', onLeave);
      try {
        cluster.ios[0].in(clients[2].id).socketsJoin('evented');
        cluster.ios[0].in(clients[2].id).socketsLeave('evented');
        await barrier(cluster.ios[0], clients[2]);
      } finally {
        adapter.off('join-room', onJoin);
        adapter.off('leave-room', onLeave);
      }
      assert.deepEqual(events, [
        ['join', 'evented', clients[2].id],
        ['leave', 'evented', clients[2].id],
      ]);
    });

    it('socketsLeave acts on every server', async () => {
      cluster.ios[1].socketsJoin('temp');
      cluster.ios[1].in('temp').socketsLeave('temp');
      for (const client of clients) await barrier(cluster.ios[1], client);
      for (let i = 0; i < 3; i++) assert.ok(!cluster.ios[i].of('/').adapter.rooms.has('temp'), `server ${i}`);
    });

    it('disconnectSockets(close) acts on every matching socket of every server', async () => {
      cluster.ios[0].in(clients[1].id).socketsJoin('doomed');
      cluster.ios[0].in(clients[2].id).socketsJoin('doomed');
      await barrier(cluster.ios[0], clients[1]);
      await barrier(cluster.ios[0], clients[2]);
      const connections = [1, 2].map((i) => cluster.ios[i].of('/').sockets.get(clients[i].id).client.conn);
      const gone = [1, 2].map((i) => waitFor(clients[i], 'disconnect', `client ${i} to be disconnected`));
      cluster.ios[0].in('doomed').disconnectSockets(true);
      const reasons = (await Promise.all(gone)).map(([reason]) => reason);
      assert.deepEqual(reasons, ['io server disconnect', 'io server disconnect']);
      await eventually(() => connections.every((conn) => conn.readyState === 'closed'), 'the underlying connections to close');
      assert.ok(clients[0].connected, 'a socket outside the room stays');
    });
  });

  describe(`serverSideEmit${variant.name}`, () => {
    let cluster;
    const received = [[], [], []];
    before(async () => {
      cluster = await clusterOf(variant, 3, {
        adapterOptions: { requestsTimeout: 1500 },
        setup: (io, i) => {
          io.on('ping-servers', (...args) => {
            const reply = typeof args[args.length - 1] === 'function' ? args.pop() : null;
            received[i].push(args);
            if (reply && !(i === 2 && args[0] === 'silent-2')) reply({ server: i, bytes: Buffer.from([i]) });
          });
        },
      });
      await eventually(async () => (await cluster.ios[0].of('/').adapter.serverCount()) === 3, 'three servers counted');
    });
    after(() => cluster.close());

    it('reaches every other server once and never the emitter, binary intact', async () => {
      for (const list of received) list.length = 0;
      cluster.ios[0].serverSideEmit('ping-servers', 'hi', Buffer.from('raw'));
      await eventually(() => received[1].length && received[2].length, 'the emit to reach servers 1 and 2');
      // A second emit with an ack proves the first one was not duplicated meanwhile.
      await within(cluster.ios[0].serverSideEmitWithAck('ping-servers', 'sync'), 'a synchronising emit');
      assert.equal(received[0].length, 0, 'never the emitter');
      for (const i of [1, 2]) {
        assert.equal(received[i].filter(([first]) => first === 'hi').length, 1, `once on server ${i}`);
        assert.ok(Buffer.isBuffer(received[i][0][1]));
      }
    });

    it('with an ack collects one reply per other server', async () => {
      const replies = await within(cluster.ios[1].serverSideEmitWithAck('ping-servers', 'question'), 'the replies');
      assert.deepEqual(replies.map((r) => r.server).sort(), [0, 2]);
      assert.ok(replies.every((r) => Buffer.isBuffer(r.bytes)));
    });

    it('on timeout errors with the partial replies', async () => {
      const [err, replies] = await within(
        new Promise((resolve) => cluster.ios[0].serverSideEmit('ping-servers', 'silent-2', (...args) => resolve(args))),
        'the serverSideEmit timeout',
      );
      assert.match(err.message, /timeout reached: only 1 responses received out of 2/);
      assert.deepEqual(
        replies.map((r) => r.server),
        [1],
      );
    });
  });
}
