'use strict';
// Losing the broker connection: reconnect, restore bindings, resume traffic, keep what was emitted
// meanwhile (bounded), and say so. Faults are injected by closing only this test's connections.
const { describe, it } = require('node:test');
const assert = require('node:assert/strict');
const { startCluster, waitFor, within, eventually, record, closeBrokerConnections, brokerFootprint, FAST } = require('./helpers');

describe('reconnection', () => {
  it('reconnects by itself, restores bindings and resumes traffic both ways', async () => {
    const cluster = await startCluster(2, { adapterOptions: FAST });
    try {
      const [a, b] = cluster.ios;
      const adapterB = b.of('/').adapter;
      const clientA = await cluster.client(0);
      const clientB = await cluster.client(1);
      await eventually(async () => (await a.of('/').adapter.serverCount()) === 2, 'both servers counted');

      const lost = waitFor(adapterB, 'disconnect', 'the disconnect event');
      const back = waitFor(adapterB, 'reconnect', 'the reconnect event');
      assert.equal(closeBrokerConnections(adapterB.uid), 1);
      const [error] = await lost;
      assert.match(error.message, /reconnecting/);
      await back;

      const [toB] = await Promise.all([waitFor(clientB, 'after', 'a broadcast from A to reach B'), a.emit('after', 'a->b')]);
      assert.deepEqual(toB, ['a->b']);
      const [toA] = await Promise.all([waitFor(clientA, 'after', 'a broadcast from B to reach A'), b.emit('after', 'b->a')]);
      assert.deepEqual(toA, ['b->a']);
      await eventually(async () => (await adapterB.serverCount()) === 2, 'B to count A again');
      assert.equal(adapterB.stats().reconnects, 1);
    } finally {
      await cluster.close();
    }
  });

  it('emits made during the outage are sent in order after reconnecting; local delivery does not wait', async () => {
    const cluster = await startCluster(2, { adapterOptions: { ...FAST, reconnectDelay: 400, reconnectDelayMax: 400 } });
    try {
      const [a, b] = cluster.ios;
      const adapterB = b.of('/').adapter;
      const remoteClient = await cluster.client(0);
      const localClient = await cluster.client(1);
      const remoteSeen = record(remoteClient, 'queued');
      const localSeen = record(localClient, 'queued');

      const lost = waitFor(adapterB, 'disconnect', 'the disconnect event');
      const back = waitFor(adapterB, 'reconnect', 'the reconnect event');
      closeBrokerConnections(adapterB.uid);
      await lost;
      for (let i = 0; i < 5; i++) b.emit('queued', i);
      assert.equal(adapterB.stats().buffered, 5, 'the emits wait in the outbox while offline');
      await eventually(() => localSeen.length === 5, 'the local client to get its messages during the outage');
      assert.equal(remoteSeen.length, 0, 'nothing crossed while the broker was unreachable');
      await back;
      await eventually(() => remoteSeen.length === 5, 'the buffered emits to reach the other server');
      assert.deepEqual(
        remoteSeen.map(([n]) => n),
        [0, 1, 2, 3, 4],
      );
      void a;
    } finally {
      await cluster.close();
    }
  });

  it('a namespace created during the outage: init() says it will be bound, readyCallback says when it is', async () => {
    let readyCalls = 0;
    const readyCallback = () => readyCalls++;
    const cluster = await startCluster(2, { adapterOptions: { ...FAST, reconnectDelay: 300, reconnectDelayMax: 300, readyCallback } });
    try {
      const [a, b] = cluster.ios;
      const adapterB = b.of('/').adapter;
      await within(a.of('/late').adapter.init(), 'A to bind /late');
      assert.equal(readyCalls, 3, "readyCallback for both servers' / and A's /late");
      const lost = waitFor(adapterB, 'disconnect', 'the disconnect event');
      const back = waitFor(adapterB, 'reconnect', 'the reconnect event');
      closeBrokerConnections(adapterB.uid);
      await lost;
      // B is offline for at least reconnectDelay (300 ms): the bind cannot happen now.
      const outcome = await within(
        b
          .of('/late')
          .adapter.init()
          .then(
            () => 'bound',
            (err) => err,
          ),
        'init() during the outage to settle',
      );
      assert.ok(outcome instanceof Error, `init() during the outage rejects (got ${String(outcome)})`);
      assert.match(outcome.message, /will be bound when the connection is back/);
      assert.equal(readyCalls, 3, 'no readyCallback while offline');
      await back;
      await eventually(() => readyCalls === 4, "readyCallback for B's /late once it is bound");
      const client = await cluster.client(1, '/late');
      await eventually(async () => (await a.of('/late').adapter.serverCount()) === 2, 'A to see B serve /late');
      const [got] = await Promise.all([waitFor(client, 'late', 'a broadcast to /late on B'), a.of('/late').emit('late', 1)]);
      assert.deepEqual(got, [1]);
    } finally {
      await cluster.close();
    }
  });

  it('many reconnects leave one connection, two channels, one queue and one consumer', async () => {
    const cluster = await startCluster(1, { adapterOptions: FAST });
    try {
      const adapter = cluster.ios[0].of('/').adapter;
      for (let i = 0; i < 5; i++) {
        const back = waitFor(adapter, 'reconnect', `reconnect number ${i + 1}`);
        adapter.once('disconnect', () => {});
        closeBrokerConnections(adapter.uid);
        await back;
      }
      assert.equal(adapter.stats().reconnects, 5);
      assert.deepEqual(brokerFootprint(adapter.uid), { connections: 1, channels: 2, queues: 1, consumers: 1 });
    } finally {
      await cluster.close();
    }
  });

  it('a full outage buffer drops the oldest, counts it, and says so', async () => {
    const cluster = await startCluster(2, {
      adapterOptions: { ...FAST, publishBufferSize: 3, reconnectDelay: 500, reconnectDelayMax: 500 },
    });
    const warnings = [];
    const originalWarn = console.warn;
    try {
      const [a, b] = cluster.ios;
      const adapterB = b.of('/').adapter;
      const remoteClient = await cluster.client(0);
      const seen = record(remoteClient, 'burst');
      const dropped = [];
      adapterB.on('dropped', (count) => dropped.push(count));
      const lost = waitFor(adapterB, 'disconnect', 'the disconnect event');
      const back = waitFor(adapterB, 'reconnect', 'the reconnect event');
      closeBrokerConnections(adapterB.uid);
      await lost;
      console.warn = (...args) => warnings.push(args.join(' '));
      const droppedBefore = adapterB.stats().publishDropped;
      for (let i = 0; i < 10; i++) b.emit('burst', i);
      await back;
      await eventually(() => seen.length === 3, 'the three newest emits to arrive');
      assert.deepEqual(
        seen.map(([n]) => n),
        [7, 8, 9],
      );
      assert.equal(adapterB.stats().publishDropped - droppedBefore, 7);
      assert.ok(dropped.length >= 1 && dropped[0] >= 1, 'a dropped event');
      assert.ok(
        warnings.some((w) => /dropped the \d+ oldest/.test(w)),
        'a log line',
      );
      void a;
    } finally {
      console.warn = originalWarn;
      await cluster.close();
    }
  });

  it('during an outage serverCount falls to 1 and requests do not wait for unreachable servers', async () => {
    const cluster = await startCluster(2, { adapterOptions: { ...FAST, reconnectDelay: 2000, reconnectDelayMax: 2000 } });
    try {
      const [a, b] = cluster.ios;
      const adapterB = b.of('/').adapter;
      await cluster.client(0);
      await eventually(async () => (await adapterB.serverCount()) === 2, 'both counted');
      const lost = waitFor(adapterB, 'disconnect', 'the disconnect event');
      closeBrokerConnections(adapterB.uid);
      await lost;
      assert.equal(await adapterB.serverCount(), 1);
      const sockets = await within(b.fetchSockets(), 'fetchSockets during the outage', 1000);
      assert.deepEqual(sockets, []);
      void a;
    } finally {
      await cluster.close();
    }
  });
});
