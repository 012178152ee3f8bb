'use strict';
// Panics in Rust and a saturated event loop: neither crashes the process, loses other traffic, or
// lets memory grow without bound.
const { describe, it } = require('node:test');
const assert = require('node:assert/strict');
const { startCluster, waitFor, eventually, forkServer, brokerQueueDepths } = require('./helpers');

/** The adapter's native node, built with the test failpoints (`npm run build:test`, as `npm test` does). */
function withFailpoints(native) {
  assert.equal(
    typeof native.__panicForTest,
    'function',
    'the addon was built without test failpoints: build it with `npm run build:test` (npm test does)',
  );
  return native;
}

describe('resilience', () => {
  it('a panic inside a native call becomes a JS exception and the adapter keeps working', async () => {
    const cluster = await startCluster(2);
    try {
      const native = withFailpoints(cluster.ios[0].of('/').adapter._cluster.native);
      assert.throws(() => native.__panicForTest(), /panic injected by a test/);
      const client = await cluster.client(1);
      const [got] = await Promise.all([waitFor(client, 'still', 'a broadcast after the panic'), cluster.ios[0].emit('still', 'alive')]);
      assert.deepEqual(got, ['alive']);
    } finally {
      await cluster.close();
    }
  });

  it('a panic while handling one message costs that message only', async () => {
    const cluster = await startCluster(2);
    try {
      const adapter = cluster.ios[1].of('/').adapter;
      const errors = [];
      adapter.on('error', (err) => errors.push(err));
      const client = await cluster.client(1);
      const seen = [];
      client.on('n', (n) => seen.push(n));
      withFailpoints(adapter._cluster.native).__panicOnNextBroadcastForTest();
      cluster.ios[0].emit('n', 1); // dropped by the injected panic
      cluster.ios[0].emit('n', 2);
      await eventually(() => seen.includes(2), 'the message after the panic to arrive');
      assert.deepEqual(seen, [2]);
      assert.ok(errors.some((err) => /internal error while handling a message \(dropped\): panic injected/.test(err.message)));
    } finally {
      await cluster.close();
    }
  });

  // sendQueued() runs in a microtask at the end of the turn: thrown there it would be uncaught.
  it("a panic while sending a turn's publishes is reported, and they go with the next turn", async () => {
    const cluster = await startCluster(2);
    try {
      const adapter = cluster.ios[0].of('/').adapter;
      const errors = [];
      adapter.on('error', (err) => errors.push(err));
      const client = await cluster.client(1);
      const seen = [];
      client.on('q', (n) => seen.push(n));
      withFailpoints(adapter._cluster.native).__panicOnNextSendForTest();
      cluster.ios[0].emit('q', 1); // queued; this turn's send panics
      await eventually(() => errors.length > 0, 'the failed send to be reported');
      assert.match(errors[0].message, /sending failed: panic injected by a test/);
      cluster.ios[0].emit('q', 2);
      await eventually(() => seen.length === 2, 'both messages after the next turn');
      assert.deepEqual(seen, [1, 2]);
    } finally {
      await cluster.close();
    }
  });

  it('a blocked event loop leaves the backlog in the broker, then every message arrives', async () => {
    // Publishes travel in batches of up to 256 packets, so the prefetch window (in AMQP messages)
    // must be small for 3000 packets to overflow it and leave a backlog on the broker.
    const prefetch = 2;
    const cluster = await startCluster(1);
    const slow = await forkServer(cluster.exchangeName, { prefetch, maxPendingDeliveries: 16 });
    const { io: connect } = require('socket.io-client');
    const client = connect(`http://127.0.0.1:${slow.port}`, { transports: ['websocket'], reconnection: false, forceNew: true });
    try {
      await waitFor(client, 'connect', 'a client of the slow server');
      let received = 0;
      client.on('load', () => received++);
      await eventually(async () => (await cluster.ios[0].of('/').adapter.serverCount()) === 2, 'the slow server counted');
      const total = 3000;
      slow.child.send({ block: 4000 });
      for (let i = 0; i < total; i++) cluster.ios[0].emit('load', i);
      // While its event loop is blocked, the slow server holds at most its bounded hand-off plus
      // the prefetch window; the rest waits in its queue on the broker.
      const depth = await eventually(
        () => {
          const [depth] = brokerQueueDepths(slow.uid);
          if (!depth) return null;
          const [, ready, unacked] = depth;
          return ready > 0 ? { ready, unacked } : null;
        },
        'a backlog to build up on the broker',
        3500,
      );
      assert.ok(depth.unacked <= prefetch, `unacknowledged ${depth.unacked} stays within the prefetch ${prefetch}`);
      await eventually(() => received === total, `all ${total} messages to arrive after the event loop unblocks`, 20000);
      assert.equal(received, total);
    } finally {
      client.disconnect();
      slow.child.kill('SIGKILL');
      await cluster.close();
    }
  });
});
