'use strict';
// Servers and namespaces never steal each other's messages (the old package's queue names did).
const { describe, it } = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { fork } = require('node:child_process');
const { AMQP_URL, startCluster, uniqueName, waitFor, record, barrier } = require('./helpers');

describe('isolation', () => {
  it('two servers in one process with the same options each get every message', async () => {
    // Same exchange, same queuePrefix, same (default) instanceName = same hostname.
    const cluster = await startCluster(3);
    try {
      const [a, b] = [await cluster.client(1), await cluster.client(2)];
      const seenA = record(a, 'n');
      const seenB = record(b, 'n');
      for (let i = 0; i < 20; i++) cluster.ios[0].emit('n', i);
      await barrier(cluster.ios[0], a);
      await barrier(cluster.ios[0], b);
      const expected = Array.from({ length: 20 }, (_, i) => [i]);
      assert.deepEqual(seenA, expected);
      assert.deepEqual(seenB, expected);
    } finally {
      await cluster.close();
    }
  });

  it('a server in another process receives and sends broadcasts', async (t) => {
    const cluster = await startCluster(1);
    const child = fork(path.join(__dirname, 'fixtures', 'server-process.js'), [AMQP_URL, cluster.exchangeName], {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    t.after(() => child.kill('SIGKILL'));
    try {
      const [ready] = await waitFor(child, 'message', 'the child server to start');
      assert.ok(ready.ready, `child failed: ${JSON.stringify(ready)}`);
      const remoteClient = await connectTo(ready.port);
      const localClient = await cluster.client(0);
      try {
        const [got] = await Promise.all([
          waitFor(remoteClient, 'from-parent', 'the broadcast to reach the other process'),
          cluster.ios[0].emit('from-parent', 'p'),
        ]);
        assert.deepEqual(got, ['p']);
        const [back] = await Promise.all([
          waitFor(localClient, 'from-child', 'the child broadcast to reach this process'),
          child.send({ emit: 'from-child', args: ['c'] }),
        ]);
        assert.deepEqual(back, ['c']);
      } finally {
        remoteClient.disconnect();
      }
    } finally {
      await cluster.close();
    }
  });

  it("two namespaces on one server never receive each other's messages", async () => {
    const cluster = await startCluster(2, { exchangeName: uniqueName('nsp') });
    try {
      await Promise.all(cluster.ios.map((io) => io.of('/other').adapter.init()));
      const root = await cluster.client(1, '/');
      const other = await cluster.client(1, '/other');
      const rootSeen = record(root, 'm');
      const otherSeen = record(other, 'm');
      for (let i = 0; i < 5; i++) {
        cluster.ios[0].emit('m', `root-${i}`);
        cluster.ios[0].of('/other').emit('m', `other-${i}`);
      }
      await barrier(cluster.ios[0], root);
      await barrier(cluster.ios[0], other, '/other');
      assert.deepEqual(
        rootSeen.map(([m]) => m),
        ['root-0', 'root-1', 'root-2', 'root-3', 'root-4'],
      );
      assert.deepEqual(
        otherSeen.map(([m]) => m),
        ['other-0', 'other-1', 'other-2', 'other-3', 'other-4'],
      );
    } finally {
      await cluster.close();
    }
  });
});

async function connectTo(port) {
  const { io } = require('socket.io-client');
  const client = io(`http://127.0.0.1:${port}`, { transports: ['websocket'], reconnection: false, forceNew: true });
  await waitFor(client, 'connect', `a client to connect to port ${port}`);
  return client;
}
