'use strict';
// One broker session per Socket.IO server, shared by the adapters of all its namespaces: wraps the
// native node, routes drained deliveries to the right adapter and reports errors.
const native = require('./native');
const { urlProblem } = require('./options');

const LOG_PREFIX = '[socket.io-amqp0-native]';

class ClusterNode {
  constructor(options) {
    this.options = options;
    this.adapters = new Map(); // namespace name -> AmqpAdapter
    this.closed = false;
    const problem = urlProblem(options.amqpUrl);
    // A URL that cannot work fails every namespace the same way a refused connection does.
    this.fatalError = problem ? new Error(`socket.io-amqp0-native: ${problem}`) : null;
    this.native = this.fatalError
      ? null
      : new native.NativeNode(
          {
            url: options.amqpUrl,
            exchangeName: options.exchangeName,
            queuePrefix: options.queuePrefix,
            instanceName: options.instanceName,
            connectTimeoutMs: options.connectTimeout,
            prefetch: options.prefetch,
            publishBuffer: options.publishBufferSize,
            maxPendingDeliveries: options.maxPendingDeliveries,
          },
          () => this._onWake(),
        );
    this.closing = null;
  }

  get uid() {
    return this.native ? this.native.uid : null;
  }

  attach(adapter) {
    const name = adapter.nsp.name;
    if (this.adapters.has(name)) this.adapters.get(name)._detached = true;
    this.adapters.set(name, adapter);
    return this.native ? this.native.namespace(name) : null;
  }

  async bind(adapter) {
    if (this.fatalError) {
      process.nextTick(() => this.reportError(this.fatalError));
      throw this.fatalError;
    }
    try {
      await this.native.bindNamespace(adapter.nsp.name);
    } catch (err) {
      // The connection failure itself arrives as an error event through drain(); this only
      // carries it to init()'s caller.
      throw new Error(`socket.io-amqp0-native: ${err.message}`);
    }
  }

  async detach(adapter) {
    const name = adapter.nsp.name;
    if (this.adapters.get(name) === adapter) {
      this.adapters.delete(name);
      if (this.native) this.native.releaseNamespace(name);
    }
    if (this.adapters.size === 0) await this.close();
  }

  close() {
    if (!this.closing) {
      this.closed = true;
      this.closing = this.native ? this.native.close() : Promise.resolve();
    }
    return this.closing;
  }

  stats() {
    return this.native ? this.native.stats() : null;
  }

  // Emits `error` on every adapter that listens; with no listener anywhere, logs a warning instead
  // of throwing (an EventEmitter with no `error` listener would crash the process).
  reportError(error) {
    let heard = false;
    for (const adapter of this.adapters.values()) {
      if (adapter.listenerCount('error') > 0) {
        adapter.emit('error', error);
        heard = true;
      }
    }
    if (!heard) {
      console.warn(`${LOG_PREFIX} ${error.message} (handle it with io.of('/').adapter.on('error', ...))`);
    }
  }

  _onWake() {
    let items;
    try {
      items = this.native.drain();
    } catch (err) {
      this.reportError(new Error(`socket.io-amqp0-native: draining deliveries failed: ${err.message}`));
      return;
    }
    for (const item of items) {
      try {
        if (item.kind === 'error') {
          this.reportError(new Error(`socket.io-amqp0-native: ${item.message}`));
        } else {
          const adapter = this.adapters.get(item.nsp);
          if (adapter) adapter._onRemote(item);
        }
      } catch (err) {
        // One bad delivery (or a throwing user listener) must not lose the rest of the batch.
        this.reportError(err instanceof Error ? err : new Error(String(err)));
      }
    }
  }
}

module.exports = { ClusterNode };
