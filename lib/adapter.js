'use strict';
// Socket.IO's Adapter contract on top of the native node. The room index lives in Rust (see
// room-views.js for the Map-like `rooms`/`sids`); this class keeps only what needs JS objects:
// the slot -> socket id table for deliveries, and the writes to sockets. It extends the in-memory
// Adapter so `instanceof Adapter` holds, but overrides every method that touches state.
const { Adapter } = require('socket.io-adapter');
const { roomsView, sidsView } = require('./room-views');

// Bits returned by the native index (src/room_index.rs).
const ROOM_CREATED = 1;
const SOCKET_JOINED = 2;
const SOCKET_LEFT = 1;
const ROOM_DELETED = 2;

const NO_ROOMS = [];

class AmqpAdapter extends Adapter {
  constructor(nsp, cluster) {
    super(nsp);
    this._cluster = cluster;
    this._native = cluster.attach(this) ?? detachedIndex();
    this._slotIds = []; // slot (from the native index) -> socket id
    this._ready = null;
    this._closed = false;
    this.rooms = roomsView(this._native);
    this.sids = sidsView(this._native);
    const { shutdownCallbackCallback } = cluster.options;
    if (shutdownCallbackCallback) shutdownCallbackCallback(() => this.close());
  }

  /** This server's id on the bus (the same for all namespaces of one Socket.IO server). */
  get uid() {
    return this._cluster.uid;
  }

  /** Resolves once this namespace receives messages from the other servers. */
  init() {
    if (!this._ready) {
      this._ready = this._cluster.bind(this).then(() => {
        const { readyCallback } = this._cluster.options;
        if (readyCallback && !this._closed) readyCallback();
      });
    }
    return this._ready;
  }

  async close() {
    if (this._closed) return;
    this._closed = true;
    await this._cluster.detach(this);
  }

  /** Counters of the server's broker session (shared by its namespaces). */
  stats() {
    return this._cluster.stats();
  }

  serverCount() {
    return Promise.resolve(1);
  }

  addAll(id, rooms) {
    const list = rooms instanceof Set ? [...rooms] : Array.from(rooms);
    const result = this._native.addAll(id, list);
    this._slotIds[result[0]] = id;
    for (let i = 0; i < list.length; i++) {
      const change = result[i + 1];
      if (change & ROOM_CREATED) this.emit('create-room', list[i]);
      if (change & SOCKET_JOINED) this.emit('join-room', list[i], id);
    }
  }

  del(id, room) {
    const change = this._native.del(id, room);
    if (change & SOCKET_LEFT) this.emit('leave-room', room, id);
    if (change & ROOM_DELETED) this.emit('delete-room', room);
  }

  delAll(id) {
    const removal = this._native.delAll(id);
    if (!removal) return;
    this._slotIds[removal.slot] = undefined;
    for (let i = 0; i < removal.rooms.length; i++) {
      this.emit('leave-room', removal.rooms[i], id);
      if (removal.deleted[i]) this.emit('delete-room', removal.rooms[i]);
    }
  }

  socketRooms(id) {
    const rooms = this._native.socketRooms(id);
    return rooms ? new Set(rooms) : undefined;
  }

  broadcast(packet, opts) {
    const flags = opts.flags || {};
    packet.nsp = this.nsp.name;
    const encoded = toTransferable(this.encoder.encode(packet));
    const slots = this._native.broadcast(
      encoded,
      opts.rooms ? [...opts.rooms] : NO_ROOMS,
      opts.except ? [...opts.except] : NO_ROOMS,
      Boolean(flags.volatile),
      flags.compress === undefined ? undefined : Boolean(flags.compress),
      Boolean(flags.local),
    );
    this._write(slots, encoded, { preEncoded: true, volatile: flags.volatile, compress: flags.compress }, () => packet);
  }

