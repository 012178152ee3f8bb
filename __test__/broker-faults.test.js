'use strict';
// Failover between the nodes of a RabbitMQ cluster, TLS, and a broker without streams — on private
// nodes this test starts itself, so the shared broker is never stopped. Broker restarts are in
// broker-restart.test.js.
const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const http = require('node:http');
const { Server } = require('socket.io');
const { io: connectClient } = require('socket.io-client');
const { createAdapter, uniqueName, waitFor, within, eventually, record } = require('./helpers');
const { PrivateNode, makeCertificates } = require('./private-broker');
const { FAST, serverOn, crosses } = require('./fault-servers');

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
