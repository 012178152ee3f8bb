'use strict';
// Start-up, shutdown and broker errors: clear, prompt, and never a crash or a hang.
const { describe, it } = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const http = require('node:http');
const { fork } = require('node:child_process');
const { Server } = require('socket.io');
const {
  AMQP_URL,
  uniqueName,
  waitFor,
  within,
  eventually,
  createAdapter,
  brokerConnectionsMatching,
  brokerHasQueue,
  rabbitmqctl,
} = require('./helpers');

// A server whose adapter uses `url`; collects error events, readyCallback calls and init()'s outcome.
async function serverWith(url, options = {}) {
  const io = new Server(http.createServer());
  const seen = { errors: [], ready: 0 };
  io.adapter(createAdapter(url, { exchangeName: uniqueName('life'), readyCallback: () => seen.ready++, ...options }));
  const adapter = io.of('/').adapter;
  adapter.on('error', (err) => seen.errors.push(err));
  seen.init = await within(
    adapter.init().then(
      () => 'resolved',
      (err) => err,
    ),
    `init() for ${url} to settle`,
    15000,
  );
  return { io, adapter, seen };
}

async function expectBrokerError(url, pattern) {
  const { io, seen } = await serverWith(url);
  try {
    assert.ok(seen.init instanceof Error, 'init() rejects');
    assert.match(seen.init.message, pattern);
    if (seen.errors.length === 0) await within(new Promise((r) => io.of('/').adapter.once('error', r)), 'an error event');
    assert.match(seen.errors[0].message, pattern);
    assert.equal(seen.ready, 0, 'readyCallback is never called');
  } finally {
    await within(io.close(), 'a failed server to close');
  }
}

describe('lifecycle', () => {
  it('init() resolves, readyCallback fires and the broker shows the named connection and queue', async () => {
    let shutdown;
    const { io, adapter, seen } = await serverWith(AMQP_URL, { shutdownCallbackCallback: (cb) => (shutdown = cb) });
    assert.equal(seen.init, 'resolved');
    assert.equal(seen.ready, 1);
    assert.equal(typeof shutdown, 'function');
    const uid = adapter.uid;
    assert.match(uid, /^[0-9a-f]{16}$/);
    assert.equal(brokerConnectionsMatching(uid), 1);
    await within(io.close(), 'io.close()');
    assert.equal(brokerConnectionsMatching(uid), 0, 'io.close() closes the connection');
  });

  it('shutdownCallbackCallback hands out a function that closes the adapter', async () => {
    let shutdown;
    const { io, adapter } = await serverWith(AMQP_URL, { shutdownCallbackCallback: (cb) => (shutdown = cb) });
    const uid = adapter.uid;
    await within(shutdown(), 'the shutdown callback');
    assert.equal(brokerConnectionsMatching(uid), 0);
    await io.close();
  });

  it('a process that closed its server exits by itself, promptly', async (t) => {
    const child = fork(path.join(__dirname, 'fixtures', 'server-process.js'), [AMQP_URL, uniqueName('exit')], {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    t.after(() => child.kill('SIGKILL'));
    const [ready] = await waitFor(child, 'message', 'the child server to start');
    assert.ok(ready.ready, JSON.stringify(ready));
    const exited = waitFor(child, 'exit', 'the child process to exit after io.close()', 5000);
    child.send({ close: true });
    const [code] = await exited;
    assert.equal(code, 0);
  });

  it('the queue goes away with the server', async () => {
    const { io, adapter } = await serverWith(AMQP_URL);
    const queue = adapter._cluster.native.queueName;
    assert.ok(brokerHasQueue(queue), `queue ${queue} exists while the server runs`);
    await io.close();
    assert.ok(!brokerHasQueue(queue), `queue ${queue} is deleted after close`);
  });
});

describe('broker errors', () => {
  it('an unusable URL: error event, rejected init(), no readyCallback', async () => {
    await expectBrokerError('http://localhost:5672', /unsupported URL scheme "http:"/);
    await expectBrokerError('not a url', /is not a URL/);
  });

  it('an unreachable broker: a clear error within seconds', async () => {
    const started = Date.now();
    await expectBrokerError('amqp://127.0.0.1:1', /could not connect to the AMQP broker at amqp:\/\/127\.0\.0\.1:1/);
    assert.ok(Date.now() - started < 10000);
  });

  it('a refused login: a clear error, with the password hidden', async () => {
    const { io, seen } = await serverWith('amqp://guest:wrong-password@127.0.0.1:5672');
    try {
      assert.ok(seen.init instanceof Error);
      assert.match(seen.init.message, /ACCESS_REFUSED|access refused|authentication|login/i);
      assert.doesNotMatch(seen.init.message, /wrong-password/);
      assert.equal(seen.ready, 0);
    } finally {
      await io.close();
    }
  });

  it('with no error listener the error is logged, not thrown, and the server keeps serving locally', async () => {
    const warnings = [];
    const originalWarn = console.warn;
    console.warn = (...args) => warnings.push(args.join(' '));
    try {
      const io = new Server(http.createServer());
      io.adapter(createAdapter('amqp://127.0.0.1:1', { exchangeName: uniqueName('nolistener') }));
      const outcome = await within(
        io
          .of('/')
          .adapter.init()
          .catch((e) => e),
        'init() to reject',
      );
      assert.ok(outcome instanceof Error);
      await eventually(() => warnings.length > 0, 'the warning to be logged');
      assert.match(warnings[0], /could not connect/);
      assert.match(warnings[0], /adapter\.on\('error'/);
      // Local delivery still works without a broker.
      io.of('/').adapter.addAll('sid-1', new Set(['sid-1']));
      assert.deepEqual([...io.of('/').adapter.rooms.get('sid-1')], ['sid-1']);
      await io.close();
    } finally {
      console.warn = originalWarn;
    }
  });
});

describe('URL parameters', () => {
  it('vhost, heartbeat and connection_name from the URL reach the broker', async (t) => {
    const vhost = uniqueName('vhost');
    const name = uniqueName('my-app');
    rabbitmqctl('add_vhost', vhost);
    t.after(() => rabbitmqctl('delete_vhost', vhost));
    rabbitmqctl('set_permissions', '-p', vhost, 'guest', '.*', '.*', '.*');
    const url = `amqp://guest:guest@127.0.0.1:5672/${encodeURIComponent(vhost)}?heartbeat=7&connection_name=${name}`;
    const { io, seen } = await serverWith(url);
    try {
      assert.equal(seen.init, 'resolved');
      const line = rabbitmqctl('list_connections', 'vhost', 'timeout', 'client_properties').find((l) => l.includes(name));
      assert.ok(line, `a connection named ${name}`);
      const [connectionVhost, heartbeat] = line.split('\t');
      assert.equal(connectionVhost, vhost);
      assert.equal(heartbeat, '7');
    } finally {
      await io.close();
    }
  });
});
