'use strict';
const { normalizeOptions } = require('./lib/options');
const { ClusterNode } = require('./lib/cluster-node');
const { AmqpAdapter } = require('./lib/adapter');
const { Emitter } = require('./lib/emitter');

/**
 * Creates the adapter factory for `io.adapter(...)`:
 * `createAdapter('amqp://localhost', options?)` or `createAdapter({ amqpUrl, ...options })`.
 *
 * Each Socket.IO server that uses the result gets its own broker connection (and uid), shared by
 * all of its namespaces; it is opened with the first namespace and closed with the last.
 */
function createAdapter(urlOrOptions, maybeOptions) {
  const options = normalizeOptions(urlOrOptions, maybeOptions);
  const nodes = new WeakMap(); // Socket.IO server -> ClusterNode

  function AmqpAdapterFactory(nsp) {
    let node = nodes.get(nsp.server);
    if (!node || node.closed) {
      node = new ClusterNode(options, nsp.server.opts);
      nodes.set(nsp.server, node);
    }
    return new AmqpAdapter(nsp, node);
  }
  return AmqpAdapterFactory;
}

module.exports = { createAdapter, AmqpAdapter, Emitter };
