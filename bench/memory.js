'use strict';
// Memory of the room index (child process, run with --expose-gc): 10,000 sockets in 10 rooms each,
// added through the adapter as Socket.IO would, measured as the growth of the process's RSS (the
// native index lives outside the V8 heap, so heap size alone would flatter it).
// argv: kind ("native" | "native-rooms" | "redis" | "memory"), cluster name.
const crypto = require('node:crypto');
const { Server } = require('socket.io');

const [kind, clusterName] = process.argv.slice(2);
const SOCKETS = 10000;
const ROOMS_PER_SOCKET = 10;

async function main() {
  const io = new Server();
  if (kind === 'native' || kind === 'native-rooms') {
    const url = process.env.AMQP_URL || 'amqp://guest:guest@127.0.0.1:5672';
    io.adapter(require('..').createAdapter(url, { exchangeName: clusterName, roomRouting: kind === 'native-rooms' }));
  } else if (kind === 'redis') {
    const { createClient } = require('redis');
    const pub = createClient({ url: process.env.REDIS_URL || 'redis://127.0.0.1:6379' });
    const sub = pub.duplicate();
    await Promise.all([pub.connect(), sub.connect()]);
    io.adapter(require('@socket.io/redis-adapter').createAdapter(pub, sub, { key: clusterName }));
  }
  const adapter = io.of('/').adapter;
  await adapter.init?.();
  const settle = async () => {
    for (let i = 0; i < 3; i++) {
      global.gc();
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    return process.memoryUsage().rss;
  };
  // Warm up the code paths (and the allocator) so the measurement is of the data.
  for (let i = 0; i < 1000; i++) adapter.addAll(`warm-${i}`, new Set([`warm-${i}`, 'w']));
  for (let i = 0; i < 1000; i++) adapter.delAll(`warm-${i}`);
  const before = await settle();
  for (let s = 0; s < SOCKETS; s++) {
    const id = crypto.randomBytes(15).toString('base64url'); // 20 characters, like Socket.IO's ids
    const rooms = new Set([id]);
    for (let r = 1; r < ROOMS_PER_SOCKET; r++) rooms.add(`room-${(s * 7 + r * 131) % 1000}`);
    adapter.addAll(id, rooms);
  }
  await adapter.addAll('last', new Set(['last'])); // with roomRouting: every room bound
  const after = await settle();
  process.send({ rssBytes: after - before }, () => process.exit(0));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
