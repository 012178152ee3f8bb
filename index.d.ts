import type { Namespace } from 'socket.io';
import { Adapter, type Room, type SocketId } from 'socket.io-adapter';

/** Options of {@link createAdapter}. Every field is optional except the URL. */
export interface AmqpAdapterOptions {
  /**
   * Broker URL, `amqp://user:pass@host:5672/vhost?heartbeat=10&connection_name=...` or `amqps://...`;
   * several URLs (the nodes of a RabbitMQ cluster) are tried in turn. Required in the object form.
   */
  amqpUrl?: string | string[];
  /** Exchange shared by the cluster (a non-durable `direct` exchange). Default `'socket.io'`. */
  exchangeName?: string;
  /** First part of each server's queue name, `<queuePrefix>.<instanceName>.<uid>`. Default `'socket.io'`. */
  queuePrefix?: string;
  /** Readable part of queue and connection names. Default `os.hostname()`. */
  instanceName?: string;
  /**
   * Called once per namespace when it receives messages from the other servers; when init() was
   * refused (broker down), as soon as a later connection binds the namespace.
   */
  readyCallback?: () => void;
  /** Receives, per namespace, a function that closes that namespace's adapter. */
  shutdownCallbackCallback?: (shutdown: () => Promise<void>) => void;
  /** How long to wait for the broker before reporting an error, in ms. Default 5000. */
  connectTimeout?: number;
  /** Unacknowledged AMQP messages (each up to a batch of 256 packets) the broker may push to this server (backpressure). Default 256. */
  prefetch?: number;
  /** Publishes that may wait for the broker before new ones are dropped and counted. Default 10000. */
  publishBufferSize?: number;
  /** Received messages that may wait for the event loop before the consumer pauses. Default 1024. */
  maxPendingDeliveries?: number;
  /** How long fetchSockets() and serverSideEmit() with an ack wait for replies, in ms. Default 5000. */
  requestsTimeout?: number;
  /** How often this server tells the others it is alive, in ms. Default 5000. */
  heartbeatInterval?: number;
  /** Silence after which another server counts as gone, in ms; must exceed heartbeatInterval. Default 10000. */
  heartbeatTimeout?: number;
  /** First delay before reconnecting, in ms; it doubles per failed attempt. Default 500. */
  reconnectDelay?: number;
  /** Cap of the reconnect delay, in ms. Default 30000. */
  reconnectDelayMax?: number;
  /**
   * Bind one routing key per room with local members, so a broadcast to one room reaches only the
   * servers with members in it (socket ids excepted). A join that creates a room then returns a
   * promise that resolves once the broker routes the room here. Set it on every server. Default false.
   */
  roomRouting?: boolean;
  /**
   * How long the broker keeps this server's queue after its connection is lost, in ms (the
   * queue's `x-expires`): messages sent while it reconnects wait there for it. A server that is
   * closed deletes its queue at once; a crashed one's queue goes after this. Default
   * `max(10000, 2 * (reconnectDelayMax + connectTimeout))`: 70000 with the defaults.
   */
  queueExpiry?: number;
  /**
   * Connection state recovery (when the Server has `connectionStateRecovery`): the durable
   * RabbitMQ stream that is the recovery log, shared by the cluster. Default
   * `'<exchangeName>.recovery'`.
   */
  recoveryStream?: string;
  /**
   * How long the recovery log keeps packets and sessions, in ms (the stream's `x-max-age`). A
   * client whose last received packet is older cannot be recovered. Default
   * `max(2 * maxDisconnectionDuration, maxDisconnectionDuration + 60000)`.
   */
  recoveryMaxAge?: number;
  /** The recovery log's size cap in bytes (`x-max-length-bytes`; oldest segments go first). Default 1 GiB. */
  recoveryMaxBytes?: number;
  /** TLS settings for `amqps://` URLs. */
  tls?: {
    /** CA certificate(s), PEM, trusted in addition to the system's (e.g. a self-signed CA). */
    ca?: string | Buffer;
  };
}

