'use strict';
// Broker restarts, failover between the nodes of a RabbitMQ cluster, and TLS — on private nodes
// this test starts itself, so the shared broker is never stopped.
const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const http = require('node:http');
const { Server } = require('socket.io');
const { io: connectClient } = require('socket.io-client');
const helpers = require('./helpers');
const { createAdapter, uniqueName, waitFor, within, eventually, record } = helpers;
const { PrivateNode, makeCertificates } = require('./private-broker');
const { TcpProxy } = require('./tcp-proxy');

// The shared fast timings; a private node that restarts refuses connections for a while, so
// attempts give up sooner and start a little later.
const FAST = { ...helpers.FAST, reconnectDelay: 100, connectTimeout: 2000 };

async function serverOn(urls, exchangeName, extra = {}) {
  const httpServer = http.createServer();
  const io = new Server(httpServer);
  io.adapter(createAdapter(urls, { exchangeName, ...FAST, ...extra }));
  const adapter = io.of('/').adapter;
  adapter.on('error', () => {}); // connection attempts to a stopped node are expected here
  await within(adapter.init(), 'the adapter to bind', 15000);
  await new Promise((resolve) => httpServer.listen(0, '127.0.0.1', resolve));
  const client = connectClient(`http://127.0.0.1:${httpServer.address().port}`, {
    transports: ['websocket'],
    reconnection: false,
    forceNew: true,
  });
  await waitFor(client, 'connect', 'a client to connect');
  return {
    io,
    adapter,
    client,
    close: () => {
      client.disconnect();
      return io.close();
    },
  };
}

async function crosses(from, to, label) {
  const [got] = await Promise.all([waitFor(to.client, 'cross', `"${label}" to cross`, 10000), from.io.emit('cross', label)]);
  assert.deepEqual(got, [label]);
}

