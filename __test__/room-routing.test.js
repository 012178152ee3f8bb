'use strict';
// roomRouting: servers bind a key per room they have members in, and single-room broadcasts go by
// room key, so the broker sends them only to servers that can deliver them. The broadcast suite
// (broadcast.test.js) runs with it too; this file covers what is specific to it.
const http = require('node:http');
const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { Server } = require('socket.io');
const {
  AMQP_URL,
  startCluster,
  waitFor,
  within,
  eventually,
  record,
  barrier,
  uniqueName,
  createAdapter,
  closeBrokerConnections,
  FAST,
} = require('./helpers');

const noLocal = (io) => io.of('/').adapter.stats().noLocalRecipient;
const socketOf = (io, client) => io.of('/').sockets.get(client.id);

describe('roomRouting', () => {
  let cluster;
  let clients;
  before(async () => {
    cluster = await startCluster(3, { adapterOptions: { ...FAST, roomRouting: true } });
    clients = [await cluster.client(0), await cluster.client(1), await cluster.client(2)];
    await eventually(async () => (await cluster.ios[0].of('/').adapter.serverCount()) === 3, 'three servers counted');
  });
  after(() => cluster.close());

  it('a broadcast to one room reaches only the servers with members in it', async () => {
    const [a, b, c] = cluster.ios;
    await socketOf(b, clients[1]).join('only-b');
    const before = { b: noLocal(b), c: noLocal(c) };
    const seen = clients.map((client) => record(client, 'routed'));
    for (let i = 0; i < 20; i++) a.to('only-b').emit('routed', i);
    for (const client of clients) await barrier(a, client);
    assert.equal(seen[1].length, 20, 'the member on B got every message');
    assert.equal(seen[2].length, 0);
    // C dropped only the barriers to the clients of A and B (socket ids go to every server), none
    // of the 20 room broadcasts.
    assert.equal(noLocal(c), before.c + 2, 'C, with no member, never received the room broadcasts');
    // B handles the last barrier (to C's client) in parallel with C delivering it: wait for it,
    // then check that nothing else was dropped.
    await eventually(() => noLocal(b) >= before.b + 2, 'B to drop the barriers to the clients of A and C');
    assert.equal(noLocal(b), before.b + 2, 'B dropped the barriers to the clients of A and C only');
  });

  it('without it, the same broadcasts reach every server and are dropped in Rust, with no JS call', async () => {
    const plain = await startCluster(2, { adapterOptions: FAST });
    try {
      const [a, b] = plain.ios;
      await plain.client(1);
      const before = b.of('/').adapter.stats();
      for (let i = 0; i < 20; i++) a.to('nobody-here').emit('plain', i);
      await eventually(() => noLocal(b) === before.noLocalRecipient + 20, 'B to receive and drop the 20 broadcasts');
      assert.equal(b.of('/').adapter.stats().hostWakeups, before.hostWakeups, "B's event loop was never woken for them");
    } finally {
      await plain.close();
    }
  });

  it('await socket.join(room) returns once the room is routed: an emit right after it arrives', async () => {
    const [a, b] = cluster.ios;
    for (let i = 0; i < 10; i++) {
      const room = `fresh-${i}`;
      await socketOf(b, clients[1]).join(room);
      const [args] = await Promise.all([
        waitFor(clients[1], 'fresh', `the first emit to ${room} from another server`),
        a.to(room).emit('fresh', room),
      ]);
      assert.deepEqual(args, [room]);
    }
  });

  it('socketsJoin then an emit to that room reaches the sockets joined on other servers', async () => {
    const [a] = cluster.ios;
    for (let i = 0; i < 10; i++) {
      const room = `joined-remotely-${i}`;
      const seen = record(clients[2], 'after-join');
      a.in(clients[2].id).socketsJoin(room);
      a.to(room).emit('after-join', room);
      await barrier(a, clients[2]);
      clients[2].off('after-join');
      assert.deepEqual(seen, [[room]], `the emit that followed socketsJoin(${room})`);
    }
  });

  it('when the last member leaves, the server stops receiving the room', async () => {
    const [a, b] = cluster.ios;
    const socket = socketOf(b, clients[1]);
    await socket.join('short-lived');
    socket.leave('short-lived');
    // The unbinding is asynchronous: until it lands, B receives the room and drops it.
    await eventually(async () => {
      const before = noLocal(b);
      a.to('short-lived').emit('gone');
      await barrier(a, clients[1]);
      return noLocal(b) === before;
    }, 'B to stop receiving the room it left');
  });

  it('socket ids are not bound: io.to(id) still reaches the socket, through the namespace key', async () => {
    const [a, , c] = cluster.ios;
    const before = noLocal(c);
    const [args] = await Promise.all([waitFor(clients[1], 'direct', 'a message to a socket id'), a.to(clients[1].id).emit('direct', 1)]);
    assert.deepEqual(args, [1]);
    await eventually(() => noLocal(c) > before, 'C to receive (and drop) the message to a socket it does not hold');
  });

  it("an emitter's room broadcast reaches the members (emitters publish by namespace key)", async () => {
    const { Emitter } = require('..');
    const [, b] = cluster.ios;
    await socketOf(b, clients[1]).join('from-worker');
    const emitter = new Emitter(AMQP_URL, { exchangeName: cluster.exchangeName });
    try {
      await within(emitter.ready(), 'the emitter to connect');
      const [args] = await Promise.all([
        waitFor(clients[1], 'work', "the emitter's room broadcast"),
        emitter.to('from-worker').emit('work', 7),
      ]);
      assert.deepEqual(args, [7]);
    } finally {
      await emitter.close();
    }
  });

  it('after a reconnect, the rooms are bound again', async () => {
    const [a, b] = cluster.ios;
    await socketOf(b, clients[1]).join('survivor');
    const back = waitFor(b.of('/').adapter, 'reconnect', 'B to reconnect');
    assert.equal(closeBrokerConnections(b.of('/').adapter.uid), 1);
    await back;
    await eventually(async () => (await a.of('/').adapter.serverCount()) === 3, 'A to count B again');
    const [args] = await Promise.all([
      waitFor(clients[1], 'again', 'a room broadcast after the reconnect'),
      a.to('survivor').emit('again', 'ok'),
    ]);
    assert.deepEqual(args, ['ok']);
  });
});

