'use strict';
// Full restarts of the broker (a private node this test starts itself, so the shared broker is
// never stopped): what a restart loses and reports, a server started before its broker, and the
// recovery log's durability across a restart.
const { describe, it, after } = require('node:test');
const assert = require('node:assert/strict');
const http = require('node:http');
const { Server } = require('socket.io');
const { io: connectClient } = require('socket.io-client');
const { createAdapter, uniqueName, waitFor, within, eventually, record } = require('./helpers');
const { PrivateNode } = require('./private-broker');
const { TcpProxy } = require('./tcp-proxy');
const { FAST, serverOn } = require('./fault-servers');

describe('a full restart of the broker', { timeout: 180000 }, () => {
  let node;
  let proxy;
  after(async () => {
    await proxy?.close();
    await node?.destroy();
  });

  it("loses what a cut-off server's queue held, and that server reports exactly that gap", async () => {
    node = await PrivateNode.create('restart-gap');
    await node.start();
    proxy = await TcpProxy.start(node.port);
    const exchangeName = uniqueName('gap');
    // No heartbeats during the test: what waits in B's queue is then only A's emits. The queue
    // must outlive the cut for as long as the test looks at it (queueExpiry defaults to 10 s with
    // these reconnect settings).
    const quiet = { heartbeatInterval: 60000, heartbeatTimeout: 180000, queueExpiry: 120000 };
    const a = await serverOn(node.url, exchangeName, quiet);
    const b = await serverOn(proxy.url, exchangeName, quiet); // B goes through the proxy
    const missed = [];
    b.adapter.on('missed', (info) => missed.push(info));
    const seen = record(b.client, 'n');
    const bQueue = async () => {
      const line = (await node.ctl('list_queues', 'name', 'messages_ready', 'messages_unacknowledged', '-q'))
        .split('\n')
        .find((l) => l.includes(b.adapter.uid));
      assert.ok(line, `B's queue (${b.adapter.uid}) exists`);
      const [, ready, unacked] = line.split('\t').map(Number);
      return { ready, unacked };
    };
    try {
      await eventually(async () => (await a.adapter.serverCount()) === 2, 'A to count B', 10000);
      a.io.emit('n', 0);
      await eventually(() => seen.length === 1, 'the first emit to reach B', 10000);
      // B acknowledges once its queue is quiet; after that nothing of A's is left in it.
      await eventually(async () => {
        const { ready, unacked } = await bQueue();
        return ready === 0 && unacked === 0;
      }, "B's queue to be empty and fully acknowledged");

      // B is cut off; what A emits now waits in B's queue on the broker.
      const bLost = waitFor(b.adapter, 'disconnect', 'B to lose the broker', 10000);
      await proxy.cut();
      await bLost;
      const publishedBefore = a.adapter.stats().published;
      for (let n = 1; n <= 10; n++) {
        a.io.emit('n', n);
        await new Promise(setImmediate); // separate turns, so they need not leave as one batch
      }
      const held = await eventually(
        async () => {
          const { ready } = await bQueue();
          const { buffered, published } = a.adapter.stats();
          return buffered === 0 && ready > 0 && ready === published - publishedBefore && ready;
        },
        "B's queue to hold every AMQP message A published meanwhile",
        10000,
      );

      // The whole broker restarts: its non-durable queues, B's with the held messages, are gone.
      const aLost = waitFor(a.adapter, 'disconnect', 'A to lose the broker', 20000);
      await node.stop();
      await aLost;
      const aBack = waitFor(a.adapter, 'reconnect', 'A to reconnect after the restart', 60000);
      const bBack = waitFor(b.adapter, 'reconnect', 'B to reconnect after the restart', 60000);
      const bErrors = [];
      b.adapter.on('error', (err) => bErrors.push(err));
      await node.start();
      await proxy.restore();
      await Promise.all([aBack, bBack]);
      assert.equal(b.adapter.stats().queuesLost, 1, 'B says its queue was lost');
      assert.ok(
        bErrors.some((err) => /queue/i.test(err.message)),
        `an error event says the queue was lost: ${bErrors.map((e) => e.message)}`,
      );

      await eventually(async () => (await a.adapter.serverCount()) === 2, 'A to count B again', 10000);
      a.io.emit('n', 11);
      await eventually(() => seen.length === 2, 'the emit after the restart to reach B', 10000);
      assert.deepEqual(
        seen.map(([n]) => n),
        [0, 11],
        'what the broker lost is not delivered later',
      );
      await eventually(() => missed.length >= 1, 'B to report the gap', 10000);
      assert.deepEqual(missed, [{ count: held, from: a.adapter.uid, routingKey: 'nsp:/' }], 'one gap, of what the queue held, from A');
      assert.equal(b.adapter.stats().missed, held);
      assert.equal(a.adapter.stats().missed, 0, 'A missed nothing');
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });
});

describe('a server started before its broker', { timeout: 120000 }, () => {
  let node;
  after(async () => {
    await node?.destroy();
  });

  it('reports the errors, then connects by itself: reconnect event, readyCallback, traffic', async () => {
    node = await PrivateNode.create('late');
    const exchangeName = uniqueName('late');
    const httpServer = http.createServer();
    const early = new Server(httpServer);
    let readyCalls = 0;
    early.adapter(createAdapter(node.url, { exchangeName, ...FAST, readyCallback: () => readyCalls++ }));
    const adapter = early.of('/').adapter;
    const errors = [];
    adapter.on('error', (err) => errors.push(err));
    try {
      const refused = await within(
        adapter.init().catch((err) => err),
        'init() to be refused',
        15000,
      );
      assert.ok(refused instanceof Error, 'init() rejects while the broker is down');
      assert.ok(errors.length >= 1, 'an error event says why');
      assert.equal(readyCalls, 0);

      const connected = waitFor(adapter, 'reconnect', 'the adapter to connect once the broker is up', 60000);
      await node.start();
      await connected;
      await eventually(() => readyCalls === 1, 'readyCallback once the namespace is bound', 10000);

      await new Promise((resolve) => httpServer.listen(0, '127.0.0.1', resolve));
      const client = connectClient(`http://127.0.0.1:${httpServer.address().port}`, {
        transports: ['websocket'],
        reconnection: false,
        forceNew: true,
      });
      await waitFor(client, 'connect', 'a client of the early server');
      const late = await serverOn(node.url, exchangeName);
      try {
        const [got] = await Promise.all([
          waitFor(client, 'late', 'a broadcast from a server started later', 10000),
          late.io.emit('late', 'ok'),
        ]);
        assert.deepEqual(got, ['ok']);
        assert.equal(readyCalls, 1, 'readyCallback is called once');
      } finally {
        client.disconnect();
        await late.close();
      }
    } finally {
      await early.close();
    }
  });
});

describe('connection state recovery across a full broker restart', { timeout: 180000 }, () => {
  let node;
  let webProxy;
  after(async () => {
    await webProxy?.close();
    await node?.destroy();
  });

  it('the recovery log is durable: a client moved after the restart is recovered from an offset written before it', async () => {
    node = await PrivateNode.create('recovery-restart');
    await node.start();
    const exchangeName = uniqueName('recrestart');
    const servers = [];
    for (let i = 0; i < 2; i++) {
      const httpServer = http.createServer();
      const io = new Server(httpServer, { connectionStateRecovery: { maxDisconnectionDuration: 60000 } });
      io.adapter(createAdapter(node.url, { exchangeName, ...FAST }));
      io.of('/').adapter.on('error', () => {}); // the restart's connection errors are expected
      io.on('connection', (socket) => {
        if (!socket.recovered) socket.join('r');
      });
      await within(io.of('/').adapter.init(), `server ${i} to bind`, 15000);
      await new Promise((resolve) => httpServer.listen(0, '127.0.0.1', resolve));
      servers.push({ io, port: httpServer.address().port, adapter: io.of('/').adapter });
    }
    const [a, b] = servers;
    // The client reaches server a through a proxy that will send its reconnect to server b.
    webProxy = await TcpProxy.start(a.port);
    const client = connectClient(`http://127.0.0.1:${webProxy.port}`, {
      transports: ['websocket'],
      forceNew: true,
      reconnectionDelay: 50,
      reconnectionDelayMax: 50,
      randomizationFactor: 0,
    });
    try {
      await waitFor(client, 'connect', 'the client to connect to server a');
      await eventually(async () => (await a.adapter.serverCount()) === 2, 'two servers counted', 10000);
      const seen = record(client, 'm');
      b.io.to('r').emit('m', 'before the restart');
      await eventually(() => seen.length === 1, 'the first packet', 10000);
      const offsetBefore = client._lastOffset;

      const back = servers.map(({ adapter }, i) => waitFor(adapter, 'reconnect', `server ${i} to reconnect after the restart`, 60000));
      await node.stop();
      await node.start();
      await Promise.all(back);
      // The stream's process starts after the node accepts connections: the servers try again
      // until the log is open, and say when it is.
      await eventually(() => servers.every(({ adapter }) => adapter.stats().recoveryLogReady), 'the recovery log to be open again', 20000);

      // Now the client moves: server a persists its session, server b sends it something.
      webProxy.targetPort = b.port;
      webProxy.refuse();
      const persisted = a.adapter.stats().sessionsPersisted;
      const gone = waitFor(client, 'disconnect', 'the client to lose server a');
      webProxy.drop();
      await gone;
      await eventually(() => a.adapter.stats().sessionsPersisted > persisted, 'server a to persist the session', 10000);
      b.io.to('r').emit('m', 'while it moved');
      const reconnected = waitFor(client, 'connect', 'the client to reconnect to server b', 15000);
      await webProxy.restore();
      await reconnected;
      assert.equal(client.recovered, true, 'recovered from an offset the log kept across the restart');
      assert.equal(client._lastOffset === offsetBefore, false, 'the missed packet brought a newer offset');
      assert.deepEqual(
        seen.map(([text]) => text),
        ['before the restart', 'while it moved'],
      );
      assert.equal(b.adapter.stats().sessionsRestored, 1);
    } finally {
      client.disconnect();
      await Promise.all(servers.map(({ io }) => io.close()));
    }
  });
});
