'use strict';
// Socket.IO's Adapter contract on top of the native node. The room index lives in Rust (see
// room-views.js for the Map-like `rooms`/`sids`); this class keeps only what needs JS objects:
// the slot -> socket id table for deliveries, the writes to sockets, and the JS values of cluster
// requests. It extends the in-memory Adapter so `instanceof Adapter` holds, but overrides every
// method that touches state.
const { Adapter } = require('socket.io-adapter');
const { roomsView, sidsView } = require('./room-views');
const { encodeValue, decodeValue } = require('./payload');
const { isOffset } = require('./offsets');
const { preEncodedFrame } = require('./ws-frame');

// Bits returned by the native index (src/room_index.rs).
const ROOM_CREATED = 1;
const SOCKET_JOINED = 2;
const BINDING_PENDING = 4; // roomRouting: the created room's binding is on its way
const SOCKET_LEFT = 1;
const ROOM_DELETED = 2;

const NO_ROOMS = [];
const EVENT = 2; // socket.io-parser's PacketType.EVENT
const BROADCAST_VOLATILE = 1;
const BROADCAST_COMPRESS_SET = 2;
const BROADCAST_COMPRESS = 4;

class AmqpAdapter extends Adapter {
  constructor(nsp, cluster) {
    super(nsp);
    this._cluster = cluster;
    this._options = cluster.options;
    this._native = cluster.attach(this) ?? detachedIndex();
    this._slotIds = []; // slot (from the native index) -> socket id
    this._ready = null;
    this._readyLater = false; // init() was refused: call readyCallback when the connection is up
    this._closed = false;
    // Connection state recovery is on for this server and it has a broker session.
    this._recovery = Boolean(cluster.recovery && cluster.native);
    this.rooms = roomsView(this._native);
    this.sids = sidsView(this._native);
    const { shutdownCallbackCallback } = this._options;
    if (shutdownCallbackCallback) shutdownCallbackCallback(() => this.close());
  }

  /** This server's id on the bus (the same for all namespaces of one Socket.IO server). */
  get uid() {
    return this._cluster.uid;
  }

  /**
   * Resolves once this namespace receives messages from the other servers. When the broker cannot
   * be reached it rejects, the adapter keeps trying, and readyCallback is called when a later
   * connection binds the namespace (the `reconnect` event fires then too).
   */
  init() {
    if (!this._ready) {
      this._ready = this._cluster.bind(this).then(
        () => this._becameReady(),
        (err) => {
          this._readyLater = true;
          throw err;
        },
      );
    }
    return this._ready;
  }

  /** The connection is back (or up at last): every namespace is bound again. */
  _onReconnected() {
    if (this._readyLater) this._becameReady();
  }

