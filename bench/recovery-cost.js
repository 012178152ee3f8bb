'use strict';
// What storing packets for connection state recovery costs the sending server: one Socket.IO
// server, no clients, `BENCH_EMITS` broadcasts to random rooms in slices, with recovery off and on,
// alternating, `BENCH_REPS` times each. Prints the JS thread's CPU and the whole process's CPU per
// 1000 emits (median), and the ratio. (The broker's own cost, appending to the stream, is not in it.)
const http = require('node:http');
const crypto = require('node:crypto');
const { Server } = require('socket.io');
const amqplib = require('amqplib');
const { createAdapter } = require('..');
const threads = require('./threads');

const AMQP_URL = process.env.AMQP_URL || 'amqp://guest:guest@127.0.0.1:5672';
const EMITS = Number(process.env.BENCH_EMITS || 100000);
const REPS = Number(process.env.BENCH_REPS || 9);

async function server(recovery) {
  const exchangeName = `bench-cost-${crypto.randomBytes(3).toString('hex')}`;
  const io = new Server(http.createServer(), recovery ? { connectionStateRecovery: { maxDisconnectionDuration: 60000 } } : {});
  io.adapter(createAdapter(AMQP_URL, { exchangeName }));
  await io.of('/').adapter.init();
  return { io, exchangeName };
}

async function emitAll(io) {
  let sent = 0;
  const cpu = process.cpuUsage();
  const before = threads.sample();
  await new Promise((resolve) => {
    const slice = () => {
      for (let i = 0; i < 500 && sent < EMITS; i++, sent++) io.to(`r${sent % 1000}`).emit('room', sent, 'some payload');
      if (sent < EMITS) setImmediate(slice);
      else resolve();
    };
    slice();
  });
  // Until the outbox is empty: the publishes are part of the cost.
  while (io.of('/').adapter.stats().buffered > 0) await new Promise((resolve) => setTimeout(resolve, 5));
  const used = process.cpuUsage(cpu);
  const perThread = threads.difference(before, threads.sample());
  return { processMs: ((used.user + used.system) / 1000 / EMITS) * 1000, jsMs: (perThread.js.cpuMs / EMITS) * 1000 };
}

const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];

async function main() {
  const off = await server(false);
  const on = await server(true);
  const results = { off: [], on: [] };
  await emitAll(off.io); // warm-up
  await emitAll(on.io);
  for (let rep = 0; rep < REPS; rep++) {
    results.off.push(await emitAll(off.io));
    results.on.push(await emitAll(on.io));
  }
  for (const kind of ['off', 'on']) {
    const r = results[kind];
    console.log(
      `recovery ${kind}: process CPU ms / 1000 emits ${median(r.map((x) => x.processMs)).toFixed(1)}, JS thread ${median(r.map((x) => x.jsMs)).toFixed(1)}`,
    );
  }
  const ratio = (key) => (median(results.on.map((x) => x[key])) / median(results.off.map((x) => x[key]))).toFixed(2);
  console.log(`on / off: process ${ratio('processMs')}, JS thread ${ratio('jsMs')}`);
  await Promise.all([off.io.close(), on.io.close()]);
  const connection = await amqplib.connect(AMQP_URL);
  const channel = await connection.createChannel();
  await channel.deleteQueue(`${on.exchangeName}.recovery`);
  await connection.close();
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
