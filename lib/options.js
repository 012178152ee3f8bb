'use strict';
// Validates the arguments of createAdapter() and new Emitter() and fills in defaults. Wrong types
// and unknown options throw a TypeError at once; a URL that is a string but unusable is reported
// later, like an unreachable broker (error event + rejected init()/ready()), so every broker problem
// surfaces the same way.
const os = require('node:os');

const DEFAULTS = Object.freeze({
  exchangeName: 'socket.io',
  queuePrefix: 'socket.io',
  connectTimeout: 5000,
  prefetch: 256,
  publishBufferSize: 10000,
  maxPendingDeliveries: 1024,
  requestsTimeout: 5000,
  heartbeatInterval: 5000,
  heartbeatTimeout: 10000,
  reconnectDelay: 500,
  reconnectDelayMax: 30000,
  roomRouting: false,
});

const STRINGS = ['exchangeName', 'queuePrefix', 'instanceName', 'recoveryStream'];
const COUNTS = {
  connectTimeout: [1, 600000],
  prefetch: [1, 65535],
  publishBufferSize: [1, 10000000],
  maxPendingDeliveries: [1, 10000000],
  requestsTimeout: [1, 3600000],
  heartbeatInterval: [1, 3600000],
  heartbeatTimeout: [1, 3600000],
  reconnectDelay: [1, 3600000],
  reconnectDelayMax: [1, 3600000],
  queueExpiry: [1000, 2147483647],
  recoveryMaxAge: [1000, 2147483647],
  recoveryMaxBytes: [1048576, Number.MAX_SAFE_INTEGER],
};
const COMMON = [
  'amqpUrl',
  'tls',
  'exchangeName',
  'queuePrefix',
  'instanceName',
  'connectTimeout',
  'publishBufferSize',
  'reconnectDelay',
  'reconnectDelayMax',
];

/** What each entry point accepts, and how its errors name the call. */
const KINDS = {
  adapter: {
    call: 'createAdapter',
    known: new Set([
      ...COMMON,
      'readyCallback',
      'shutdownCallbackCallback',
      'prefetch',
      'maxPendingDeliveries',
      'requestsTimeout',
      'heartbeatInterval',
      'heartbeatTimeout',
      'roomRouting',
      'queueExpiry',
      'recoveryStream',
      'recoveryMaxAge',
      'recoveryMaxBytes',
    ]),
  },
  // queuePrefix and instanceName are accepted so one options object can serve the adapter and the
  // emitter; the emitter has no queue, so they change nothing there.
  emitter: { call: 'new Emitter', known: new Set([...COMMON, 'parser', 'recoverable']) },
};

// AMQP short strings (exchange and queue names) are at most 255 bytes; the queue name adds the
// instance name and a 16-character uid.
const MAX_NAME_BYTES = 255;

function fail(message) {
  throw new TypeError(`socket.io-amqp0-native: ${message}`);
}

