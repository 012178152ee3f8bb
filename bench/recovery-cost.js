'use strict';
// What storing packets for connection state recovery costs the sending server: one Socket.IO
// server, no clients, BENCH_EMITS broadcasts to random rooms, with recovery off and on, each run in
// a fresh process (alternating, BENCH_REPS of each), until every publish has left. Prints the
// process CPU and the JS thread's CPU per emit (medians) and their ratios. The broker's own cost,
// appending to the stream, is not in it.
const http = require('node:http');
const crypto = require('node:crypto');
const { fork } = require('node:child_process');

const AMQP_URL = process.env.AMQP_URL || 'amqp://guest:guest@127.0.0.1:5672';
const EMITS = Number(process.env.BENCH_EMITS || 200000);
const REPS = Number(process.env.BENCH_REPS || 5);

// One measured run (child process): argv[2] is "on" or "off"; reports over IPC.
async function measure(recovery) {
  const { Server } = require('socket.io');
  const { createAdapter } = require('..');
  const threads = require('./threads');
  const exchangeName = `bench-cost-${crypto.randomBytes(3).toString('hex')}`;
  const io = new Server(http.createServer(), recovery ? { connectionStateRecovery: { maxDisconnectionDuration: 60000 } } : {});
  io.adapter(createAdapter(AMQP_URL, { exchangeName }));
  await io.of('/').adapter.init();
  const emit = async (count) => {
    let sent = 0;
    await new Promise((resolve) => {
      const slice = () => {
        for (let i = 0; i < 500 && sent < count; i++, sent++) io.to(`r${sent % 1000}`).emit('room', sent, 'some payload');
        if (sent < count) setImmediate(slice);
        else resolve();
      };
      slice();
    });
    // Until the outbox is empty: the publishes are part of the cost.
    while (io.of('/').adapter.stats().buffered > 0) await new Promise((resolve) => setTimeout(resolve, 5));
  };
  await emit(20000); // warm-up
  const cpu = process.cpuUsage();
  const before = threads.sample();
  await emit(EMITS);
  const used = process.cpuUsage(cpu);
  const perThread = threads.difference(before, threads.sample());
  await io.close();
  if (recovery) {
    const amqplib = require('amqplib');
    const connection = await amqplib.connect(AMQP_URL);
    const channel = await connection.createChannel();
    await channel.deleteQueue(`${exchangeName}.recovery`);
    await connection.close();
  }
  return { processUs: (used.user + used.system) / EMITS, jsUs: (perThread.js.cpuMs * 1000) / EMITS };
}

function run(mode) {
  return new Promise((resolve, reject) => {
    const child = fork(__filename, [mode], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    child.once('message', resolve);
    child.once('exit', (code) => code !== 0 && reject(new Error(`the ${mode} run exited with ${code}`)));
  });
}

const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];

async function main() {
  const results = { off: [], on: [] };
  for (let rep = 0; rep < REPS; rep++) {
    for (const mode of rep % 2 ? ['on', 'off'] : ['off', 'on']) results[mode].push(await run(mode));
  }
  for (const mode of ['off', 'on']) {
    const r = results[mode];
    console.log(
      `recovery ${mode}: process CPU µs / emit ${median(r.map((x) => x.processUs)).toFixed(2)}, JS thread ${median(r.map((x) => x.jsUs)).toFixed(2)}`,
    );
  }
  const ratio = (key) => (median(results.on.map((x) => x[key])) / median(results.off.map((x) => x[key]))).toFixed(2);
  console.log(`on / off: process ${ratio('processUs')}, JS thread ${ratio('jsUs')}`);
}

if (process.argv[2] === 'on' || process.argv[2] === 'off') {
  measure(process.argv[2] === 'on').then(
    (result) => process.send(result, () => process.exit(0)),
    (err) => {
      console.error(err);
      process.exit(1);
    },
  );
} else {
  main().catch((err) => {
    console.error(err);
    process.exit(1);
  });
}
