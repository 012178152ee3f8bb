'use strict';
const util = require('node:util');
// Read-only, live views of the Rust room index: real Map subclasses whose reads go to Rust, so
// code written for the in-memory adapter (`adapter.rooms.get(room)`, `adapter.sids.has(id)`,
// iteration, `size`, `instanceof Map`) keeps working. Each Set handed out is a snapshot: changing
// it changes nothing. Writes throw: rooms change through socket.join()/leave().

class IndexView extends Map {
  constructor(listKeys, countKeys, hasKey, getMembers) {
    super();
    this._listKeys = listKeys;
    this._countKeys = countKeys;
    this._hasKey = hasKey;
    this._getMembers = getMembers;
  }

  get size() {
    return this._countKeys();
  }

  has(key) {
    return typeof key === 'string' && this._hasKey(key);
  }

  get(key) {
    if (typeof key !== 'string') return undefined;
    const members = this._getMembers(key);
    return members ? new Set(members) : undefined;
  }

  keys() {
    return this._listKeys()[Symbol.iterator]();
  }

  *entries() {
    for (const key of this._listKeys()) {
      const members = this._getMembers(key);
      if (members) yield [key, new Set(members)];
    }
  }

  *values() {
    for (const [, members] of this.entries()) yield members;
  }

  forEach(callback, thisArg) {
    for (const [key, members] of this.entries()) callback.call(thisArg, members, key, this);
  }

  [Symbol.iterator]() {
    return this.entries();
  }

  set() {
    throw readOnly();
  }

  delete() {
    throw readOnly();
  }

  clear() {
    throw readOnly();
  }

  // console.log(adapter.rooms) prints the contents, as it would for a Map.
  [util.inspect.custom](_depth, options, inspect) {
    return inspect(new Map(this.entries()), options);
  }
}

function readOnly() {
  return new TypeError('socket.io-amqp0-native: adapter.rooms and adapter.sids are read-only; use socket.join() and socket.leave()');
}

/** `adapter.rooms`: room name -> Set of socket ids. */
function roomsView(ns) {
  return new IndexView(
    () => ns.roomNames(),
    () => ns.roomCount(),
    (room) => ns.hasRoom(room),
    (room) => ns.roomMembers(room),
  );
}

/** `adapter.sids`: socket id -> Set of room names. */
function sidsView(ns) {
  return new IndexView(
    () => ns.socketIds(),
    () => ns.socketCount(),
    (id) => ns.hasSocket(id),
    (id) => ns.socketRooms(id),
  );
}

module.exports = { roomsView, sidsView };