  _becameReady() {
    this._readyLater = false;
    const { readyCallback } = this._options;
    if (readyCallback && !this._closed) readyCallback();
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

  /** Servers serving this namespace, this one included, as known from their heartbeats. */
  serverCount() {
    return Promise.resolve(this._native.serverCount());
  }

  // ---- the local index -------------------------------------------------------------------

  // With roomRouting, a join that creates a room returns a promise (which `socket.join()` passes
  // on) that resolves once the broker routes the room's broadcasts to this server. It never rejects:
  // socket.io does not await its own joins.
  addAll(id, rooms) {
    const list = Array.from(rooms);
    return this._joined(id, list, this._native.addAll(id, list));
  }

  // Records the socket's slot and emits the room events of a join (`result`: the native index's
  // [slot, change per room]); returns the binding promise of created rooms (room routing).
  _joined(id, list, result) {
    this._slotIds[result[0]] = id;
    let bindingPending = false;
    for (let i = 0; i < list.length; i++) {
      const change = result[i + 1];
      if (change & ROOM_CREATED) this.emit('create-room', list[i]);
      if (change & SOCKET_JOINED) this.emit('join-room', list[i], id);
      if (change & BINDING_PENDING) bindingPending = true;
    }
    if (bindingPending) return this._native.roomsBound();
  }

  del(id, room) {
    this._emitLeave(room, id, this._native.del(id, room));
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

  sockets(rooms) {
    return Promise.resolve(new Set(this._localSockets({ rooms }).map((socket) => socket.id)));
  }

  // ---- cluster operations ----------------------------------------------------------------

  broadcast(packet, opts) {
    const flags = opts.flags || {};
    packet.nsp = this.nsp.name;
    // Storable for connection state recovery (the rule of socket.io-adapter's ClusterAdapter): an
    // event without ack, neither volatile nor local. The offset goes in as the last argument, so
    // local and remote clients get the same bytes and report it back when they reconnect.
    let offset;
    if (this._recovery && packet.type === EVENT && packet.id === undefined && !flags.volatile && !flags.local) {
      offset = this._cluster.nextOffset();
      packet.data.push(offset);
    }
    const encoded = toTransferable(this.encoder.encode(packet));
    const slots = this._native.broadcast(
      encoded.length === 1 && typeof encoded[0] === 'string' ? encoded[0] : encoded,
      listOf(opts.rooms),
      listOf(opts.except),
      Boolean(flags.volatile),
      flags.compress === undefined ? undefined : Boolean(flags.compress),
      Boolean(flags.local),
      offset,
    );
    // Most broadcasts to a room have no local member: then nothing to allocate for the writes.
    if (slots) {
      this._write(slots, 0, slots.length, encoded, writeOptions(flags.volatile, flags.compress, encoded), () => packet);
    }
  }

  broadcastWithAck(packet, opts, clientCountCallback, ack) {
    const flags = opts.flags || {};
    packet.nsp = this.nsp.name;
    if (!flags.local) {
      // Encoded before a local packet id is set: each server numbers the packet itself.
      const requestId = this._native.broadcastWithAck(
        toTransferable(this.encoder.encode(packet)),
        listOf(opts.rooms),
        listOf(opts.except),
        Boolean(flags.volatile),
        flags.compress === undefined ? undefined : Boolean(flags.compress),
        flags.timeout ?? this._options.requestsTimeout,
      );
      if (requestId) {
        this._cluster.track(requestId, {
          onReply: (item) => {
            if (item.replyTo === 'clientCount') clientCountCallback(item.count);
            else ack(decodeValue(item.packet));
          },
          onDone: () => {},
        });
      }
    }
    const slots = this._native.recipients(listOf(opts.rooms), listOf(opts.except));
    clientCountCallback(this._sendWithAck(slots, packet, flags.volatile, flags.compress, ack, flags.timeout));
  }

  async fetchSockets(opts) {
    const local = this._localSockets(opts);
    if (opts.flags?.local) return local;
    const timeout = opts.flags?.timeout || this._options.requestsTimeout;
    const { requestId, expected } = this._native.fetchSockets(listOf(opts.rooms), listOf(opts.except), timeout);
    if (expected === 0) return local;
    return new Promise((resolve, reject) => {
      const found = local;
      this._cluster.track(requestId, {
        onReply: (item) => found.push(...decodeValue(item.packet)),
        onDone: ({ closed, timedOut, answered, incomplete }) => {
          if (closed) reject(new Error('socket.io-amqp0-native: the adapter was closed during fetchSockets()'));
          else if (timedOut) reject(new Error(`timeout reached: only ${answered} responses received out of ${expected}`));
          else if (incomplete) reject(incompleteError('fetchSockets()', incomplete, found));
          else resolve(found);
        },
      });
    });
  }

  addSockets(opts, rooms) {
    const list = Array.from(rooms);
    if (!opts.flags?.local) {
      this._native.socketsJoin(listOf(opts.rooms), listOf(opts.except), list);
    }
    for (const socket of this._localSockets(opts)) socket.join(list);
  }

  delSockets(opts, rooms) {
    const list = Array.from(rooms);
    if (!opts.flags?.local) {
      this._native.socketsLeave(listOf(opts.rooms), listOf(opts.except), list);
    }
    for (const socket of this._localSockets(opts)) for (const room of list) socket.leave(room);
  }

  disconnectSockets(opts, close) {
    if (!opts.flags?.local) {
      this._native.disconnectSockets(listOf(opts.rooms), listOf(opts.except), Boolean(close));
    }
    for (const socket of this._localSockets(opts)) socket.disconnect(close);
  }

  serverSideEmit(packet) {
    const withAck = typeof packet[packet.length - 1] === 'function';
    const ack = withAck ? packet.pop() : null;
    const args = encodeValue(packet);
    const ackTimeout = withAck ? this._options.requestsTimeout : undefined;
    const { requestId, expected } = this._native.serverSideEmit(args, ackTimeout);
    if (!withAck) return;
    if (expected === 0) {
      queueMicrotask(() => ack(null, []));
      return;
    }
    const replies = [];
    this._cluster.track(requestId, {
      onReply: (item) => replies.push(decodeValue(item.packet)),
      onDone: ({ closed, timedOut, answered, incomplete }) => {
        if (closed) ack(new Error('socket.io-amqp0-native: the adapter was closed during serverSideEmit()'), replies);
        else if (timedOut) ack(new Error(`timeout reached: only ${answered} responses received out of ${expected}`), replies);
        else if (incomplete) ack(incompleteError('serverSideEmit()', incomplete, replies), replies);
        else ack(null, replies);
      },
    });
  }

  // ---- connection state recovery (see src/recovery/) -------------------------------------

  /** Socket.IO calls this when a socket disconnects in a recoverable way: the session goes to the log. */
  persistSession(session) {
    if (!this._recovery) return;
    this._native.persistSession(session.sid, session.pid, [...session.rooms], encodeValue(session.data ?? null));
  }

  /**
   * Socket.IO calls this when a client reconnects with `{ pid, offset }`. Resolves to the session
   * (with the packets the client missed, decoded, each ending with its offset) or null: unknown,
   * already used, expired, offset not in the log, or recovery unavailable. Never rejects.
   */
  async restoreSession(pid, offset) {
    if (!this._recovery || typeof pid !== 'string' || !isOffset(offset)) return null;
    let found;
    try {
      found = await this._native.restoreSession(pid, offset);
    } catch (err) {
      return this._notRestored(err);
    }
    if (!found || this._closed) return null;
    let joined = false;
    try {
      // Same JS turn as the result: the socket enters the index and the recording of live packets
      // ends together (src/recovery/recorder.rs), so nothing is lost or sent twice at the hand-off.
      const finished = this._native.finishRestore(found.handle, found.sid);
      if (!finished) return null;
      this._joined(found.sid, found.rooms, finished.joined);
      joined = true;
      const missedPackets = [];
      for (const parts of found.packets) missedPackets.push(this._decodePacket(parts).data);
      for (const parts of finished.packets) missedPackets.push(this._decodePacket(parts).data);
      return { sid: found.sid, pid, rooms: found.rooms, data: decodeValue(found.data), missedPackets };
    } catch (err) {
      // E.g. a stored packet this server's parser cannot read (servers with different parsers).
      if (joined) this.delAll(found.sid);
      return this._notRestored(err);
    }
  }

  // A restore that failed unexpectedly: reported, and the client connects as a new one.
  _notRestored(err) {
    this._cluster.reportError(new Error(`socket.io-amqp0-native: a session was not restored: ${err.message}`));
    return null;
  }

  // ---- work from other servers (see ClusterNode._route) ----------------------------------

  _onRemote(item) {
    switch (item.kind) {
      case 'broadcast': // with an ack request (the others come through _deliverRemote)
        return this._deliverRemoteWithAck(item);
      case 'rooms':
        return this._emitRemoteRoomChanges(item);
      case 'disconnectSockets':
        for (const socket of this._socketsAt(item.slots)) socket.disconnect(item.close);
        return undefined;
      case 'fetch':
        return this._answerFetch(item);
      case 'serverSideEmit':
        return this._onServerSideEmit(item);
      default:
        throw new Error(`socket.io-amqp0-native: unknown work kind "${item.kind}"`);
    }
  }

  // A broadcast from another server: `encoded` (one text, or parts) to the sockets at
  // `slots[start..end]`; `flags` as ClusterNode's batch columns give them.
  _deliverRemote(slots, start, end, encoded, flags) {
    const parts = typeof encoded === 'string' ? [encoded] : encoded;
    let decoded;
    const packet = () => {
      if (decoded === undefined) decoded = this._decodePacket(parts);
      return decoded;
    };
    // The flags come as bits (BROADCAST_* in src/bindings/adapter.rs).
    const volatile = (flags & BROADCAST_VOLATILE) !== 0;
    const compress = flags & BROADCAST_COMPRESS_SET ? (flags & BROADCAST_COMPRESS) !== 0 : undefined;
    this._write(slots, start, end, parts, writeOptions(volatile, compress, parts), packet);
  }

  _deliverRemoteWithAck(item) {
    const { from, requestId } = item;
    const packet = this._decodePacket(item.packet);
    const reply = (arg) => {
      this._native.replyAck(from, requestId, encodeValue(arg));
    };
    const count = this._sendWithAck(item.slots, packet, item.volatile, item.compress ?? undefined, reply, item.timeoutMs);
    this._native.replyClientCount(from, requestId, count);
  }

  _emitRemoteRoomChanges(item) {
    for (let i = 0; i < item.rooms.length; i++) {
      const room = item.rooms[i];
      const id = item.ids[i];
      if (item.joined) {
        if (item.changes[i] & ROOM_CREATED) this.emit('create-room', room);
        if (item.changes[i] & SOCKET_JOINED) this.emit('join-room', room, id);
      } else {
        this._emitLeave(room, id, item.changes[i]);
      }
    }
  }

  _answerFetch(item) {
    const sockets = this._socketsAt(item.slots).map((socket) => {
      // sessionStore (express-session) may hold circular references and means nothing remotely.
      const { sessionStore, ...handshake } = socket.handshake;
      return { id: socket.id, handshake, rooms: [...socket.rooms], data: socket.data };
    });
    this._native.replyFetch(item.from, item.requestId, sockets.length ? encodeValue(sockets) : []);
  }

  _onServerSideEmit(item) {
    const args = decodeValue(item.packet);
    if (item.requestId === undefined || item.requestId === null) {
      this.nsp._onServerSideEmit(args);
      return;
    }
    let answered = false;
    const reply = (arg) => {
      if (answered) return; // one reply per server, as Socket.IO's cluster adapter
      answered = true;
      this._native.replyServerSideEmit(item.from, item.requestId, encodeValue(arg));
    };
    this.nsp._onServerSideEmit([...args, reply]);
  }

  // ---- helpers ---------------------------------------------------------------------------

  _emitLeave(room, id, change) {
    if (change & SOCKET_LEFT) this.emit('leave-room', room, id);
    if (change & ROOM_DELETED) this.emit('delete-room', room);
  }

  // Writes `encoded` to the sockets in `slots`; `packet()` gives the packet object for
  // onAnyOutgoing listeners (decoded lazily for packets from other servers).
  _write(slots, start, end, encoded, packetOpts, packet) {
    const sockets = this.nsp.sockets;
    for (let i = start; i < end; i++) {
      const socket = sockets.get(this._slotIds[slots[i]]);
      if (!socket) continue;
      notifyOutgoing(socket, packet);
      socket.client.writeToEngine(encoded, packetOpts);
    }
  }

  // Sends `packet` with a fresh local id to the sockets in `slots`, routing each client's
  // acknowledgement to `ack`; forgets the pending acks after `timeoutMs`. Returns the client count.
  _sendWithAck(slots, packet, volatile, compress, ack, timeoutMs) {
    const sockets = this._socketsAt(slots);
    if (sockets.length === 0) return 0;
    packet.id = this.nsp._ids++;
    const id = packet.id;
    const encoded = this.encoder.encode(packet);
    const packetOpts = writeOptions(volatile, compress, encoded);
    for (const socket of sockets) {
      socket.acks.set(id, ack);
      notifyOutgoing(socket, () => packet);
      socket.client.writeToEngine(encoded, packetOpts);
    }
    if (timeoutMs) {
      // Clients that never answer must not leave entries behind in socket.acks.
      setTimeout(() => {
        for (const socket of sockets) if (socket.acks.get(id) === ack) socket.acks.delete(id);
      }, timeoutMs).unref();
    }
    return sockets.length;
  }

  _socketsAt(slots) {
    const out = [];
    for (let i = 0; i < slots.length; i++) {
      const socket = this.nsp.sockets.get(this._slotIds[slots[i]]);
      if (socket) out.push(socket);
    }
    return out;
  }

  _localSockets(opts) {
    return this._socketsAt(this._native.recipients(listOf(opts.rooms), listOf(opts.except)));
  }

  // Rebuilds a packet from its encoded parts with the Server's own parser.
  _decodePacket(parts) {
    const decoder = new this.nsp.server._parser.Decoder();
    let packet = null;
    decoder.on('decoded', (p) => {
      packet = p;
    });
    for (const part of parts) decoder.add(part);
    decoder.destroy?.();
    if (!packet) throw new Error('socket.io-amqp0-native: an incomplete packet arrived from another server');
    return packet;
  }
}

/**
 * A request whose answer lacks some servers' replies (a server left before answering, or joined the
 * namespace meanwhile and did not answer): an error saying which, carrying what did arrive.
 */
function incompleteError(operation, reason, partial) {
  const error = new Error(`socket.io-amqp0-native: ${operation} is incomplete: ${reason}`);
  error.code = 'INCOMPLETE';
  error.partial = partial;
  return error;
}

// A room Set as the native calls take it: one room as the string itself (no array to read).
function listOf(set) {
  if (!set || set.size === 0) return NO_ROOMS;
  return set.size === 1 ? set.values().next().value : [...set];
}

// The options of a write of `encoded` to many sockets, every write path's: its WebSocket frame is
// built once (ws-frame.js).
function writeOptions(volatile, compress, encoded) {
  return { preEncoded: true, volatile, compress, wsPreEncodedFrame: preEncodedFrame(encoded) };
}

function notifyOutgoing(socket, packet) {
  if (hasOutgoingListeners(socket)) socket.notifyOutgoingListeners(packet());
}

// Decoding a remote packet costs more than writing it: only for a socket with onAnyOutgoing
// listeners. Every Socket.IO this package supports (peer ^4.7) keeps them in
// `_anyOutgoingListeners`, unset until the first one. (Asking `listenersAnyOutgoing()` instead
// would make an empty array per socket and delivery.)
function hasOutgoingListeners(socket) {
  const listeners = socket._anyOutgoingListeners;
  return listeners !== undefined && listeners.length > 0;
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
  return require('./native').NativeNamespace.standalone();
}

module.exports = { AmqpAdapter };