  broadcastWithAck(packet, opts, clientCountCallback, ack) {
    const flags = opts.flags || {};
    const packetOpts = { preEncoded: true, volatile: flags.volatile, compress: flags.compress };
    packet.nsp = this.nsp.name;
    packet.id = this.nsp._ids++;
    const encoded = this.encoder.encode(packet);
    let clientCount = 0;
    this._forEachLocal(opts, (socket) => {
      clientCount++;
      socket.acks.set(packet.id, ack);
      notifyOutgoing(socket, () => packet);
      socket.client.writeToEngine(encoded, packetOpts);
    });
    clientCountCallback(clientCount);
  }

  sockets(rooms) {
    const ids = new Set();
    this._forEachLocal({ rooms }, (socket) => ids.add(socket.id));
    return Promise.resolve(ids);
  }

  fetchSockets(opts) {
    const sockets = [];
    this._forEachLocal(opts, (socket) => sockets.push(socket));
    return Promise.resolve(sockets);
  }

  addSockets(opts, rooms) {
    this._forEachLocal(opts, (socket) => socket.join(rooms));
  }

  delSockets(opts, rooms) {
    this._forEachLocal(opts, (socket) => rooms.forEach((room) => socket.leave(room)));
  }

  disconnectSockets(opts, close) {
    this._forEachLocal(opts, (socket) => socket.disconnect(close));
  }

  serverSideEmit() {
    throw new Error('socket.io-amqp0-native: serverSideEmit() is not supported yet');
  }

  persistSession() {}

  restoreSession() {
    return null;
  }

  // A broadcast from another server, already filtered to the local sockets it targets.
  _onRemote(item) {
    let decoded;
    const packet = () => {
      if (decoded === undefined) decoded = this._decode(item.packet);
      return decoded;
    };
    const packetOpts = { preEncoded: true, volatile: item.volatile, compress: item.compress ?? undefined };
    this._write(item.slots, item.packet, packetOpts, packet);
  }

  _write(slots, encoded, packetOpts, packet) {
    const sockets = this.nsp.sockets;
    for (let i = 0; i < slots.length; i++) {
      const socket = sockets.get(this._slotIds[slots[i]]);
      if (!socket) continue;
      notifyOutgoing(socket, packet);
      socket.client.writeToEngine(encoded, packetOpts);
    }
  }

  _forEachLocal(opts, callback) {
    const rooms = opts.rooms ? [...opts.rooms] : NO_ROOMS;
    const except = opts.except ? [...opts.except] : NO_ROOMS;
    // A local-only query of the index: the broadcast entry point with nothing to send.
    for (const slot of this._native.recipients(rooms, except)) {
      const socket = this.nsp.sockets.get(this._slotIds[slot]);
      if (socket) callback(socket);
    }
  }

  // Rebuilds the packet object from its encoded parts, for onAnyOutgoing listeners only.
  _decode(parts) {
    const decoder = new this.nsp.server._parser.Decoder();
    let packet = null;
    decoder.on('decoded', (p) => {
      packet = p;
    });
    for (const part of parts) decoder.add(part);
    decoder.destroy?.();
    return packet;
  }
}

function notifyOutgoing(socket, packet) {
  // Socket.IO keeps outgoing listeners in this field; decode remote packets only when one exists.
  const listeners = socket._anyOutgoingListeners;
  if (listeners === undefined ? typeof socket.notifyOutgoingListeners === 'function' : listeners.length > 0) {
    const p = packet();
    if (p) socket.notifyOutgoingListeners(p);
  }
}

// The native side takes strings and Buffers; parsers may hand out other byte views.
function toTransferable(parts) {
  for (let i = 0; i < parts.length; i++) {
    const part = parts[i];
    if (typeof part !== 'string' && !Buffer.isBuffer(part)) {
      if (ArrayBuffer.isView(part)) parts[i] = Buffer.from(part.buffer, part.byteOffset, part.byteLength);
      else if (part instanceof ArrayBuffer) parts[i] = Buffer.from(part);
      else throw new TypeError(`socket.io-amqp0-native: the parser produced a ${typeof part}, not a string or bytes`);
    }
  }
  return parts;
}

// Stands in for the native index when the broker URL was unusable, so the server still works
// locally while the error is reported.
function detachedIndex() {
  const native = require('./native');
  return native.NativeNamespace.standalone();
}

module.exports = { AmqpAdapter };
