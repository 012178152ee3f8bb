'use strict';
// The emitter: reaches the clients and servers of a Socket.IO cluster from a process that is not a
// Socket.IO server (a worker, a cron job), through the adapters' exchange. The API follows
// @socket.io/redis-emitter: `emitter.to(room).emit(...)`, `emitter.of('/nsp')`, `socketsJoin`, ...
const { randomBytes } = require('node:crypto');
const { EventEmitter } = require('node:events');
const native = require('./native');
const { normalizeOptions, urlProblem, brokerSettings } = require('./options');
const { encodeValue } = require('./payload');
const { OffsetSequence } = require('./offsets');
const { endOfTurn } = require('./end-of-turn');

const LOG_PREFIX = '[socket.io-amqp0-native emitter]';
// Events a Socket.IO client reserves for itself (as Socket.IO's own emitters refuse them).
const RESERVED_EVENTS = new Set(['connect', 'connect_error', 'disconnect', 'disconnecting', 'newListener', 'removeListener']);
const EVENT = 2;

// Connection events (error, disconnect, reconnect, dropped) are heard with emitter.on(); emit()
// itself is Socket.IO's broadcast, so the class delegates listening to an inner EventEmitter.
class Emitter {
  /**
   * `new Emitter(url, options?)` or `new Emitter({ amqpUrl, ...options })`. Options: exchangeName,
   * connectTimeout, reconnectDelay, reconnectDelayMax, publishBufferSize, tls, parser (the servers'
   * parser, e.g. socket.io-msgpack-parser; default socket.io-parser).
   */
  constructor(urlOrOptions, maybeOptions) {
    const options = normalizeOptions(urlOrOptions, maybeOptions, 'emitter');
    const problem = options.amqpUrls.map(urlProblem).find(Boolean);
    if (problem) throw new TypeError(`socket.io-amqp0-native: ${problem}`);
    this._encoder = new (options.parser ?? require('socket.io-parser')).Encoder();
    // Connection state recovery: broadcasts get offsets and a copy in the recovery log, so clients
    // that were disconnected receive them when they recover (the servers must have it on too).
    this._recoverable = Boolean(options.recoverable);
    this._offsets = new OffsetSequence(`e${randomBytes(8).toString('hex')}`);
    this._native = new native.NativeEmitter(brokerSettings(options), ([kind, detail]) => this._onEvent(kind, detail));
    this._root = new BroadcastOperator(this, '/', new Set(), new Set(), {});
    this._closing = null;
    // Publishing calls only queue: what a turn queued leaves at its end, as with the adapter.
    this._sendSoon = endOfTurn(
      () => this._native.sendQueued(),
      (err) => this._onEvent('error', `sending failed: ${err.message}`),
    );
    this._events = new EventEmitter();
  }

  /** Listens for `error`, `disconnect` (Error), `reconnect` (attempts) or `dropped` (count). */
  on(event, listener) {
    this._events.on(event, listener);
    return this;
  }

  once(event, listener) {
    this._events.once(event, listener);
    return this;
  }

  off(event, listener) {
    this._events.off(event, listener);
    return this;
  }

  /** Resolves once connected to the broker; rejects with the first connection error. */
  ready() {
    return this._native.ready().catch((err) => {
      throw new Error(`socket.io-amqp0-native: ${err.message}`);
    });
  }

  /** Sends what is still buffered, then closes the connection. */
  close() {
    if (!this._closing) this._closing = this._native.close();
    return this._closing;
  }

  /** Counters: published, dropped, and the gauge buffered. */
  stats() {
    return this._native.stats();
  }

  of(nsp) {
    if (typeof nsp !== 'string' || !nsp.startsWith('/')) {
      throw new TypeError('socket.io-amqp0-native: a namespace is a string starting with "/"');
    }
    return new BroadcastOperator(this, nsp, new Set(), new Set(), {});
  }

  emit(ev, ...args) {
    return this._root.emit(ev, ...args);
  }

  to(room) {
    return this._root.to(room);
  }

  in(room) {
    return this._root.in(room);
  }

  except(room) {
    return this._root.except(room);
  }

  get volatile() {
    return this._root.volatile;
  }

  compress(compress) {
    return this._root.compress(compress);
  }

  socketsJoin(rooms) {
    this._root.socketsJoin(rooms);
  }

  socketsLeave(rooms) {
    this._root.socketsLeave(rooms);
  }

  disconnectSockets(close = false) {
    this._root.disconnectSockets(close);
  }

