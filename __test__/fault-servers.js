'use strict';
// Socket.IO servers for the tests that stop, restart or cluster private broker nodes
// (private-broker.js): a server with one websocket client on the given broker URLs, and a check
// that a broadcast crosses from one to another.
const assert = require('node:assert/strict');
const http = require('node:http');
const { Server } = require('socket.io');
const { io: connectClient } = require('socket.io-client');
const helpers = require('./helpers');
const { createAdapter, waitFor, within } = helpers;

// The shared fast timings; a private node that restarts refuses connections for a while, so
// attempts give up sooner and start a little later.
const FAST = { ...helpers.FAST, reconnectDelay: 100, connectTimeout: 2000 };

async function serverOn(urls, exchangeName, extra = {}) {
  const httpServer = http.createServer();
  const io = new Server(httpServer);
  io.adapter(createAdapter(urls, { exchangeName, ...FAST, ...extra }));
  const adapter = io.of('/').adapter;
  adapter.on('error', () => {}); // connection attempts to a stopped node are expected here
  await within(adapter.init(), 'the adapter to bind', 15000);
  await new Promise((resolve) => httpServer.listen(0, '127.0.0.1', resolve));
  const client = connectClient(`http://127.0.0.1:${httpServer.address().port}`, {
    transports: ['websocket'],
    reconnection: false,
    forceNew: true,
  });
  await waitFor(client, 'connect', 'a client to connect');
  return {
    io,
    adapter,
    client,
    close: () => {
      client.disconnect();
      return io.close();
    },
  };
}

async function crosses(from, to, label) {
  const [got] = await Promise.all([waitFor(to.client, 'cross', `"${label}" to cross`, 10000), from.io.emit('cross', label)]);
  assert.deepEqual(got, [label]);
}

module.exports = { FAST, serverOn, crosses };
