'use strict';
// Servers that start at the same moment count each other at once: membership converges within one
// broker round trip of the last init(), not at the next heartbeat. A request never presents a
// partial answer as complete.
const { describe, it } = require('node:test');
const assert = require('node:assert/strict');
const http = require('node:http');
const { Server } = require('socket.io');
const { AMQP_URL, uniqueName, within, createAdapter, startCluster, forkServer, eventually } = require('./helpers');

// Heartbeats far apart, so a server that missed a peer at start-up cannot be rescued by the next
// heartbeat inside the convergence bound: only the start-up exchange itself can make the counts.
const SLOW_HEARTBEATS = { heartbeatInterval: 30000, heartbeatTimeout: 60000 };
const CONVERGE_MS = 1000;
const ROUNDS = Number(process.env.STARTUP_ROUNDS || 25);

/** Starts `size` servers at the same moment, each with its own adapter on one fresh exchange. */
async function startTogether(size, adapterOptions = SLOW_HEARTBEATS) {
  const name = uniqueName('together');
  const ios = Array.from({ length: size }, () => {
    const io = new Server(http.createServer());
    io.adapter(createAdapter(AMQP_URL, { exchangeName: name, queuePrefix: name, ...adapterOptions }));
    return io;
  });
  await within(Promise.all(ios.map((io) => io.of('/').adapter.init())), `${size} servers to bind their namespace`);
  return ios;
}

/** Resolves with the counts once every server counts `size`; rejects with the counts seen otherwise. */
async function converged(ios, size, ms) {
  const deadline = Date.now() + ms;
  for (;;) {
    const counts = await Promise.all(ios.map((io) => io.of('/').adapter.serverCount()));
    if (counts.every((c) => c === size)) return counts;
    if (Date.now() > deadline) throw new Error(`counts ${JSON.stringify(counts)} ${ms} ms after the last init()`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

async function roundsOf(size) {
  const failures = [];
  for (let round = 0; round < ROUNDS; round++) {
    const ios = await startTogether(size);
    try {
      await converged(ios, size, CONVERGE_MS);
    } catch (err) {
      failures.push(`round ${round}: ${err.message}`);
    } finally {
      await within(Promise.all(ios.map((io) => io.close())), 'the servers to close');
    }
  }
  assert.deepEqual(failures, [], `${failures.length} of ${ROUNDS} simultaneous starts did not converge`);
}

describe('start-up membership', () => {
  it(`${ROUNDS} simultaneous starts of 3 servers: each counts every other within 1 s`, () => roundsOf(3));

  it(`${ROUNDS} simultaneous starts of 5 servers: each counts every other within 1 s`, () => roundsOf(5));

  it('a server added to a running cluster is counted by all within 1 s; a killed one is dropped after heartbeatTimeout', async () => {
    const timings = { heartbeatInterval: 300, heartbeatTimeout: 1500 };
    const cluster = await startCluster(3, { adapterOptions: timings });
    try {
      await converged(cluster.ios, 3, CONVERGE_MS);
      const added = await forkServer(cluster.exchangeName, timings);
      try {
        await converged(cluster.ios, 4, CONVERGE_MS);
        const killedAt = Date.now();
        added.child.kill('SIGKILL');
        await converged(cluster.ios, 3, 4000);
        const gone = Date.now() - killedAt;
        assert.ok(gone >= 1400, `dropped after ${gone} ms: sooner than the heartbeat timeout`);
      } finally {
        added.child.kill('SIGKILL');
      }
    } finally {
      await cluster.close();
    }
  });

  it('a server that starts serving the namespace while a request waits, and does not answer, is named', async () => {
    const cluster = await startCluster(2, { adapterOptions: SLOW_HEARTBEATS });
    try {
      const [a, b] = cluster.ios;
      await converged(cluster.ios, 2, CONVERGE_MS);
      let release;
      const held = new Promise((resolve) => (release = resolve));
      b.of('/late').on('work', async (reply) => {
        await held;
        reply('from b');
      });
      await within(a.of('/late').adapter.init(), 'A to serve /late');
      await within(b.of('/late').adapter.init(), 'B to serve /late');
      await eventually(async () => (await a.of('/late').adapter.serverCount()) === 2, 'A to count B for /late');
      const answer = new Promise((resolve) => a.of('/late').serverSideEmit('work', (...args) => resolve(args)));
      // A third server starts serving /late after the request left: it never got it.
      const newcomer = new Server(http.createServer());
      newcomer.adapter(createAdapter(AMQP_URL, { exchangeName: cluster.exchangeName, ...SLOW_HEARTBEATS }));
      try {
        await within(newcomer.of('/late').adapter.init(), 'the newcomer to serve /late');
        await eventually(async () => (await a.of('/late').adapter.serverCount()) === 3, 'A to count the newcomer');
        release();
        const [err, replies] = await within(answer, 'the request to end');
        assert.ok(err, 'an answer without the newcomer is not presented as complete');
        assert.equal(err.code, 'INCOMPLETE');
        const uid = newcomer.of('/late').adapter.uid;
        assert.match(err.message, new RegExp(`server ${uid} started serving /late during the request and did not answer`));
        assert.deepEqual(replies, ['from b']);
        assert.deepEqual(err.partial, ['from b']);
      } finally {
        await newcomer.close();
      }
    } finally {
      await cluster.close();
    }
  });

  it('requests made right after a simultaneous start get every server’s answer', async () => {
    for (let round = 0; round < 10; round++) {
      const ios = await startTogether(3);
      try {
        ios.forEach((io, i) => {
          io.on('whoami', (reply) => reply(i));
        });
        await converged(ios, 3, CONVERGE_MS);
        const replies = await within(
          new Promise((resolve, reject) => ios[0].serverSideEmit('whoami', (err, got) => (err ? reject(err) : resolve(got)))),
          'serverSideEmit to be answered',
        );
        assert.deepEqual([...replies].sort(), [1, 2], `round ${round}`);
      } finally {
        await within(Promise.all(ios.map((io) => io.close())), 'the servers to close');
      }
    }
  });
});
