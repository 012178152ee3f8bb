'use strict';
// serverCount() follows servers that start, stop cleanly or die; requests do not wait on the gone.
const { describe, it } = require('node:test');
const assert = require('node:assert/strict');
const { startCluster, uniqueName, within, eventually, forkServer } = require('./helpers');

const FAST_HEARTBEATS = { heartbeatInterval: 200, heartbeatTimeout: 1000 };
const count = (io) => io.of('/').adapter.serverCount();

describe('membership', () => {
  it('serverCount rises as servers start and falls at once when one closes', async () => {
    const cluster = await startCluster(2, { adapterOptions: FAST_HEARTBEATS });
    try {
      await eventually(async () => (await count(cluster.ios[0])) === 2, 'server 0 to count 2 servers');
      const third = await forkServer(cluster.exchangeName, FAST_HEARTBEATS);
      try {
        await eventually(async () => (await count(cluster.ios[0])) === 3, 'server 0 to count the new server');
        await eventually(async () => (await count(cluster.ios[1])) === 3, 'server 1 to count the new server');
        third.child.send({ close: true });
        // Well within the heartbeat timeout: the goodbye, not silence, removed it.
        await eventually(async () => (await count(cluster.ios[0])) === 2, 'server 0 to hear the goodbye', 700);
      } finally {
        third.child.kill('SIGKILL');
      }
    } finally {
      await cluster.close();
    }
  });

  it('a server killed without closing is dropped after the heartbeat timeout', async () => {
    const cluster = await startCluster(1, { adapterOptions: FAST_HEARTBEATS });
    const victim = await forkServer(cluster.exchangeName, FAST_HEARTBEATS);
    try {
      await eventually(async () => (await count(cluster.ios[0])) === 2, 'the victim to be counted');
      victim.child.kill('SIGKILL');
      await eventually(async () => (await count(cluster.ios[0])) === 1, 'the dead server to be dropped', 5000);
    } finally {
      victim.child.kill('SIGKILL');
      await cluster.close();
    }
  });

  it('a request waiting on servers that leave ends without the full timeout, saying which left', async () => {
    const exchangeName = uniqueName('leave');
    const cluster = await startCluster(2, {
      exchangeName,
      adapterOptions: { ...FAST_HEARTBEATS, requestsTimeout: 30000 },
      setup: (io, i) => io.on('work', (reply) => (i === 1 ? undefined : reply(`done by ${i}`))),
    });
    const leaver = await forkServer(exchangeName, FAST_HEARTBEATS); // answers "whoami" only
    try {
      await eventually(async () => (await count(cluster.ios[0])) === 3, 'three servers counted');
      const pending = new Promise((resolve) => cluster.ios[0].serverSideEmit('work', (...args) => resolve(args)));
      // Server 1 never answers "work"; the forked server does not listen for it either. Both leave.
      await cluster.ios[1].close();
      leaver.child.kill('SIGKILL');
      const [err, got] = await within(pending, 'the request to end once both silent servers left', 10000);
      assert.ok(err, 'an answer missing two servers is not presented as complete');
      assert.equal(err.code, 'INCOMPLETE');
      assert.match(err.message, /serverSideEmit\(\) is incomplete/);
      assert.match(err.message, /closed before answering/, 'server 1 said goodbye');
      assert.match(err.message, new RegExp(`server ${leaver.uid} stopped sending heartbeats before answering`));
      assert.match(err.message, /\(0 of 2 servers answered\)/);
      assert.deepEqual(got, [], 'neither answered');
    } finally {
      leaver.child.kill('SIGKILL');
      await cluster.close();
    }
  });

  it('serverCount counts only the servers that serve the namespace', async () => {
    const cluster = await startCluster(2, { adapterOptions: FAST_HEARTBEATS });
    try {
      await within(cluster.ios[1].of('/only-on-1').adapter.init(), 'the namespace to be bound');
      await within(cluster.ios[0].of('/only-on-1').adapter.init(), 'the namespace to be bound');
      await eventually(async () => (await cluster.ios[0].of('/only-on-1').adapter.serverCount()) === 2, 'both counted');
      await cluster.ios[1].of('/only-on-1').adapter.close();
      await eventually(
        async () => (await cluster.ios[0].of('/only-on-1').adapter.serverCount()) === 1,
        'the server that closed the namespace to stop counting for it',
      );
      assert.equal(await count(cluster.ios[0]), 2, 'it still serves /');
    } finally {
      await cluster.close();
    }
  });
});