describe('roomRouting in a mixed cluster', () => {
  it('a server without it still receives single-room broadcasts from one with it', async () => {
    const exchangeName = uniqueName('mixed');
    const servers = [];
    try {
      for (const roomRouting of [true, false]) {
        const httpServer = http.createServer();
        const io = new Server(httpServer);
        io.adapter(createAdapter(AMQP_URL, { exchangeName, ...FAST, roomRouting }));
        await within(io.of('/').adapter.init(), 'a server to bind');
        await new Promise((resolve) => httpServer.listen(0, '127.0.0.1', resolve));
        servers.push({ io, httpServer });
      }
      const [withIt, without] = servers.map((s) => s.io);
      await eventually(async () => (await withIt.of('/').adapter.serverCount()) === 2, 'both servers counted');
      const { io: connect } = require('socket.io-client');
      const client = connect(`http://127.0.0.1:${servers[1].httpServer.address().port}`, {
        transports: ['websocket'],
        forceNew: true,
        reconnection: false,
      });
      try {
        await waitFor(client, 'connect', 'a client on the server without roomRouting');
        without.of('/').sockets.get(client.id).join('legacy');
        const [args] = await Promise.all([waitFor(client, 'mixed', 'the room broadcast'), withIt.to('legacy').emit('mixed', 'ok')]);
        assert.deepEqual(args, ['ok']);
      } finally {
        client.disconnect();
      }
    } finally {
      await Promise.all(servers.map(({ io }) => within(io.close(), 'a server to close')));
    }
  });

  it('roomRouting must be a boolean', () => {
    assert.throws(() => createAdapter(AMQP_URL, { roomRouting: 'yes' }), /roomRouting must be a boolean/);
  });
});
