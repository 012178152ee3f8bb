'use strict';
// Broadcasts across servers behave as with one server and the in-memory adapter.
const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { startCluster, waitFor, record, barrier } = require('./helpers');

// Joins are awaited: with roomRouting, a join that creates a room resolves once the broker routes
// the room to its server (without it, join() returns nothing and await changes nothing).
for (const roomRouting of [false, true]) {
  describe(`broadcasts across three servers${roomRouting ? ' (roomRouting)' : ''}`, () => {
    let cluster;
    let clients; // one per server, plus a second on server 0
    before(async () => {
      cluster = await startCluster(3, { adapterOptions: { roomRouting } });
      clients = [await cluster.client(0), await cluster.client(1), await cluster.client(2), await cluster.client(0)];
    });
    after(() => cluster.close());

    // Every client records `event`; `act` emits; a barrier from `origin` to each client proves that
    // whatever was going to arrive has arrived. Returns the received argument lists per client.
    async function deliveries(event, act, origin = 0) {
      const seen = clients.map((c) => record(c, event));
      await act();
      for (const client of clients) await barrier(cluster.ios[origin], client);
      for (const client of clients) client.off(event);
      return seen;
    }

    const counts = (seen) => seen.map((s) => s.length);

    it('io.emit reaches every client of every server once', async () => {
      const seen = await deliveries('all', () => cluster.ios[1].emit('all', 'hi', 42));
      assert.deepEqual(counts(seen), [1, 1, 1, 1]);
      assert.deepEqual(seen[2][0], ['hi', 42]);
    });

    it('io.to(room) reaches the members on other servers only', async () => {
      const [a, b, c] = cluster.ios;
      await b.of('/').sockets.get(clients[1].id).join('room-x');
      await c.of('/').sockets.get(clients[2].id).join('room-x');
      const seen = await deliveries('to-room', () => a.to('room-x').emit('to-room', 'x'));
      assert.deepEqual(counts(seen), [0, 1, 1, 0]);
    });

    it('io.to([r1, r2]) delivers once to a socket in both rooms', async () => {
      const sockets = cluster.ios.map((io, i) => io.of('/').sockets.get(clients[i].id));
      await sockets[1].join(['r1', 'r2']);
      await sockets[2].join('r2');
      const seen = await deliveries('multi', () => cluster.ios[0].to(['r1', 'r2']).emit('multi'));
      assert.deepEqual(counts(seen), [0, 1, 1, 0]);
    });

    it('io.except(room) skips the room on every server', async () => {
      await cluster.ios[2].of('/').sockets.get(clients[2].id).join('muted');
      await cluster.ios[0].of('/').sockets.get(clients[3].id).join('muted');
      const seen = await deliveries('except', () => cluster.ios[1].except('muted').emit('except'), 1);
      assert.deepEqual(counts(seen), [1, 1, 0, 0]);
    });

    it('socket.broadcast.emit reaches everyone but the sender', async () => {
      const sender = cluster.ios[0].of('/').sockets.get(clients[0].id);
      const seen = await deliveries('bcast', () => sender.broadcast.emit('bcast', 'from-0'));
      assert.deepEqual(counts(seen), [0, 1, 1, 1]);
    });

    it('socket.to(room).emit reaches the room except the sender', async () => {
      const sockets = cluster.ios.map((io, i) => io.of('/').sockets.get(clients[i].id));
      for (const s of sockets) await s.join('team');
      const seen = await deliveries('team', () => sockets[0].to('team').emit('team'));
      assert.deepEqual(counts(seen), [0, 1, 1, 0]);
    });

    it('io.to(socketId) reaches that socket on its server', async () => {
      const seen = await deliveries('direct', () => cluster.ios[0].to(clients[2].id).emit('direct', 'only you'));
      assert.deepEqual(counts(seen), [0, 0, 1, 0]);
      assert.deepEqual(seen[2][0], ['only you']);
    });

    it('the local flag keeps a broadcast on its own server', async () => {
      const seen = await deliveries('local', () => cluster.ios[0].local.emit('local'));
      assert.deepEqual(counts(seen), [1, 0, 0, 1]);
    });

    it('volatile and compress flags reach the remote engine writes', async () => {
      const remote = cluster.ios[1].of('/').sockets.get(clients[1].id);
      const writes = [];
      const original = remote.client.writeToEngine;
      remote.client.writeToEngine = function (encoded, opts) {
        writes.push(opts);
        return original.call(this, encoded, opts);
      };
      try {
        const seen = await deliveries('flagged', async () => {
          cluster.ios[0].volatile.emit('flagged', 'v');
          cluster.ios[0].compress(false).emit('flagged', 'c');
        });
        assert.deepEqual(seen[1], [['v'], ['c']]);
      } finally {
        remote.client.writeToEngine = original;
      }
      const flagged = writes.slice(0, 2);
      assert.equal(flagged[0].volatile, true);
      assert.notEqual(flagged[0].compress, false);
      assert.equal(flagged[1].compress, false);
      assert.ok(!flagged[1].volatile);
    });

    // A text broadcast is framed once for all its websocket recipients (lib/ws-frame.js). The
    // encoded packet is `2["frame","<text>"]` after engine.io's type byte: the lengths sweep across
    // the payload sizes 125/126 and 65535/65536, where the frame header grows, in ASCII and in
    // multi-byte UTF-8 (the header counts bytes, not characters). A polling client gets the same.
    it('texts of every WebSocket frame size arrive intact, framed once per broadcast', async () => {
      const polling = await cluster.client(1, '/', { transports: ['polling'] });
      const receivers = [...clients, polling];
      const texts = [];
      for (let n = 100; n < 135; n++) texts.push('a'.repeat(n));
      for (let n = 65500; n < 65540; n++) texts.push('b'.repeat(n));
      texts.push('é'.repeat(70), '😀'.repeat(40), 'ü'.repeat(33000), `${'x'.repeat(65515)}é😀`);
      // Which writes carried a pre-built frame, on the sender's server and on another.
      const framed = [0, 1].map((i) => {
        const socket = cluster.ios[i].of('/').sockets.get(clients[i].id);
        const writes = [];
        const original = socket.client.writeToEngine;
        socket.client.writeToEngine = function (encoded, opts) {
          writes.push(opts.wsPreEncodedFrame !== undefined);
          return original.call(this, encoded, opts);
        };
        return { writes, restore: () => (socket.client.writeToEngine = original) };
      });
      const seen = receivers.map((client) => record(client, 'frame'));
      try {
        for (const text of texts) cluster.ios[0].emit('frame', text);
        for (const client of receivers) await barrier(cluster.ios[0], client);
      } finally {
        for (const client of receivers) client.off('frame');
        for (const { restore } of framed) restore();
        polling.disconnect();
      }
      for (const [i, got] of seen.entries()) {
        assert.equal(got.length, texts.length, `client ${i} got every text`);
        for (const [k, [text]] of got.entries()) assert.ok(text === texts[k], `client ${i}: text ${k} arrived intact`);
      }
      for (const [i, { writes }] of framed.entries()) {
        assert.ok(writes.length >= texts.length, `server ${i} wrote every text`);
        assert.ok(writes.slice(0, texts.length).every(Boolean), `server ${i} framed each text once for all sockets`);
      }
    });

    it('binary payloads, nested and large, arrive as Buffers', async () => {
      const large = Buffer.alloc(2 * 1024 * 1024);
      for (let i = 0; i < large.length; i++) large[i] = i % 251;
      const payload = { list: [Buffer.from([0, 1, 255]), { deep: Buffer.from('hello') }], large };
      const [args] = await Promise.all([
        waitFor(clients[2], 'bin', 'the binary broadcast on server 2'),
        cluster.ios[0].emit('bin', payload, Buffer.from([9])),
      ]);
      const [received, tail] = args;
      assert.ok(Buffer.isBuffer(received.list[0]), 'nested Buffer stays a Buffer');
      assert.deepEqual([...received.list[0]], [0, 1, 255]);
      assert.equal(received.list[1].deep.toString(), 'hello');
      assert.ok(received.large.equals(large), 'the 2 MiB Buffer arrives byte for byte');
      assert.deepEqual([...tail], [9]);
    });

    it('onAnyOutgoing fires for packets that came from another server', async () => {
      const remote = cluster.ios[2].of('/').sockets.get(clients[2].id);
      const outgoing = [];
      const listener = (...args) => outgoing.push(args);
      remote.onAnyOutgoing(listener);
      try {
        await deliveries('watched', () => cluster.ios[0].emit('watched', { n: 1 }, Buffer.from('b')));
      } finally {
        remote.offAnyOutgoing(listener);
      }
      const watched = outgoing.filter(([event]) => event === 'watched');
      assert.equal(watched.length, 1);
      assert.deepEqual(watched[0][1], { n: 1 });
      assert.ok(Buffer.isBuffer(watched[0][2]));
    });

    // Broadcasts and other work sent in one turn travel together and are drained together (the
    // broadcasts in flat columns, the rest as objects): they must still be handled in send order.
    it('broadcasts and server-side emits from one turn are handled in the order they were sent', async () => {
      const receiver = cluster.ios[2];
      const socket = receiver.of('/').sockets.get(clients[2].id);
      const handled = [];
      const onOutgoing = (event) => {
        if (event.startsWith('in-order')) handled.push(event);
      };
      const onServerSideEmit = (label) => handled.push(label);
      socket.onAnyOutgoing(onOutgoing);
      receiver.on('in-order-sse', onServerSideEmit);
      try {
        await deliveries('in-order-1', () => {
          const sender = cluster.ios[0];
          sender.emit('in-order-1');
          sender.serverSideEmit('in-order-sse', 'sse-a');
          sender.emit('in-order-2');
          sender.serverSideEmit('in-order-sse', 'sse-b');
          sender.emit('in-order-3');
        });
      } finally {
        socket.offAnyOutgoing(onOutgoing);
        receiver.off('in-order-sse', onServerSideEmit);
      }
      assert.deepEqual(handled, ['in-order-1', 'sse-a', 'in-order-2', 'sse-b', 'in-order-3']);
    });
  });
}