/** Counters of one server's broker session (shared by its namespaces), since it started. */
export interface AdapterStats {
  /** AMQP messages sent to the exchange (a batch of packets counts once). */
  published: number;
  /** Messages that were not sent: the oldest ones dropped from a full publish buffer, or still
   *  waiting when the adapter closed without a broker. */
  publishDropped: number;
  /** AMQP messages taken from this server's queue (a batch counts once). */
  received: number;
  /** Received messages this server had sent itself. */
  ownIgnored: number;
  /** Received broadcasts with no local recipient: dropped in Rust, the event loop never saw them. */
  noLocalRecipient: number;
  /** Requests with no local match (fetchSockets, ack broadcasts) answered from Rust alone. */
  answeredWithoutHost: number;
  /** Broadcasts handed to the event loop for local sockets. */
  delivered: number;
  /** Times the event loop was woken to take a batch. */
  hostWakeups: number;
  /** Received messages that could not be decoded or spoke another protocol version. */
  malformed: number;
  /** Times a connection was made after the previous one was lost, or after failed first attempts. */
  reconnects: number;
  /** Redeliveries after a reconnect of messages handled already: dropped, not delivered twice. */
  duplicates: number;
  /** Messages other servers sent here that never arrived (sequence gaps; see the `missed` event). */
  missed: number;
  /** Reconnects that found this server's queue gone (a broker restart, or an outage past `queueExpiry`). */
  queuesLost: number;
  /** Connection state recovery: sessions of disconnected sockets written to the recovery log. */
  sessionsPersisted: number;
  /** Connection state recovery: clients recovered on this server. */
  sessionsRestored: number;
  /** Connection state recovery: clients that asked to be recovered here and were not (unknown,
   *  used or expired session, offset not in the log, recovery unavailable). */
  sessionsNotRestored: number;
  /** Connection state recovery: reads of the recovery log (restores arriving together share one). */
  recoveryScans: number;
  /** Connection state recovery: the recovery log is open in this session (false with recovery off,
   *  without streams, or while the stream is not ready yet, e.g. right after a broker restart). */
  recoveryLogReady: boolean;
  /** Publishes waiting to go out, e.g. during an outage (a gauge). */
  buffered: number;
  /** Requests of this server still waiting for replies or their timeout (a gauge). */
  pendingRequests: number;
}

/** What a `missed` event reports: a gap in one sender's messages to one routing key. */
export interface MissedMessages {
  /** How many messages never arrived. */
  count: number;
  /** The sender's uid (a server's `adapter.uid`, or an emitter's). */
  from: string;
  /** The routing key they were sent to: `nsp:<namespace>`, or `srv:<uid>` for replies. */
  routingKey: string;
}

/**
 * An error of `fetchSockets()` or `serverSideEmit(..., ack)` whose answer lacks some servers'
 * replies: one left before answering, or started serving the namespace during the request and
 * did not answer. The message names them and why; `partial` holds what did arrive.
 */
export interface IncompleteAnswerError extends Error {
  code: 'INCOMPLETE';
  partial: unknown[];
}

/**
 * The adapter Socket.IO creates per namespace; an `Adapter` of socket.io-adapter. `rooms` and `sids`
 * are live Maps over the Rust index: reads work as on the in-memory adapter (each Set is a
 * snapshot), writes throw.
 *
 * Events (emitted on every namespace's adapter of the server; with no listener on any, a warning
 * is logged instead):
 * - `error` (Error): broker unreachable, login refused, failed reconnect attempts, undecodable
 *   messages, internal errors;
 * - `disconnect` (Error): the broker connection was lost; publishes are buffered meanwhile;
 * - `reconnect` (attempts): connected after a loss or after failed first attempts, bindings
 *   restored, buffered publishes sent;
 * - `dropped` (count): the publish buffer was full and this many of the oldest were dropped
 *   (always logged too);
 * - `missed` ({@link MissedMessages}): messages another server sent here never arrived — its
 *   sequence numbers jumped, after a broker restart or an expired queue (always logged too);
 * - `create-room`, `join-room`, `leave-room`, `delete-room`, as the in-memory adapter.
 *
 * With the Server's `connectionStateRecovery`, `persistSession` and `restoreSession` (inherited
 * signatures) work across servers through the recovery log; `restoreSession` resolves to `null`
 * when the client cannot be recovered, and never rejects.
 */
export declare class AmqpAdapter extends Adapter {
  /** This server's id on the bus; `null` when the URL was unusable. */
  readonly uid: string | null;
  constructor(nsp: Namespace, cluster: unknown);
  /**
   * Resolves when the namespace receives cluster messages; rejects with the broker error (the
   * adapter keeps trying; `reconnect` and readyCallback follow when it gets through).
   */
  init(): Promise<void>;
  close(): Promise<void>;
  /** Counters of this server's broker session; `null` when the URL was unusable. */
  stats(): AdapterStats | null;
  /**
   * As the in-memory adapter; with `roomRouting`, a join that creates a room returns a promise
   * that resolves (never rejects) once the broker routes the room to this server.
   */
  addAll(id: SocketId, rooms: Set<Room>): Promise<void> | void;
  on(event: 'error' | 'disconnect', listener: (error: Error) => void): this;
  on(event: 'reconnect', listener: (attempts: number) => void): this;
  on(event: 'dropped', listener: (count: number) => void): this;
  on(event: 'missed', listener: (missed: MissedMessages) => void): this;
  on(event: 'create-room' | 'delete-room', listener: (room: Room) => void): this;
  on(event: 'join-room' | 'leave-room', listener: (room: Room, id: SocketId) => void): this;
  on(event: string | symbol, listener: (...args: unknown[]) => void): this;
}

