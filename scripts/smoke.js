'use strict';
// The smoke test for platforms CI builds but cannot run a broker on (macOS, Windows, arm64 and
// musl in containers): the addon loads, and bad options fail with the documented TypeErrors.
const assert = require('node:assert/strict');
const { createAdapter, Emitter } = require('..');

assert.equal(typeof createAdapter('amqp://localhost'), 'function', 'createAdapter returns a factory');
assert.throws(
  () => createAdapter(),
  (err) => err instanceof TypeError && /needs a broker URL/.test(err.message),
);
assert.throws(
  () => createAdapter('amqp://localhost', { exchange: 'x' }),
  (err) => err instanceof TypeError && /unknown option "exchange"/.test(err.message),
);
assert.throws(
  () => new Emitter('http://localhost'),
  (err) => err instanceof TypeError,
);
console.log(`smoke test passed on ${process.platform}-${process.arch}, Node ${process.version}`);
