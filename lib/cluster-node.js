'use strict';
// One broker session per Socket.IO server, shared by the adapters of all its namespaces: wraps the
// native node, routes drained work to the right adapter or pending request, and reports errors.
const native = require('./native');
const { namespaceHandle } = require('./namespace-handle');
const { urlProblem, brokerSettings, recoverySettings } = require('./options');
const { OffsetSequence } = require('./offsets');
const { endOfTurn } = require('./end-of-turn');

const LOG_PREFIX = '[socket.io-amqp0-native]';

class ClusterNode {
  // `serverOptions`: the Socket.IO server's own options (its connectionStateRecovery).
  constructor(options, serverOptions) {
    this.options = options;
    this.recovery = recoverySettings(options, serverOptions);
    this._offsets = null; // made with the first offset: it needs the native uid
    this.adapters = new Map(); // namespace name -> AmqpAdapter
    this.requests = new Map(); // request id -> { onReply(item), onDone(outcome) }
    this.closed = false;
    const problem = options.amqpUrls.map(urlProblem).find(Boolean);
    // A URL that cannot work fails every namespace the same way a refused connection does.
    this.fatalError = problem ? new Error(`socket.io-amqp0-native: ${problem}`) : null;
    this.native = this.fatalError
      ? null
      : new native.NativeNode(
          {
            broker: brokerSettings(options),
            queuePrefix: options.queuePrefix,
            instanceName: options.instanceName,
            prefetch: options.prefetch,
            maxPendingDeliveries: options.maxPendingDeliveries,
            heartbeatIntervalMs: options.heartbeatInterval,
            heartbeatTimeoutMs: options.heartbeatTimeout,
            roomRouting: options.roomRouting,
            queueExpiryMs: options.queueExpiry,
            recovery: this.recovery,
          },
          () => this._onWake(),
        );
    this.closing = null;
    this._sendAtEndOfTurn = endOfTurn(
      () => this.native.sendQueued(),
      (err) => this.reportError(new Error(`socket.io-amqp0-native: sending failed: ${err.message}`)),
    );
  }

  // Native calls that publish only queue: what they queued leaves at the end of this JS turn.
  sendSoon() {
    if (this.native) this._sendAtEndOfTurn();
  }

  /** Connection state recovery: the offset of this server's next stored packet (lib/offsets.js). */
  nextOffset() {
    this._offsets ??= new OffsetSequence(this.native.uid);
    return this._offsets.next();
  }

  get uid() {
    return this.native ? this.native.uid : null;
  }

  attach(adapter) {
    const name = adapter.nsp.name;
    if (this.adapters.has(name)) this.adapters.get(name)._detached = true;
    this.adapters.set(name, adapter);
    return this.native ? namespaceHandle(this.native.namespace(name), this) : null;
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

  /** Routes the replies and the end of request `id` (from the native side) to `handler`. */
  track(id, handler) {
    this.requests.set(id, handler);
  }

  close() {
    if (!this.closing) {
      this.closed = true;
      this.closing = this.native ? this.native.close() : Promise.resolve();
      // Nothing will answer any more: end what still waits instead of leaving it hanging.
      const pending = [...this.requests.values()];
      this.requests.clear();
      for (const handler of pending) handler.onDone({ closed: true, timedOut: false, answered: 0, incomplete: null });
    }
    return this.closing;
  }

  stats() {
    return this.native ? this.native.stats() : null;
  }

  // Emits `error` on every adapter that listens; with no listener anywhere, logs a warning instead
  // of throwing (an EventEmitter with no `error` listener would crash the process).
  reportError(error) {
    if (!this._emitToListeners('error', error)) {
      console.warn(`${LOG_PREFIX} ${error.message} (handle it with io.of('/').adapter.on('error', ...))`);
    }
  }

  // Emits `event` on every adapter that listens for it; false when none does.
  _emitToListeners(event, ...args) {
    let heard = false;
    for (const adapter of this.adapters.values()) {
      if (adapter.listenerCount(event) > 0) {
        adapter.emit(event, ...args);
        heard = true;
      }
    }
    return heard;
  }

  _onWake() {
    let batch;
    try {
      batch = this.native.drain();
    } catch (err) {
      this.reportError(new Error(`socket.io-amqp0-native: draining deliveries failed: ${err.message}`));
      return;
    }
    // The batch's plain broadcasts and its other items, merged back into arrival order.
    const { items, itemsAfter } = batch;
    let delivered = 0;
    for (let i = 0; i < items.length; i++) {
      delivered = this._deliverBroadcasts(batch, delivered, itemsAfter[i]);
      this._guarded(() => this._route(items[i]));
    }
    this._deliverBroadcasts(batch, delivered, batch.packets.length);
  }

  // Broadcasts `from` to `to` of a drained batch (its columns: DrainedBatch in
  // src/bindings/adapter.rs). Returns `to`.
  _deliverBroadcasts(batch, from, to) {
    const { namespaces, broadcasts, slots, packets } = batch;
    for (let i = from; i < to; i++) {
      const at = 3 * i;
      const adapter = this.adapters.get(namespaces[broadcasts[at]]);
      if (adapter === undefined) continue;
      const start = i === 0 ? 0 : broadcasts[at - 2];
      try {
        adapter._deliverRemote(slots, start, broadcasts[at + 1], packets[i], broadcasts[at + 2]);
      } catch (err) {
        this._reportThrown(err);
      }
    }
    return to;
  }

  // One bad delivery (or a throwing user listener) must not lose the rest of the batch.
  _guarded(work) {
    try {
      work();
    } catch (err) {
      this._reportThrown(err);
    }
  }

  _reportThrown(err) {
    this.reportError(err instanceof Error ? err : new Error(String(err)));
  }

  _route(item) {
    switch (item.kind) {
      case 'error':
        this.reportError(new Error(`socket.io-amqp0-native: ${item.message}`));
        break;
      case 'connectionLost': {
        const error = new Error(`socket.io-amqp0-native: ${item.message}; reconnecting`);
        if (!this._emitToListeners('disconnect', error)) console.warn(`${LOG_PREFIX} ${error.message}`);
        break;
      }
      case 'reconnected':
        for (const adapter of this.adapters.values()) adapter._onReconnected();
        if (!this._emitToListeners('reconnect', item.attempts)) {
          console.warn(`${LOG_PREFIX} reconnected to the broker after ${item.attempts} attempt(s)`);
        }
        break;
      case 'dropped':
        // Lost messages always leave a trace in the log, listener or not.
        this._emitToListeners('dropped', item.count);
        console.warn(`${LOG_PREFIX} the publish buffer is full: dropped the ${item.count} oldest message(s)`);
        break;
      case 'missed': {
        // A sequence gap: messages another server sent here never arrived. Always logged.
        const info = { count: item.count, from: item.from, routingKey: item.routingKey };
        this._emitToListeners('missed', info);
        console.warn(
          `${LOG_PREFIX} ${item.count} message(s) from ${item.from} to "${item.routingKey}" never arrived (a broker restart or an expired queue)`,
        );
        break;
      }
      case 'reply':
        this.requests.get(item.requestId)?.onReply(item);
        break;
      case 'done': {
        const handler = this.requests.get(item.requestId);
        this.requests.delete(item.requestId);
        handler?.onDone({ closed: false, timedOut: item.timedOut, answered: item.answered, incomplete: item.incomplete ?? null });
        break;
      }
      default:
        this.adapters.get(item.nsp)?._onRemote(item);
    }
  }
}

module.exports = { ClusterNode };