describe('namespaces', () => {
  let cluster;
  const parents = []; // io.of(regex) makes a new parent each call: keep the ones with children
  before(async () => {
    cluster = await startCluster(2, {
      setup: (io) => parents.push(io.of(/^\/dyn-\d+$/)),
    });
    await Promise.all(cluster.ios.map((io) => io.of('/chat').adapter.init()));
  });
  after(() => cluster.close());

  it('a custom namespace crosses servers and never leaks into another namespace', async () => {
    const root = await cluster.client(1, '/');
    const chat = await cluster.client(1, '/chat');
    const rootSeen = record(root, 'ev');
    const chatSeen = record(chat, 'ev');
    cluster.ios[0].of('/chat').emit('ev', 'chat');
    cluster.ios[0].emit('ev', 'root');
    await barrier(cluster.ios[0], root);
    await barrier(cluster.ios[0], chat, '/chat');
    assert.deepEqual(rootSeen, [['root']]);
    assert.deepEqual(chatSeen, [['chat']]);
  });

  it('dynamic namespaces cross servers, from the child and from the parent', async () => {
    const here = await cluster.client(0, '/dyn-7');
    const there = await cluster.client(1, '/dyn-7');
    await Promise.all(cluster.ios.map((io) => io.of('/dyn-7').adapter.init()));
    const seen = record(there, 'dyn');
    const seenHere = record(here, 'dyn');
    cluster.ios[0].of('/dyn-7').emit('dyn', 'child');
    parents[0].emit('dyn', 'parent');
    await barrier(cluster.ios[0], there, '/dyn-7');
    assert.deepEqual(seen, [['child'], ['parent']]);
    assert.deepEqual(seenHere, [['child'], ['parent']]);
  });
});

describe('a custom parser (socket.io-msgpack-parser)', () => {
  const parser = require('socket.io-msgpack-parser');
  let cluster;
  before(async () => {
    cluster = await startCluster(2, { serverOptions: { parser } });
  });
  after(() => cluster.close());

  it('carries events and binary between servers', async () => {
    const client = await cluster.client(1, '/', { parser });
    const [args] = await Promise.all([
      waitFor(client, 'packed', 'the msgpack-encoded broadcast'),
      cluster.ios[0].emit('packed', { text: 'hé', bytes: Buffer.from([1, 2, 3]) }),
    ]);
    assert.equal(args[0].text, 'hé');
    assert.deepEqual([...args[0].bytes], [1, 2, 3]);
  });
});
