'use strict';
// Locally the adapter behaves like Socket.IO's in-memory adapter; the index itself lives in Rust.
const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { startCluster, waitFor } = require('./helpers');

describe('the local room index', () => {
  let cluster;
  let io;
  let adapter;
  before(async () => {
    cluster = await startCluster(1);
    io = cluster.ios[0];
    adapter = io.of('/').adapter;
  });
  after(() => cluster.close());

  async function connectedSocket() {
    const client = await cluster.client(0);
    return { client, socket: io.of('/').sockets.get(client.id) };
  }

  it('rooms and sids read as Maps of Sets, current right after join and leave', async () => {
    const { socket } = await connectedSocket();
    socket.join(['alpha', 'beta']);
    assert.ok(adapter.rooms.get('alpha') instanceof Set);
    assert.deepEqual([...adapter.rooms.get('alpha')], [socket.id]);
    assert.ok(adapter.rooms.has('beta'));
    assert.deepEqual([...adapter.sids.get(socket.id)], [socket.id, 'alpha', 'beta']);
    assert.deepEqual([...socket.rooms], [socket.id, 'alpha', 'beta']);
    assert.ok([...adapter.rooms.keys()].includes('alpha'));
    const asMap = new Map(adapter.rooms);
    assert.deepEqual([...asMap.get('beta')], [socket.id]);
    let visited = 0;
    adapter.sids.forEach((rooms, id) => {
      if (id === socket.id) visited = rooms.size;
    });
    assert.equal(visited, 3);

    socket.leave('alpha');
    assert.equal(adapter.rooms.get('alpha'), undefined);
    assert.ok(!adapter.rooms.has('alpha'));
    assert.deepEqual([...socket.rooms], [socket.id, 'beta']);
  });

  it('emits create-room, join-room, leave-room, delete-room in order', async () => {
    const events = [];
    const names = ['create-room', 'join-room', 'leave-room', 'delete-room'];
    const listeners = names.map((name) => {
      const listener = (...args) => events.push([name, ...args]);
      adapter.on(name, listener);
      return [name, listener];
    });
    try {
      const a = await connectedSocket();
      const b = await connectedSocket();
      events.length = 0;
      a.socket.join('ordered');
      b.socket.join('ordered');
      a.socket.join('ordered'); // already a member: no event
      a.socket.leave('ordered');
      b.socket.leave('ordered');
      assert.deepEqual(events, [
        ['create-room', 'ordered'],
        ['join-room', 'ordered', a.socket.id],
        ['join-room', 'ordered', b.socket.id],
        ['leave-room', 'ordered', a.socket.id],
        ['leave-room', 'ordered', b.socket.id],
        ['delete-room', 'ordered'],
      ]);
    } finally {
      for (const [name, listener] of listeners) adapter.off(name, listener);
    }
  });

  it('a disconnect leaves every room and forgets the socket', async () => {
    const { client, socket } = await connectedSocket();
    const id = socket.id;
    socket.join(['gone-1', 'gone-2']);
    const events = [];
    const onLeave = (room, sid) => sid === id && events.push(['leave', room]);
    const onDelete = (room) => events.push(['delete', room]);
    adapter.on('leave-room', onLeave);
    adapter.on('delete-room', onDelete);
    try {
      const disconnected = waitFor(socket, 'disconnect', 'the server side of the disconnect');
      client.disconnect();
      await disconnected;
    } finally {
      adapter.off('leave-room', onLeave);
      adapter.off('delete-room', onDelete);
    }
    assert.ok(!adapter.sids.has(id));
    assert.equal(adapter.rooms.get('gone-1'), undefined);
    assert.deepEqual(events, [
      ['leave', id],
      ['delete', id],
      ['leave', 'gone-1'],
      ['delete', 'gone-1'],
      ['leave', 'gone-2'],
      ['delete', 'gone-2'],
    ]);
    assert.equal(adapter.socketRooms(id), undefined);
  });

  it('the Set handed out is a snapshot: changing it changes nothing', async () => {
    const { socket } = await connectedSocket();
    socket.join('snap');
    adapter.rooms.get('snap').add('intruder');
    assert.deepEqual([...adapter.rooms.get('snap')], [socket.id]);
  });
});
