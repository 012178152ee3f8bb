'use strict';
// The broker drops every server's connection at once: queues outlive the connections, so what is
// emitted during the outage waits for its receivers, arrives once each and in order; nothing the
// broker holds is left unacknowledged. The outage is made twice: by the broker closing the
// connections, and by a network cut that also refuses reconnects for 2 s.
const { describe, it } = require('node:test');
const assert = require('node:assert/strict');
const amqplib = require('amqplib');
const { TcpProxy } = require('./tcp-proxy');
const {
  AMQP_URL,
  startCluster,
  waitFor,
  eventually,
  record,
  barrier,
  closeBrokerConnections,
  brokerFootprint,
  brokerQueueDepths,
  FAST,
} = require('./helpers');

// The shared broker's port, for the proxy that stands in front of it.
const BROKER_PORT = Number(new URL(AMQP_URL).port || 5672);

// Three servers, clients on each; every server's broker connection goes down at once (`cutAll`,
// resolved when the outage may end). Server 0 emits r1 1..20 and server 2 r1z 1..20 while they are
// all offline; once `restoreAll` lets them back, every client must get both series once, in order.
async function emitsBothWaysAcross(cluster, { cutAll, restoreAll }) {
  const clients = [await cluster.client(0), await cluster.client(1), await cluster.client(2)];
  const fromZero = clients.map((c) => record(c, 'r1'));
  const fromTwo = clients.map((c) => record(c, 'r1z'));
  await eventually(async () => (await cluster.ios[0].of('/').adapter.serverCount()) === 3, 'three servers counted');
  const adapters = cluster.ios.map((io) => io.of('/').adapter);
  const lost = adapters.map((adapter, i) => waitFor(adapter, 'disconnect', `server ${i} to notice the outage`, 15000));
  const back = adapters.map((adapter, i) => waitFor(adapter, 'reconnect', `server ${i} to reconnect`, 20000));
  await cutAll();
  await Promise.all(lost);
  for (let n = 1; n <= 20; n++) {
    cluster.ios[0].emit('r1', n);
    cluster.ios[2].emit('r1z', n);
  }
  await restoreAll();
  await Promise.all(back);
  const all = Array.from({ length: 20 }, (_, i) => i + 1);
  for (let i = 0; i < 3; i++) {
    await eventually(() => fromZero[i].length >= 20 && fromTwo[i].length >= 20, `client ${i} to get both series`, 15000);
    await barrier(cluster.ios[0], clients[i]);
    await barrier(cluster.ios[2], clients[i]);
    assert.deepEqual(
      fromZero[i].map(([n]) => n),
      all,
      `client ${i}: r1 once each, in order`,
    );
    assert.deepEqual(
      fromTwo[i].map(([n]) => n),
      all,
      `client ${i}: r1z once each, in order`,
    );
  }
  for (const adapter of adapters) {
    assert.equal(adapter.stats().missed, 0, 'no gap reported');
    assert.equal(adapter.stats().queuesLost, 0, 'every queue survived the outage');
  }
}

describe('every server loses the broker at once', () => {
  it('emits in both directions during the outage arrive once each, in order', async () => {
    const cluster = await startCluster(3, { adapterOptions: FAST });
    try {
      await emitsBothWaysAcross(cluster, {
        cutAll: async () => {
          for (const io of cluster.ios) assert.equal(closeBrokerConnections(io.of('/').adapter.uid), 1);
        },
        restoreAll: async () => {},
      });
    } finally {
      await cluster.close();
    }
  });

  it('a 2 s network outage that refuses every reconnect: emits both ways arrive once each, in order', async () => {
    // Every server reaches the broker through one proxy; cutting it drops all their connections at
    // once and refuses new ones until it listens again, while the broker keeps the queues.
    const proxy = await TcpProxy.start(BROKER_PORT);
    const cluster = await startCluster(3, { url: proxy.url, adapterOptions: FAST });
    const refused = cluster.ios.map(() => 0);
    const reconnectedEarly = [];
    cluster.ios.forEach((io, i) => {
      io.of('/').adapter.on('error', () => refused[i]++);
      io.of('/').adapter.on('reconnect', () => proxy.server === null && reconnectedEarly.push(i));
    });
    try {
      await emitsBothWaysAcross(cluster, {
        cutAll: () => proxy.cut(),
        restoreAll: async () => {
          // The outage itself lasts 2 s: that is the fault being tested, not a wait for an event.
          await new Promise((resolve) => setTimeout(resolve, 2000));
          await proxy.restore();
        },
      });
      assert.deepEqual(reconnectedEarly, [], 'no server got through while the proxy refused connections');
      refused.forEach((count, i) => {
        assert.ok(count >= 1, `server ${i} reported its refused reconnects (${count})`);
      });
    } finally {
      await cluster.close();
      await proxy.close();
    }
  });

  it('50 drops of every server in a row leave the broker footprint as it was; close() deletes the queues', async () => {
    // The drops are network cuts through a proxy (a rabbitmqctl per drop would take seconds each).
    const proxy = await TcpProxy.start(BROKER_PORT);
    const cluster = await startCluster(2, { url: proxy.url, adapterOptions: FAST });
    const uids = cluster.ios.map((io) => io.of('/').adapter.uid);
    const footprint = () => uids.map((uid) => brokerFootprint(uid));
    try {
      for (const io of cluster.ios) io.of('/').adapter.on('error', () => {}); // refused attempts, expected
      const before = footprint();
      assert.deepEqual(
        before.map((f) => f.queues),
        [1, 1],
      );
      for (let drop = 0; drop < 50; drop++) {
        const back = cluster.ios.map((io) => waitFor(io.of('/').adapter, 'reconnect', `reconnect after drop ${drop}`, 15000));
        await proxy.cut();
        await proxy.restore();
        await Promise.all(back);
      }
      await eventually(() => JSON.stringify(footprint()) === JSON.stringify(before), 'the footprint to be as before', 10000);
      for (const io of cluster.ios) {
        assert.equal(io.of('/').adapter.stats().reconnects, 50, 'every drop was a reconnect');
        assert.equal(io.of('/').adapter.stats().queuesLost, 0, 'the queue survived every drop');
      }
    } finally {
      await cluster.close();
      await proxy.close();
    }
    assert.deepEqual(brokerQueueDepths(uids[0]).concat(brokerQueueDepths(uids[1])), [], 'closed servers delete their queues');
  });

  it('a flood of malformed messages is dropped and every queue drains to zero, unacknowledged included', async () => {
    // Acks go out once a queue has been quiet for 50 ms: with the default heartbeat interval the
    // queues are quiet after the flood (FAST heartbeats would keep a message or two in flight).
    const cluster = await startCluster(3, { adapterOptions: { ...FAST, heartbeatInterval: 5000, heartbeatTimeout: 15000 } });
    const connection = await amqplib.connect(AMQP_URL);
    try {
      const channel = await connection.createChannel();
      const flood = 3000;
      for (let i = 0; i < flood; i++) channel.publish(cluster.exchangeName, 'cluster', Buffer.from(`garbage ${i}`));
      await channel.close();
      for (const io of cluster.ios) {
        await eventually(() => io.of('/').adapter.stats().malformed === flood, 'every garbage message counted', 15000);
      }
      const uids = cluster.ios.map((io) => io.of('/').adapter.uid);
      await eventually(
        () => uids.every((uid) => brokerQueueDepths(uid).every(([, ready, unacked]) => ready === 0 && unacked === 0)),
        'every queue to be empty, ready and unacknowledged',
        5000,
      );
    } finally {
      await connection.close();
      await cluster.close();
    }
  });
});
