'use strict';
// The package's public surface: both module forms, both call forms, and clear option errors.
const { describe, it } = require('node:test');
const assert = require('node:assert/strict');
const http = require('node:http');
const { Server } = require('socket.io');
const { AMQP_URL, uniqueName, within } = require('./helpers');

describe('package entry points', () => {
  it('require() and import give the same createAdapter', async () => {
    const required = require('socket.io-amqp0-native');
    const imported = await import('socket.io-amqp0-native');
    assert.equal(typeof required.createAdapter, 'function');
    assert.equal(imported.createAdapter, required.createAdapter);
  });

  it('createAdapter(url, options) and createAdapter({ amqpUrl, ...options }) both plug into io.adapter()', async () => {
    const { createAdapter } = require('..');
    for (const factory of [
      createAdapter(AMQP_URL, { exchangeName: uniqueName('form') }),
      createAdapter({ amqpUrl: AMQP_URL, exchangeName: uniqueName('form') }),
    ]) {
      assert.equal(typeof factory, 'function', 'returned synchronously, as io.adapter() expects');
      const io = new Server(http.createServer());
      io.adapter(factory);
      await within(io.of('/').adapter.init(), 'the adapter to initialise');
      assert.equal(io.of('/').adapter.constructor.name, 'AmqpAdapter');
      await io.close();
    }
  });
});

describe('option errors', () => {
  const { createAdapter } = require('..');
  const cases = [
    ['amqpConnection alone', () => createAdapter({ amqpConnection: () => null }), /amqpConnection .*not supported.*amqpUrl/s],
    ['no argument', () => createAdapter(), /needs a broker URL/],
    ['a number as URL', () => createAdapter(5672), /needs a broker URL/],
    ['an unknown option', () => createAdapter(AMQP_URL, { exchange: 'x' }), /unknown option "exchange"/],
    ['a non-string exchangeName', () => createAdapter(AMQP_URL, { exchangeName: 42 }), /exchangeName must be a non-empty string/],
    ['an empty queuePrefix', () => createAdapter(AMQP_URL, { queuePrefix: '' }), /queuePrefix must be a non-empty string/],
    ['a non-function readyCallback', () => createAdapter(AMQP_URL, { readyCallback: true }), /readyCallback must be a function/],
    ['a fractional prefetch', () => createAdapter(AMQP_URL, { prefetch: 1.5 }), /prefetch must be an integer/],
    ['a negative connectTimeout', () => createAdapter(AMQP_URL, { connectTimeout: -1 }), /connectTimeout must be an integer/],
    ['the URL twice', () => createAdapter(AMQP_URL, { amqpUrl: AMQP_URL }), /give the URL once/],
    ['no amqpUrl in the object form', () => createAdapter({ exchangeName: 'x' }), /amqpUrl option is required/],
    ['sidRoomRouting from socket.io-amqp0', () => createAdapter(AMQP_URL, { sidRoomRouting: 'normal' }), /sidRoomRouting/],
    ['an over-long exchange name', () => createAdapter(AMQP_URL, { exchangeName: 'x'.repeat(300) }), /longer than 255/],
  ];
  for (const [name, call, pattern] of cases) {
    it(`${name} throws a TypeError that says what to do`, () => {
      assert.throws(call, (err) => err instanceof TypeError && pattern.test(err.message));
    });
  }
});

describe('cluster option errors', () => {
  const { createAdapter } = require('..');
  it('heartbeatTimeout must exceed heartbeatInterval', () => {
    assert.throws(
      () => createAdapter(AMQP_URL, { heartbeatInterval: 5000, heartbeatTimeout: 5000 }),
      /heartbeatTimeout must be longer than heartbeatInterval/,
    );
  });
  it('requestsTimeout must be a positive integer', () => {
    assert.throws(() => createAdapter(AMQP_URL, { requestsTimeout: 0 }), /requestsTimeout must be an integer/);
  });
});

describe('resilience option errors', () => {
  const { createAdapter } = require('..');
  it('an empty URL list, a bad tls option and an inverted reconnect window are refused', () => {
    assert.throws(() => createAdapter([]), /amqpUrl must be a non-empty string or a non-empty array/);
    assert.throws(() => createAdapter(AMQP_URL, { tls: { ca: 5 } }), /tls.ca must be a PEM string or Buffer/);
    assert.throws(() => createAdapter(AMQP_URL, { tls: { cert: 'x' } }), /tls must be an object \{ ca \}/);
    assert.throws(
      () => createAdapter(AMQP_URL, { reconnectDelay: 1000, reconnectDelayMax: 10 }),
      /reconnectDelayMax must be at least reconnectDelay/,
    );
  });

  it('a list of URLs is accepted in both call forms', () => {
    assert.equal(typeof createAdapter([AMQP_URL, AMQP_URL]), 'function');
    assert.equal(typeof createAdapter({ amqpUrl: [AMQP_URL] }), 'function');
  });
});
