'use strict';
// One Socket.IO server of the demo cluster, in its own process. Driven by demo/cluster.js over IPC.
const http = require('http');
const { Server } = require('socket.io');
const { createAdapter } = require('..');

const name = process.env.DEMO_SERVER_NAME;
const url = process.env.AMQP_URL || 'amqp://guest:guest@127.0.0.1:5672';
const httpServer = http.createServer();
const io = new Server(httpServer);
io.adapter(createAdapter(url, { exchangeName: process.env.DEMO_EXCHANGE, instanceName: name }));
io.of('/').adapter.on('error', (err) => {
  // A demo server without its broker has nothing to show: report and stop.
  if (process.connected) process.send({ failed: err.message });
  process.exit(1);
});

io.on('connection', (socket) => {
  socket.on('join', (room, done) => {
    socket.join(room);
    if (typeof done === 'function') done();
  });
});

io.of('/')
  .adapter.init()
  .then(
    () =>
      httpServer.listen(Number(process.env.DEMO_PORT || 0), '127.0.0.1', () =>
        process.send({ ready: true, port: httpServer.address().port }),
      ),
    () => {}, // reported through the error event above
  );

process.on('message', async (msg) => {
  if (msg.emit) {
    const target = msg.room ? io.to(msg.room) : io;
    target.emit(msg.emit, { from: name, text: msg.text });
  }
  if (msg.close) {
    await io.close();
    process.disconnect();
  }
});