  serverSideEmit(ev, ...args) {
    this._root.serverSideEmit(ev, ...args);
  }

  _onEvent(kind, detail) {
    const events = {
      error: () => ['error', new Error(`socket.io-amqp0-native: ${detail}`)],
      disconnect: () => ['disconnect', new Error(`socket.io-amqp0-native: ${detail}; reconnecting`)],
      reconnect: () => ['reconnect', Number(detail)],
      dropped: () => ['dropped', Number(detail)],
    };
    const [event, arg] = events[kind]();
    const heard = this._events.listenerCount(event) > 0;
    if (heard) this._events.emit(event, arg);
    // Dropped messages always leave a trace in the log, listener or not.
    if (!heard || kind === 'dropped') console.warn(`${LOG_PREFIX} ${event}: ${arg instanceof Error ? arg.message : arg}`);
  }
}

/** An immutable selection of target sockets, like Socket.IO's BroadcastOperator. */
class BroadcastOperator {
  constructor(emitter, nsp, rooms, exceptRooms, flags) {
    this._emitter = emitter;
    this._nsp = nsp;
    this._rooms = rooms;
    this._except = exceptRooms;
    this._flags = flags;
  }

  to(room) {
    const rooms = new Set(this._rooms);
    for (const r of Array.isArray(room) ? room : [room]) rooms.add(r);
    return new BroadcastOperator(this._emitter, this._nsp, rooms, this._except, this._flags);
  }

  in(room) {
    return this.to(room);
  }

  except(room) {
    const exceptRooms = new Set(this._except);
    for (const r of Array.isArray(room) ? room : [room]) exceptRooms.add(r);
    return new BroadcastOperator(this._emitter, this._nsp, this._rooms, exceptRooms, this._flags);
  }

  get volatile() {
    return new BroadcastOperator(this._emitter, this._nsp, this._rooms, this._except, { ...this._flags, volatile: true });
  }

  compress(compress) {
    return new BroadcastOperator(this._emitter, this._nsp, this._rooms, this._except, { ...this._flags, compress: Boolean(compress) });
  }

  /** Emits to the selected sockets of every server. Acknowledgements are not supported. */
  emit(ev, ...args) {
    if (RESERVED_EVENTS.has(ev)) throw new Error(`socket.io-amqp0-native: "${ev}" is a reserved event name`);
    if (typeof args[args.length - 1] === 'function') {
      throw new Error('socket.io-amqp0-native: the emitter does not support acknowledgements');
    }
    const data = [ev, ...args];
    const offset = this._emitter._recoverable && !this._flags.volatile ? this._emitter._offsets.next() : undefined;
    if (offset) data.push(offset);
    const parts = toTransferable(this._emitter._encoder.encode({ type: EVENT, data, nsp: this._nsp }));
    this._emitter._native.broadcast(
      this._nsp,
      parts,
      [...this._rooms],
      [...this._except],
      Boolean(this._flags.volatile),
      this._flags.compress,
      offset,
    );
    this._emitter._sendSoon();
    return true;
  }

  socketsJoin(rooms) {
    this._emitter._native.socketsJoin(this._nsp, [...this._rooms], [...this._except], roomList(rooms));
    this._emitter._sendSoon();
  }

  socketsLeave(rooms) {
    this._emitter._native.socketsLeave(this._nsp, [...this._rooms], [...this._except], roomList(rooms));
    this._emitter._sendSoon();
  }

  disconnectSockets(close = false) {
    this._emitter._native.disconnectSockets(this._nsp, [...this._rooms], [...this._except], Boolean(close));
    this._emitter._sendSoon();
  }

  /** Reaches every server of the namespace (`io.on(ev, ...)` there). Acknowledgements are not supported. */
  serverSideEmit(ev, ...args) {
    if (typeof args[args.length - 1] === 'function') {
      throw new Error('socket.io-amqp0-native: the emitter does not support acknowledgements');
    }
    this._emitter._native.serverSideEmit(this._nsp, encodeValue([ev, ...args]));
    this._emitter._sendSoon();
  }
}

function roomList(rooms) {
  return Array.isArray(rooms) ? rooms : [rooms];
}

// The native side takes strings and Buffers; parsers may hand out other byte views.
function toTransferable(parts) {
  return parts.map((part) =>
    typeof part === 'string' || Buffer.isBuffer(part) ? part : Buffer.from(part.buffer ?? part, part.byteOffset ?? 0, part.byteLength),
  );
}

module.exports = { Emitter };