function isPlainObject(value) {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

function normalizeOptions(urlOrOptions, maybeOptions, kind = 'adapter') {
  const { call, known } = KINDS[kind];
  let options;
  if (typeof urlOrOptions === 'string' || Array.isArray(urlOrOptions)) {
    if (maybeOptions !== undefined && !isPlainObject(maybeOptions)) fail(`${call}(url, options): options must be an object`);
    if (maybeOptions && 'amqpUrl' in maybeOptions) fail(`${call}(url, options): give the URL once, not also as options.amqpUrl`);
    options = { ...maybeOptions, amqpUrl: urlOrOptions };
  } else if (isPlainObject(urlOrOptions)) {
    if (maybeOptions !== undefined) fail(`${call}(options) takes one argument`);
    options = { ...urlOrOptions };
  } else {
    fail(
      `${call}() needs a broker URL: ${call}('amqp://localhost', options?) or ` +
        `${call}({ amqpUrl: 'amqp://localhost', ...options }); for a RabbitMQ cluster, an array of URLs`,
    );
  }

  if ('amqpConnection' in options) {
    fail(
      'the amqpConnection option of socket.io-amqp0 is not supported: this adapter opens its own ' +
        `connection from a URL. Pass it instead: ${call}({ amqpUrl: 'amqp://user:pass@host:5672/vhost', ... })`,
    );
  }
  if ('sidRoomRouting' in options) {
    fail(
      'the sidRoomRouting option of socket.io-amqp0 is not supported: servers that do not hold the ' +
        'socket drop a message to a socket id without waking their event loop (per-room bindings for ' +
        'named rooms are the roomRouting option). Remove the option.',
    );
  }
  for (const key of Object.keys(options)) {
    if (!known.has(key)) fail(`unknown option "${key}" (known: ${[...known].join(', ')})`);
  }
  if (options.amqpUrl === undefined) fail('the amqpUrl option is required');
  const urls = Array.isArray(options.amqpUrl) ? options.amqpUrl : [options.amqpUrl];
  if (urls.length === 0 || !urls.every((url) => typeof url === 'string' && url.length > 0)) {
    fail('amqpUrl must be a non-empty string or a non-empty array of them');
  }
  for (const key of STRINGS) {
    const value = options[key];
    if (value !== undefined && (typeof value !== 'string' || value.length === 0)) fail(`${key} must be a non-empty string`);
  }
  for (const key of ['readyCallback', 'shutdownCallbackCallback']) {
    if (options[key] !== undefined && typeof options[key] !== 'function') fail(`${key} must be a function`);
  }
  for (const key of ['roomRouting', 'recoverable']) {
    if (options[key] !== undefined && typeof options[key] !== 'boolean') fail(`${key} must be a boolean`);
  }
  for (const [key, [min, max]] of Object.entries(COUNTS)) {
    const value = options[key];
    if (value !== undefined && (!Number.isInteger(value) || value < min || value > max)) {
      fail(`${key} must be an integer from ${min} to ${max}`);
    }
  }
  if (options.tls !== undefined) {
    const { tls } = options;
    if (!isPlainObject(tls) || Object.keys(tls).some((key) => key !== 'ca')) fail('tls must be an object { ca }');
    if (tls.ca !== undefined && typeof tls.ca !== 'string' && !Buffer.isBuffer(tls.ca)) fail('tls.ca must be a PEM string or Buffer');
  }
  if (options.parser !== undefined && typeof options.parser?.Encoder !== 'function') {
    fail('parser must be a Socket.IO parser (an object with an Encoder class), e.g. require("socket.io-msgpack-parser")');
  }

  const resolved = { ...DEFAULTS, instanceName: os.hostname(), ...options, amqpUrls: urls };
  delete resolved.amqpUrl;
  if (resolved.reconnectDelayMax < resolved.reconnectDelay) fail('reconnectDelayMax must be at least reconnectDelay');
  if (kind === 'adapter' && resolved.queueExpiry === undefined) resolved.queueExpiry = defaultQueueExpiry(resolved);
  if (resolved.heartbeatTimeout <= resolved.heartbeatInterval) {
    fail('heartbeatTimeout must be longer than heartbeatInterval, or live servers would be dropped');
  }
  if (Buffer.byteLength(resolved.exchangeName) > MAX_NAME_BYTES) fail('exchangeName is longer than 255 bytes');
  const queueBytes = Buffer.byteLength(`${resolved.queuePrefix}.${resolved.instanceName}.`) + 16;
  if (queueBytes > MAX_NAME_BYTES) fail('queuePrefix and instanceName together are too long for a queue name');
  return resolved;
}

/** The recovery log's default size cap: 1 GiB. */
const DEFAULT_RECOVERY_MAX_BYTES = 1024 * 1024 * 1024;

/**
 * Connection state recovery's settings for the native node, from the Server's
 * `connectionStateRecovery` option; undefined when it is off. The log keeps packets for twice
 * `maxDisconnectionDuration` (at least that plus a minute): a client's last received packet may be
 * older than its disconnection.
 */
function recoverySettings(options, serverOptions) {
  const recovery = serverOptions?.connectionStateRecovery;
  if (!recovery) return undefined;
  const ttl = recovery.maxDisconnectionDuration ?? 2 * 60 * 1000;
  if (!Number.isFinite(ttl) || ttl <= 0) fail('connectionStateRecovery.maxDisconnectionDuration must be a positive number');
  return {
    stream: options.recoveryStream ?? `${options.exchangeName}.recovery`,
    sessionTtlMs: ttl,
    maxAgeMs: options.recoveryMaxAge ?? Math.max(2 * ttl, ttl + 60000),
    maxBytes: options.recoveryMaxBytes ?? DEFAULT_RECOVERY_MAX_BYTES,
  };
}

/**
 * How long the broker keeps a server's queue after its connection is lost: long enough for the
 * slowest reconnect (the longest backoff plus a connect attempt) twice over, and at least 10 s.
 * A server back within it finds what was sent meanwhile waiting; a crashed one's queue goes.
 */
function defaultQueueExpiry({ reconnectDelayMax, connectTimeout }) {
  return Math.max(10000, 2 * (reconnectDelayMax + connectTimeout));
}

// The reason a URL string cannot be used, or null. Checked before connecting so a typo gets a
// readable message rather than a parser error from the AMQP client.
function urlProblem(url) {
  let parsed;
  try {
    parsed = new URL(url);
  } catch {
    return `"${url}" is not a URL; expected amqp://user:pass@host:5672/vhost or amqps://...`;
  }
  if (parsed.protocol !== 'amqp:' && parsed.protocol !== 'amqps:') {
    return `unsupported URL scheme "${parsed.protocol}" in ${redact(parsed)}; expected amqp:// or amqps://`;
  }
  if (!parsed.hostname) return `no host in ${redact(parsed)}`;
  return null;
}

function redact(parsed) {
  const copy = new URL(parsed.href);
  if (copy.password) copy.password = '***';
  return copy.href;
}

// The `connection_name` URL parameter (the AMQP client ignores it, so we apply it).
function connectionNameOf(urls) {
  for (const url of urls) {
    const name = new URL(url).searchParams.get('connection_name');
    if (name) return name;
  }
  return undefined;
}

/** The broker settings the native adapter node and the native emitter share. */
function brokerSettings(options) {
  return {
    urls: options.amqpUrls,
    exchangeName: options.exchangeName,
    connectTimeoutMs: options.connectTimeout,
    reconnectDelayMs: options.reconnectDelay,
    reconnectDelayMaxMs: options.reconnectDelayMax,
    publishBuffer: options.publishBufferSize,
    tlsCa: options.tls?.ca === undefined ? undefined : String(options.tls.ca),
    connectionName: connectionNameOf(options.amqpUrls),
  };
}

module.exports = { normalizeOptions, urlProblem, brokerSettings, recoverySettings, DEFAULTS };