/** What `io.adapter()` takes: Socket.IO calls it (with `new`) for each namespace. */
export type AmqpAdapterFactory = (nsp: Namespace) => AmqpAdapter;

/**
 * Creates the adapter for `io.adapter(...)`. Throws a TypeError for wrong option types, unknown
 * options, or `amqpConnection` (pass a URL instead). Broker problems are reported asynchronously:
 * an `error` event on the adapter and a rejected `init()`.
 */
export declare function createAdapter(url: string | string[], options?: Omit<AmqpAdapterOptions, 'amqpUrl'>): AmqpAdapterFactory;
export declare function createAdapter(options: AmqpAdapterOptions & { amqpUrl: string | string[] }): AmqpAdapterFactory;

/** Options of {@link Emitter}: the adapter's broker and naming options that apply to a publisher. */
export interface EmitterOptions {
  amqpUrl?: string | string[];
  /** The adapters' exchange. Default `'socket.io'`. */
  exchangeName?: string;
  /** Accepted so one options object can serve the adapter and the emitter; unused (no queue). */
  queuePrefix?: string;
  /** Accepted so one options object can serve the adapter and the emitter; unused. */
  instanceName?: string;
  connectTimeout?: number;
  reconnectDelay?: number;
  reconnectDelayMax?: number;
  /** Publishes that may wait to go out; when full the oldest is dropped, counted and reported. */
  publishBufferSize?: number;
  tls?: { ca?: string | Buffer };
  /** The servers' Socket.IO parser (e.g. `require('socket.io-msgpack-parser')`). Default socket.io-parser. */
  parser?: { Encoder: new () => { encode(packet: unknown): Array<string | Buffer | Uint8Array> } };
  /**
   * Connection state recovery: give broadcasts (not volatile ones) an offset and a copy in the
   * servers' recovery log, so clients that were disconnected get them when they are recovered.
   * The servers must have `connectionStateRecovery` on. Default false.
   */
  recoverable?: boolean;
}

/** Counters of an emitter. */
export interface EmitterStats {
  published: number;
  dropped: number;
  /** Publishes waiting to go out (a gauge). */
  buffered: number;
}

/** An immutable selection of target sockets (`emitter.to(room).except(other)...`). */
export interface EmitterBroadcastOperator {
  to(room: string | string[]): EmitterBroadcastOperator;
  in(room: string | string[]): EmitterBroadcastOperator;
  except(room: string | string[]): EmitterBroadcastOperator;
  readonly volatile: EmitterBroadcastOperator;
  compress(compress: boolean): EmitterBroadcastOperator;
  /** Emits to the selected sockets of every server. Throws for acknowledgements and reserved events. */
  emit(event: string, ...args: unknown[]): true;
  socketsJoin(rooms: string | string[]): void;
  socketsLeave(rooms: string | string[]): void;
  disconnectSockets(close?: boolean): void;
  /** Reaches every server of the namespace (no acknowledgement). */
  serverSideEmit(event: string, ...args: unknown[]): void;
}

/**
 * Sends to a Socket.IO cluster from a process that is not a Socket.IO server, through the adapters'
 * exchange. `new Emitter(url, options?)` or `new Emitter({ amqpUrl, ...options })`; a malformed URL
 * or option throws a TypeError. Listen with `on('error' | 'disconnect', (err) => ...)`,
 * `on('reconnect', (attempts) => ...)`, `on('dropped', (count) => ...)`; with no listener they are
 * logged. `emit` is Socket.IO's broadcast, not EventEmitter's.
 */
export declare class Emitter {
  constructor(url: string | string[], options?: Omit<EmitterOptions, 'amqpUrl'>);
  constructor(options: EmitterOptions & { amqpUrl: string | string[] });
  /** Resolves once connected; rejects with the first connection error (it keeps retrying). */
  ready(): Promise<void>;
  /** Sends what is buffered, then releases the connection. */
  close(): Promise<void>;
  stats(): EmitterStats;
  on(event: 'error' | 'disconnect', listener: (error: Error) => void): this;
  on(event: 'reconnect', listener: (attempts: number) => void): this;
  on(event: 'dropped', listener: (count: number) => void): this;
  once(event: 'error' | 'disconnect', listener: (error: Error) => void): this;
  once(event: 'reconnect' | 'dropped', listener: (n: number) => void): this;
  off(event: string, listener: (...args: unknown[]) => void): this;
  /** The operators below on another namespace (the default one is `/`). */
  of(nsp: string): EmitterBroadcastOperator;
}
/** An emitter is also the operator for every socket of the default namespace (`to`, `emit`, ...). */
export interface Emitter extends EmitterBroadcastOperator {}
