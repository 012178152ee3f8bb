'use strict';
// The broker drops every server's connection at once: queues outlive the connections, so what is
// emitted during the outage waits for its receivers, arrives once each and in order; nothing the
// broker holds is left unacknowledged.
const { describe, it } = require('node:test');
const assert = require('node:assert/strict');
const amqplib = require('amqplib');
const { AMQP_URL, startCluster, waitFor, eventually, record, barrier, closeBrokerConnections, brokerFootprint } = require('./helpers');

const FAST = { heartbeatInterval: 200, heartbeatTimeout: 1000, reconnectDelay: 50, reconnectDelayMax: 500 };

function rabbitQueues(fragment) {
  const { execFileSync } = require('child_process');
  return execFileSync('rabbitmqctl', ['list_queues', 'name', 'messages_ready', 'messages_unacknowledged', '-q'], { encoding: 'utf8', timeout: 20000 })
    .split('\n')
    .filter((line) => line.includes(fragment))
    .map((line) => line.split('\t').map((v, i) => (i === 0 ? v : Number(v))));
}

describe('every server loses the broker at once', () => {
  it('emits in both directions during the outage arrive once each, in order', async () => {
    const cluster = await startCluster(3, { adapterOptions: FAST });
    try {
      const clients = [await cluster.client(0), await cluster.client(1), await cluster.client(2)];
      const fromZero = clients.map((c) => record(c, 'r1'));
      const fromTwo = clients.map((c) => record(c, 'r1z'));
      await eventually(async () => (await cluster.ios[0].of('/').adapter.serverCount()) === 3, 'three servers counted');
      const back = cluster.ios.map((io) => waitFor(io.of('/').adapter, 'reconnect', 'a reconnect', 15000));
      for (const io of cluster.ios) assert.equal(closeBrokerConnections(io.of('/').adapter.uid), 1);
      for (let n = 1; n <= 20; n++) {
        cluster.ios[0].emit('r1', n);
        cluster.ios[2].emit('r1z', n);
      }
      await Promise.all(back);
      const all = Array.from({ length: 20 }, (_, i) => i + 1);
      for (let i = 0; i < 3; i++) {
        await eventually(() => fromZero[i].length >= 20 && fromTwo[i].length >= 20, `client ${i} to get both series`, 15000);
        await barrier(cluster.ios[0], clients[i]);
        await barrier(cluster.ios[2], clients[i]);
        assert.deepEqual(fromZero[i].map(([n]) => n), all, `client ${i}: r1 once each, in order`);
        assert.deepEqual(fromTwo[i].map(([n]) => n), all, `client ${i}: r1z once each, in order`);
      }
      for (const io of cluster.ios) assert.equal(io.of('/').adapter.stats().missed, 0);
    } finally {
      await cluster.close();
    }
  });

  it('20 drops of every server in a row leave the broker footprint as it was; close() deletes the queues', async () => {
    const cluster = await startCluster(2, { adapterOptions: FAST });
    const uids = cluster.ios.map((io) => io.of('/').adapter.uid);
    const footprint = () => uids.map((uid) => brokerFootprint(uid));
    try {
      const before = footprint();
      assert.deepEqual(before.map((f) => f.queues), [1, 1]);
      for (let drop = 0; drop < 20; drop++) {
        const back = cluster.ios.map((io) => waitFor(io.of('/').adapter, 'reconnect', `reconnect after drop ${drop}`, 15000));
        for (const uid of uids) closeBrokerConnections(uid);
        await Promise.all(back);
      }
      await eventually(() => JSON.stringify(footprint()) === JSON.stringify(before), 'the footprint to be as before', 10000);
      for (const io of cluster.ios) assert.equal(io.of('/').adapter.stats().queuesLost, 0, 'the queue survived every drop');
    } finally {
      await cluster.close();
    }
    assert.deepEqual(rabbitQueues(uids[0]).concat(rabbitQueues(uids[1])), [], 'closed servers delete their queues');
  });

  it('a flood of malformed messages is dropped and every queue drains to zero, unacknowledged included', async () => {
    const cluster = await startCluster(3, { adapterOptions: FAST });
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
        () => uids.every((uid) => rabbitQueues(uid).every(([, ready, unacked]) => ready === 0 && unacked === 0)),
        'every queue to be empty, ready and unacknowledged',
        5000,
      );
    } finally {
      await connection.close();
      await cluster.close();
    }
  });
});
