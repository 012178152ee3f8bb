'use strict';
// A loopback TCP proxy in front of a broker (or of a Socket.IO server: `targetPort` may change, as a
// load balancer sends reconnecting clients to another server), so a test can make a real network outage for its own
// servers only: every connection through it is cut at once and new ones are refused (nothing
// listens on the port) for a while, as when a load balancer or the network fails. The broker itself
// keeps running, with the servers' queues.
const net = require('node:net');

class TcpProxy {
  /** Listens on a free loopback port and forwards to `targetPort` on 127.0.0.1. */
  static async start(targetPort) {
    const proxy = new TcpProxy(targetPort);
    await proxy.listen(0);
    return proxy;
  }

  constructor(targetPort) {
    this.targetPort = targetPort;
    this.sockets = new Set();
    this.accepted = 0;
    this.server = null;
    this.port = 0;
  }

  get url() {
    return `amqp://guest:guest@127.0.0.1:${this.port}`;
  }

  listen(port) {
    const server = net.createServer((client) => this.forward(client));
    this.server = server;
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => {
        server.off('error', reject);
        this.port = server.address().port;
        resolve();
      });
    });
  }

  forward(client) {
    this.accepted += 1;
    const upstream = net.connect(this.targetPort, '127.0.0.1');
    for (const socket of [client, upstream]) {
      this.sockets.add(socket);
      socket.on('close', () => this.sockets.delete(socket));
      socket.on('error', () => {}); // a cut connection errors on the other side; that is the point
    }
    client.pipe(upstream).pipe(client);
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
  }

  /** Cuts every connection and stops listening: connection attempts are refused until `restore()`. */
  async cut() {
    const server = this.server;
    this.server = null;
    const closed = new Promise((resolve) => server.close(resolve));
    for (const socket of this.sockets) socket.destroy();
    await closed;
  }

  /** Stops listening, keeping the connections already made: new ones are refused until `restore()`. */
  refuse() {
    // close() stops listening at once; its callback would wait for the kept connections to end.
    this.server.close();
    this.server = null;
  }

  /** Drops every connection made so far (their peers see a network failure); keeps listening. */
  drop() {
    for (const socket of this.sockets) socket.destroy();
  }

  /** Listens again on the same port. */
  restore() {
    return this.listen(this.port);
  }

  async close() {
    if (this.server) await this.cut();
  }
}

module.exports = { TcpProxy };
