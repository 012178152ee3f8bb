'use strict';
// The adapter's handle on its native namespace: the same methods, except that those which queue a
// publish also schedule the send (ClusterNode.sendSoon: one wake-up of the broker thread per JS
// turn). No call site in the adapter has to remember it, and a new publishing call cannot forget.

const PUBLISHING = new Set([
  'broadcastWithAck',
  'socketsJoin',
  'socketsLeave',
  'disconnectSockets',
  'fetchSockets',
  'serverSideEmit',
  'replyFetch',
  'replyServerSideEmit',
  'replyClientCount',
  'replyAck',
  'persistSession',
]);

function namespaceHandle(native, cluster) {
  const handle = {};
  // napi methods need the native object as receiver: bind each one once, here.
  for (const name of Object.getOwnPropertyNames(Object.getPrototypeOf(native))) {
    if (name === 'constructor' || typeof native[name] !== 'function') continue;
    const method = native[name].bind(native);
    handle[name] = PUBLISHING.has(name)
      ? (...args) => {
          const result = method(...args);
          cluster.sendSoon();
          return result;
        }
      : method;
  }
  // A local broadcast publishes nothing: no wake-up for it.
  handle.broadcast = (packet, rooms, except, volatile, compress, localOnly, offset) => {
    const slots = native.broadcast(packet, rooms, except, volatile, compress, localOnly, offset);
    if (!localOnly) cluster.sendSoon();
    return slots;
  };
  return handle;
}

module.exports = { namespaceHandle };
