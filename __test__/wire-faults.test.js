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

  it('a message of another protocol version is refused explicitly', async () => {
    errors.length = 0;
    const before = cluster.ios[1].of('/').adapter.stats().malformed;
    const future = notepack.encode({ v: 99, uid: 'from-the-future', nsp: '/', message: { type: 'broadcast', data: {} } });
    channel.publish(cluster.exchangeName, 'nsp:/', future);
    await eventually(() => cluster.ios[1].of('/').adapter.stats().malformed > before, 'the foreign version to be counted');
    await stillServing('version 99');
  });
});
