'use strict';
// Undecodable messages and other protocol versions are dropped, counted and reported; the server
// keeps serving. Published with a real AMQP client straight onto the adapter's exchange.
const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const amqplib = require('amqplib');
const notepack = require('notepack.io');
const { AMQP_URL, startCluster, waitFor, eventually } = require('./helpers');

describe('malformed and foreign messages', () => {
  let cluster;
  let connection;
  let channel;
  let client;
  const errors = [];
  before(async () => {
    cluster = await startCluster(2);
    cluster.ios[1].of('/').adapter.on('error', (err) => errors.push(err));
    client = await cluster.client(1);
    connection = await amqplib.connect(AMQP_URL);
    channel = await connection.createChannel();
  });
  after(async () => {
    await connection.close();
    await cluster.close();
  });

  async function stillServing(label) {
    const [got] = await Promise.all([waitFor(client, 'after', `a broadcast after ${label}`), cluster.ios[0].emit('after', label)]);
    assert.deepEqual(got, [label]);
  }

  it('garbage on the namespace key is dropped, counted and reported', async () => {
    const before = cluster.ios[1].of('/').adapter.stats().malformed;
    for (const body of [Buffer.from('not msgpack at all'), Buffer.alloc(0), Buffer.from([0xc1, 0xff, 0x00])]) {
      channel.publish(cluster.exchangeName, 'nsp:/', body);
    }
    await eventually(() => cluster.ios[1].of('/').adapter.stats().malformed - before >= 3, 'the garbage to be counted');
    assert.ok(
      errors.some((err) => /dropped an incoming message .*malformed/.test(err.message)),
      'an error event says so',
    );
    await stillServing('garbage');
  });
});

// Its own cluster: reports of malformed messages are throttled (one per 5 s per server), so a
// server that has just reported the garbage above would not report this one yet.
describe('a message of another protocol version', () => {
  it('is refused explicitly: counted, and an error event names both versions', async () => {
    const cluster = await startCluster(2);
    const connection = await amqplib.connect(AMQP_URL);
    const errors = [];
    cluster.ios[1].of('/').adapter.on('error', (err) => errors.push(err));
    try {
      const client = await cluster.client(1);
      const channel = await connection.createChannel();
      const future = notepack.encode({ v: 99, uid: 'from-the-future', nsp: '/', message: { type: 'broadcast', data: {} } });
      channel.publish(cluster.exchangeName, 'nsp:/', future);
      await eventually(() => cluster.ios[1].of('/').adapter.stats().malformed === 1, 'the foreign version to be counted');
      await eventually(() => errors.length > 0, 'an error event');
      assert.match(errors[0].message, /protocol version 99 dropped \(this server speaks version 1\)/);
      const [got] = await Promise.all([waitFor(client, 'after', 'a broadcast after it'), cluster.ios[0].emit('after', 'v99')]);
      assert.deepEqual(got, ['v99'], 'the server keeps serving');
    } finally {
      await connection.close();
      await cluster.close();
    }
  });
});