describe('a RabbitMQ cluster of two private nodes', { timeout: 240000 }, () => {
  let first;
  let second;
  before(async () => {
    first = await PrivateNode.create('a');
    second = await PrivateNode.create('b');
    await Promise.all([first.start(), second.start()]);
    await second.joinCluster(first);
  });
  after(async () => {
    await Promise.all([first?.destroy(), second?.destroy()]);
  });

  it('servers on different nodes exchange traffic; when a node stops they fail over and traffic resumes', async () => {
    const exchangeName = uniqueName('failover');
    const a = await serverOn([first.url, second.url], exchangeName);
    const b = await serverOn([second.url, first.url], exchangeName);
    try {
      await eventually(async () => (await a.adapter.serverCount()) === 2, 'A to count B across the cluster', 10000);
      await crosses(a, b, 'node a -> node b');
      await crosses(b, a, 'node b -> node a');

      const lost = waitFor(a.adapter, 'disconnect', 'A to lose node a', 20000);
      const back = waitFor(a.adapter, 'reconnect', 'A to fail over to node b', 20000);
      await first.stop();
      await lost;
      const seen = record(b.client, 'during');
      a.io.emit('during', 'buffered while failing over');
      await back;
      await eventually(() => seen.length === 1, 'the emit made during the failover to arrive', 10000);
      await eventually(async () => (await b.adapter.serverCount()) === 2, 'B to count A again', 10000);
      await crosses(a, b, 'after failover a -> b');
      await crosses(b, a, 'after failover b -> a');
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });

  it('a server that knows only one node reconnects when that node is restarted', async () => {
    const exchangeName = uniqueName('restart');
    if (
      !(await first.ctl('status').then(
        () => true,
        () => false,
      ))
    )
      await first.start();
    const onlyFirst = await serverOn([first.url], exchangeName);
    const onSecond = await serverOn([second.url], exchangeName);
    try {
      await crosses(onSecond, onlyFirst, 'before the restart');
      const lost = waitFor(onlyFirst.adapter, 'disconnect', 'the restart to drop the connection', 20000);
      await first.stop();
      await lost;
      const back = waitFor(onlyFirst.adapter, 'reconnect', 'the reconnect after the restart', 60000);
      await first.start();
      await back;
      await eventually(async () => (await onSecond.adapter.serverCount()) === 2, 'the restarted server counted again', 10000);
      await crosses(onSecond, onlyFirst, 'after the restart');
      await crosses(onlyFirst, onSecond, 'after the restart, the other way');
    } finally {
      await Promise.all([onlyFirst.close(), onSecond.close()]);
    }
  });
});

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

describe('amqps:// with a self-signed certificate', { timeout: 120000 }, () => {
  let certs;
  let node;
  before(async () => {
    certs = await makeCertificates();
    node = await PrivateNode.create('tls', { tls: certs });
    await node.start();
  });
  after(async () => {
    await node?.destroy();
    if (certs) require('node:fs').rmSync(certs.dir, { recursive: true, force: true });
  });

  it('connects over TLS when given the CA, and traffic crosses', async () => {
    const exchangeName = uniqueName('tls');
    const a = await serverOn(node.url, exchangeName, { tls: { ca: certs.caPem } });
    const b = await serverOn(node.url, exchangeName, { tls: { ca: certs.caPem } });
    try {
      await crosses(a, b, 'over TLS');
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });

  it('refuses a broker whose certificate it cannot verify, with a clear error', async () => {
    const io = new Server(http.createServer());
    io.adapter(createAdapter(node.url, { exchangeName: uniqueName('tls-bad'), ...FAST }));
    const adapter = io.of('/').adapter;
    const errors = [];
    adapter.on('error', (err) => errors.push(err));
    const outcome = await within(
      adapter.init().catch((err) => err),
      'init() to reject',
      15000,
    );
    assert.ok(outcome instanceof Error);
    assert.match(outcome.message, /certificate|UnknownIssuer|invalid peer/i);
    await io.close();
  });
});

describe('connection state recovery on a broker without streams', { timeout: 120000 }, () => {
  let node;
  after(async () => {
    await node?.destroy();
  });

  it('reports one clear error, recovers nobody, and everything else works', async () => {
    // A fresh node with every feature flag of RabbitMQ 3.10 but stream_queue: no streams.
    const flags = [
      'classic_mirrored_queue_version',
      'implicit_default_bindings',
      'maintenance_mode_status',
      'quorum_queue',
      'user_limits',
      'virtual_host_metadata',
    ];
    node = await PrivateNode.create('nostream', { featureFlags: flags });
    await node.start();
    const flagStates = await node.ctl('list_feature_flags', 'name', 'state', '-q');
    assert.match(flagStates, /stream_queue\s+disabled/, 'the node really has no streams');
    const exchangeName = uniqueName('nostream');
    const servers = [];
    const errors = [];
    try {
      for (let i = 0; i < 2; i++) {
        const httpServer = http.createServer();
        const io = new Server(httpServer, { connectionStateRecovery: { maxDisconnectionDuration: 30000 } });
        io.adapter(createAdapter(node.url, { exchangeName, ...FAST }));
        io.of('/').adapter.on('error', (err) => errors.push([i, err.message]));
        await within(io.of('/').adapter.init(), `server ${i} to bind`, 15000);
        await new Promise((resolve) => httpServer.listen(0, '127.0.0.1', resolve));
        servers.push({ io, httpServer });
      }
      await eventually(() => errors.length === 2, 'one error per server');
      for (const [, message] of errors) {
        assert.match(message, /connection state recovery is off: .*stream/, message);
      }
      const port = (i) => servers[i].httpServer.address().port;
      const client = connectClient(`http://127.0.0.1:${port(0)}`, { transports: ['websocket'], forceNew: true, reconnection: false });
      await waitFor(client, 'connect', 'a client');
      const got = waitFor(client, 'still', 'a broadcast from the other server');
      servers[1].io.emit('still', 'works');
      const [value, offset] = await got;
      assert.equal(value, 'works');
      // Offsets still go out (Socket.IO's clients keep the last one), but nothing is logged: a
      // client asking to be recovered connects as a new one, at once.
      const started = Date.now();
      const again = connectClient(`http://127.0.0.1:${port(1)}`, {
        transports: ['websocket'],
        forceNew: true,
        reconnection: false,
        auth: { pid: client._pid ?? 'pid', offset },
      });
      await waitFor(again, 'connect', 'a client asking to be recovered');
      assert.equal(servers[1].io.of('/').sockets.get(again.id).recovered, false);
      assert.ok(Date.now() - started < 2000);
      assert.equal(servers[0].io.of('/').adapter.stats().sessionsPersisted, 0, 'no sessions written');
      assert.equal(errors.length, 2, 'reported once per server, not per publish');
      client.disconnect();
      again.disconnect();
    } finally {
      await Promise.all(servers.map(({ io }) => io.close()));
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
