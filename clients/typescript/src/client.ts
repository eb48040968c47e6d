/**
 * {@link ConfigWatchClient}: one tenant's configuration, held in memory and kept
 * current by a Watch stream that reconnects, resumes and re-authenticates by itself.
 *
 * Reads never touch the network. The watch runs in the background:
 *
 *   start() ── snapshot? ──► connect ──► initial state ──► deltas / progress ─┐
 *                               ▲                                             │
 *                               └── backoff ◄── UNAVAILABLE, dropped, idle ◄──┤
 *                               └── fresh token ◄── UNAUTHENTICATED ◄─────────┤
 *                               └── backoff, cache kept ◄── removes all held ◄┤
 *                                   failed ◄── PERMISSION_DENIED, INVALID_ARGUMENT
 */
import { EventEmitter } from 'node:events';

import * as grpc from '@grpc/grpc-js';

import { DEFAULT_BACKOFF, backoffDelay, type BackoffOptions, type BackoffPolicy } from './backoff';
import { Cache, type Change, type ChangeCause } from './cache';
import { ChangeQueue } from './changes';
import {
  ClosedError,
  ConfigWatchError,
  DecodeError,
  InvalidOptionsError,
  MassRemovalError,
  ProtocolError,
  ServerError,
  TimeoutError,
  TokenSourceError,
  fromGrpcError,
  type MassRemovalInfo,
} from './errors';
import type { ClientEvents } from './events';
import { SnapshotWriter, normalizePrefixes, readSnapshot, type SnapshotData } from './snapshot';
import type { CacheSource, ClientState, ClientStatus, StoreChange } from './status';
import {
  fromWire,
  serviceConstructor,
  toNumber,
  type ConfigServiceClient,
  type GetResponse,
  type WatchRequest,
  type WatchResponse,
  type WireEntry,
} from './wire';

export type { CacheSource, ClientState, ClientStatus, StoreChange } from './status';
export type { ClientEvents, ConnectedInfo, DisconnectedInfo, ReconnectingInfo } from './events';

/**
 * Supplies a bearer token. Called before every connection attempt and every
 * `readSecret`, and again whenever the server refuses a token, so it should return
 * a token that is valid now (cache inside it if minting is expensive).
 */
export type TokenSource = () => Promise<string> | string;

export interface ClientOptions {
  /** The server: `host:port`, `http://host:port`, or `https://host:port` (TLS). */
  address: string;
  /**
   * The tenant this cache belongs to. Sent with every request, so the server refuses
   * (PERMISSION_DENIED) a token of any other tenant; recorded in the snapshot.
   */
  tenant: string;
  token: TokenSource;
  /** Key prefixes to watch (e.g. `tenant_config_`, `param_config_db/`). Default: the whole tenant. */
  prefixes?: readonly string[];
  /** Channel credentials. Default: TLS for `https://` addresses, plaintext otherwise. */
  credentials?: grpc.ChannelCredentials;
  /** Where to keep the on-disk snapshot of the cache. Default: no snapshot. */
  snapshotPath?: string;
  /** Coalesce snapshot writes over this many ms. Default 500. */
  snapshotDebounceMs?: number;
  backoff?: BackoffOptions;
  /**
   * `status().stale` turns true when nothing (message or progress) has arrived for
   * this long while connected. Keep it above the server's progress interval (5 s).
   * Default 15,000.
   */
  staleAfterMs?: number;
  /**
   * Reconnect when nothing has arrived for this long (a half-open connection). Keep
   * it well above the server's progress interval. Default 30,000.
   */
  idleTimeoutMs?: number;
  /** Deadline of `readSecret` calls. Default 10,000. */
  callTimeoutMs?: number;
  /** Extra grpc-js channel options. */
  channelOptions?: grpc.ChannelOptions;
  /**
   * Whether an initial state that would remove every entry the cache holds is applied.
   * A server whose store lost its data, or was recreated, sends such a state to a
   * client that resumes. `false` (the default) holds it back: the cache keeps serving
   * what it holds, `status().stale` is true, `status().heldBack` and a
   * {@link MassRemovalError} (`lastError`, the `error` and `massRemoval` events) say
   * why with the counts, and the watch retries with backoff until the server sends a
   * state that keeps at least one entry. `true` applies it. A function decides each
   * time (return `true` to apply; one that throws holds back). Deltas are never held back.
   */
  allowMassRemoval?: boolean | ((info: MassRemovalInfo) => boolean);
}

/** A cached value with its version. */
export interface Versioned<T> {
  key: string;
  value: T;
  version: number;
  revision: number;
  updatedAt: Date | undefined;
}

/** What the cache knows about a live key, secrets included. */
export interface EntryInfo {
  key: string;
  version: number;
  secret: boolean;
  revision: number;
  updatedAt: Date | undefined;
  /** Why the value could not be decoded as JSON, if it could not. */
  decodeError: string | undefined;
}

interface Outcome {
  error: ConfigWatchError;
  synced: boolean;
  sentResumeToken: boolean;
  /** The server answered that the digest sent differs from its state. */
  askedForVersions?: boolean;
}

interface ReadyWaiter {
  resolve: () => void;
  reject: (e: ConfigWatchError) => void;
}

function positive(name: string, v: number | undefined, fallback: number): number {
  if (v === undefined) return fallback;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) {
    throw new InvalidOptionsError(`${name} must be a non-negative number of milliseconds, got ${String(v)}`);
  }
  return v;
}

function parseAddress(address: string): { target: string; tls: boolean } {
  let target = address.trim();
  let tls = false;
  if (target.startsWith('https://')) {
    tls = true;
    target = target.slice('https://'.length);
  } else if (target.startsWith('http://')) {
    target = target.slice('http://'.length);
  }
  target = target.replace(/\/+$/, '');
  if (target === '' || target.includes('/')) {
    throw new InvalidOptionsError(`address ${JSON.stringify(address)} is not host:port, http://host:port or https://host:port`);
  }
  return { target, tls };
}

function modeOf(mode: WatchResponse['initial_mode']): 'full' | 'diff' | 'resumed' | undefined {
  switch (mode) {
    case 'INITIAL_MODE_FULL':
      return 'full';
    case 'INITIAL_MODE_DIFF':
      return 'diff';
    case 'INITIAL_MODE_RESUMED':
      return 'resumed';
    default:
      return undefined;
  }
}

/**
 * A tenant's configuration cache, kept current by the server.
 *
 * ```ts
 * const client = new ConfigWatchClient({ address, tenant, token: () => fetchToken() });
 * await client.start();            // loads the snapshot (if any), starts watching
 * await client.ready();            // optional: wait until current from the server
 * client.get<{ enabled: boolean }>('tenant_config_checkout')?.value.enabled;
 * client.on('change', (c) => ...); // or: for await (const c of client.changes()) ...
 * ```
 */
export class ConfigWatchClient extends EventEmitter<ClientEvents> implements AsyncIterable<Change> {
  readonly tenant: string;
  readonly prefixes: readonly string[];

  private readonly tokenSource: TokenSource;
  /** Replaced by {@link renewChannel} when the server went silent. */
  private rpc: ConfigServiceClient;
  private readonly newRpc: () => ConfigServiceClient;
  /** When `rpc` was made. */
  private rpcSince = Date.now();
  private readonly cache = new Cache();
  private readonly backoff: BackoffPolicy;
  private readonly staleAfterMs: number;
  private readonly idleTimeoutMs: number;
  private readonly callTimeoutMs: number;
  private readonly snapshotWriter: SnapshotWriter | undefined;
  private readonly allowMassRemoval: boolean | ((info: MassRemovalInfo) => boolean);

  private state: ClientState = 'idle';
  private source: CacheSource = 'none';
  private resumeToken = '';
  /** The store identity of the state held ('' when unknown). */
  private storeId = '';
  private heldBack: MassRemovalInfo | undefined;
  private lastStoreChange: StoreChange | undefined;
  /**
   * The server found the digest of the cache differs from its state: send the
   * versions themselves until a stream reaches its initial state.
   */
  private withVersions = false;
  private revision = 0;
  private lastMessageAt: Date | undefined;
  private lastSyncAt: Date | undefined;
  private lastError: ConfigWatchError | undefined;
  private attempts = 0;
  private nextAttemptAt: Date | undefined;
  private everSynced = false;
  private snapshotInfo: ClientStatus['snapshot'];

  private started: Promise<void> | undefined;
  private loop: Promise<void> | undefined;
  private closing: Promise<void> | undefined;
  private abortCall: (() => void) | undefined;
  private wake: (() => void) | undefined;
  private readyWaiters: ReadyWaiter[] = [];
  /** Settles when close() is called, to cut short a wait on the token source. */
  private readonly closedSignal: Promise<'closed'>;
  private signalClosed: () => void = () => undefined;
  private readonly queues = new Set<ChangeQueue>();

  /**
   * Validates the options; does no I/O (see {@link start}).
   *
   * @throws {InvalidOptionsError} when an option is invalid.
   * @throws {ProtocolError} when the package's proto/ directory is missing (a broken install).
   */
  constructor(options: ClientOptions) {
    super();
    this.closedSignal = new Promise((resolve) => {
      this.signalClosed = () => resolve('closed');
    });
    if (typeof options !== 'object' || options === null) throw new InvalidOptionsError('options are required');
    if (typeof options.tenant !== 'string' || options.tenant === '') {
      throw new InvalidOptionsError('tenant must be a non-empty string');
    }
    if (typeof options.token !== 'function') throw new InvalidOptionsError('token must be a function returning a token');
    if (typeof options.address !== 'string') throw new InvalidOptionsError('address must be a string');
    const prefixes = options.prefixes ?? [];
    if (!Array.isArray(prefixes) || !prefixes.every((p) => typeof p === 'string' && p !== '')) {
      throw new InvalidOptionsError('prefixes must be an array of non-empty strings');
    }
    const { target, tls } = parseAddress(options.address);
    this.tenant = options.tenant;
    this.prefixes = Object.freeze(normalizePrefixes(prefixes));
    this.tokenSource = options.token;
    const b = options.backoff ?? {};
    this.backoff = {
      initialMs: positive('backoff.initialMs', b.initialMs, DEFAULT_BACKOFF.initialMs),
      maxMs: positive('backoff.maxMs', b.maxMs, DEFAULT_BACKOFF.maxMs),
      multiplier: b.multiplier ?? DEFAULT_BACKOFF.multiplier,
      jitter: b.jitter ?? DEFAULT_BACKOFF.jitter,
    };
    if (!(this.backoff.multiplier >= 1) || !(this.backoff.jitter >= 0 && this.backoff.jitter <= 1)) {
      throw new InvalidOptionsError('backoff.multiplier must be >= 1 and backoff.jitter within [0, 1]');
    }
    this.staleAfterMs = positive('staleAfterMs', options.staleAfterMs, 15_000);
    this.idleTimeoutMs = positive('idleTimeoutMs', options.idleTimeoutMs, 30_000);
    this.callTimeoutMs = positive('callTimeoutMs', options.callTimeoutMs, 10_000);
    const debounce = positive('snapshotDebounceMs', options.snapshotDebounceMs, 500);
    const allow = options.allowMassRemoval ?? false;
    if (typeof allow !== 'boolean' && typeof allow !== 'function') {
      throw new InvalidOptionsError('allowMassRemoval must be a boolean or a function');
    }
    this.allowMassRemoval = allow;

    let Service;
    try {
      Service = serviceConstructor();
    } catch (e) {
      throw new ProtocolError(`cannot load the API definition shipped with @configwatch/client (reinstall it): ${String(e)}`);
    }
    const credentials = options.credentials ?? (tls ? grpc.credentials.createSsl() : grpc.credentials.createInsecure());
    const channelOptions: grpc.ChannelOptions = {
      'grpc.initial_reconnect_backoff_ms': Math.max(1, Math.round(this.backoff.initialMs)),
      'grpc.max_reconnect_backoff_ms': Math.max(1, Math.round(this.backoff.maxMs)),
      'grpc.keepalive_time_ms': 30_000,
      'grpc.keepalive_timeout_ms': 10_000,
      // A connection of this client's own (not shared through grpc-js's global pool),
      // so that renewChannel() really gets a new one.
      'grpc.use_local_subchannel_pool': 1,
      ...options.channelOptions,
    };
    const ServiceClient = Service;
    this.newRpc = () => new ServiceClient(target, credentials, channelOptions);
    this.rpc = this.newRpc();

    if (options.snapshotPath !== undefined) {
      if (typeof options.snapshotPath !== 'string' || options.snapshotPath === '') {
        throw new InvalidOptionsError('snapshotPath must be a non-empty string');
      }
      const file = options.snapshotPath;
      this.snapshotInfo = { path: file, loaded: false, savedAt: undefined, ignored: undefined };
      this.snapshotWriter = new SnapshotWriter(file, debounce, () => this.snapshotData(), (error, savedAt) => {
        if (error) {
          this.emitError(error);
        } else {
          if (this.snapshotInfo) this.snapshotInfo.savedAt = savedAt;
          this.emitSafely('snapshot', { path: file, savedAt });
        }
      });
    }
  }

  /** Creates a client and starts it (see {@link start}). Rejects with what the constructor throws. */
  static async connect(options: ClientOptions): Promise<ConfigWatchClient> {
    const client = new ConfigWatchClient(options);
    await client.start();
    return client;
  }

  /**
   * Loads the snapshot (when `snapshotPath` is set and the file is this tenant's) and
   * starts watching in the background. Resolves as soon as the snapshot is loaded; it
   * does not wait for the server (see {@link ready}). The watch begins on a later
   * turn of the event loop, so listeners attached right after `await start()` miss
   * nothing. Never rejects; calling it again returns the same promise.
   */
  start(): Promise<void> {
    if (this.started === undefined) {
      this.started = this.begin();
    }
    return this.started;
  }

  /**
   * Resolves once the cache has been current from the server (an initial state was
   * applied since start). Rejects with the error that stopped the client (state
   * `failed`), {@link ClosedError} when closed, or {@link TimeoutError} after
   * `timeoutMs`.
   */
  ready(options?: { timeoutMs?: number; signal?: AbortSignal }): Promise<void> {
    if (this.everSynced) return Promise.resolve();
    if (this.state === 'closed') return Promise.reject(new ClosedError());
    if (this.state === 'failed') return Promise.reject(this.lastError ?? new ClosedError('the client failed'));
    return new Promise<void>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const onAbort = (): void => settle(new TimeoutError('ready() was aborted'));
      const settle = (error?: ConfigWatchError): void => {
        const i = this.readyWaiters.indexOf(waiter);
        if (i >= 0) this.readyWaiters.splice(i, 1);
        if (timer !== undefined) clearTimeout(timer);
        options?.signal?.removeEventListener('abort', onAbort);
        if (error) reject(error);
        else resolve();
      };
      const waiter: ReadyWaiter = { resolve: () => settle(), reject: (e) => settle(e) };
      this.readyWaiters.push(waiter);
      if (options?.timeoutMs !== undefined) {
        const ms = options.timeoutMs;
        timer = setTimeout(
          () => settle(new TimeoutError(`the cache was not current from the server within ${ms} ms (${this.describeLastError()})`)),
          ms,
        );
      }
      if (options?.signal) {
        if (options.signal.aborted) onAbort();
        else options.signal.addEventListener('abort', onAbort, { once: true });
      }
    });
  }

  /**
   * The cached value of a key, decoded from JSON, with its version; undefined when
   * the key does not exist, is a secret (use {@link readSecret}), or its value is not
   * JSON. Local and synchronous.
   *
   * `T` is trusted, not checked. Pass `decode` to check (or convert) the value.
   *
   * @throws {DecodeError} only when `decode` is given and throws.
   */
  get<T = unknown>(key: string, decode?: (value: unknown) => T): Versioned<T> | undefined {
    const h = this.cache.live(key);
    if (h === undefined || h.secret || h.decodeError !== undefined) return undefined;
    let value: T;
    if (decode) {
      try {
        value = decode(h.value);
      } catch (e) {
        throw new DecodeError(key, `the value was refused by the decoder: ${e instanceof Error ? e.message : String(e)}`, e);
      }
    } else {
      value = h.value as T;
    }
    return { key, value, version: h.version, revision: h.revision, updatedAt: h.updatedAt };
  }

  /** The cached value of a key, or `fallback` when {@link get} would return undefined. Never throws. */
  getValue<T>(key: string, fallback: T): T {
    const h = this.cache.live(key);
    if (h === undefined || h.secret || h.decodeError !== undefined) return fallback;
    return h.value as T;
  }

  /** Whether a live key (secrets included) is held. */
  has(key: string): boolean {
    return this.cache.live(key) !== undefined;
  }

  /** What is held about a live key (secrets included), without its value. */
  info(key: string): EntryInfo | undefined {
    const h = this.cache.live(key);
    if (h === undefined) return undefined;
    return {
      key,
      version: h.version,
      secret: h.secret,
      revision: h.revision,
      updatedAt: h.updatedAt,
      decodeError: h.decodeError,
    };
  }

  /** Live keys (secrets included), sorted; only those starting with `prefix` when given. */
  keys(prefix?: string): string[] {
    return this.cache
      .liveEntries()
      .map((h) => h.key)
      .filter((k) => prefix === undefined || k.startsWith(prefix));
  }

  /** Connection, freshness and origin of the cache. */
  status(): ClientStatus {
    const connected = this.state === 'connected';
    const fresh =
      connected &&
      this.source === 'server' &&
      this.lastMessageAt !== undefined &&
      Date.now() - this.lastMessageAt.getTime() <= this.staleAfterMs;
    return {
      state: this.state,
      connected,
      source: this.source,
      stale: !fresh,
      lastMessageAt: this.lastMessageAt,
      lastSyncAt: this.lastSyncAt,
      revision: this.revision,
      entries: this.cache.liveCount(),
      lastError: this.lastError,
      attempts: this.attempts,
      nextAttemptAt: this.state === 'reconnecting' ? this.nextAttemptAt : undefined,
      heldBack: this.heldBack ? { ...this.heldBack } : undefined,
      storeId: this.storeId,
      lastStoreChange: this.lastStoreChange ? { ...this.lastStoreChange } : undefined,
      snapshot: this.snapshotInfo ? { ...this.snapshotInfo } : undefined,
    };
  }

  /**
   * Reads a secret's value from the server on demand (Get). Never cached. Resolves
   * to the string the secret holds, or undefined when the key does not exist.
   * Rejects with a {@link ServerError} (e.g. INVALID_ARGUMENT for a bad key), a
   * {@link TokenSourceError}, a {@link DecodeError} when the value is not a JSON
   * string, or a {@link ClosedError}.
   */
  async readSecret(key: string): Promise<string | undefined> {
    if (this.state === 'closed') throw new ClosedError();
    const res = await this.getFromServer([key]);
    const entry = res.entries.find((e) => e.key === key);
    if (entry === undefined) return undefined;
    let value: unknown;
    try {
      value = JSON.parse(entry.value);
    } catch (e) {
      throw new DecodeError(key, 'the value is not JSON', e);
    }
    if (typeof value !== 'string') throw new DecodeError(key, 'the value is not a JSON string');
    return value;
  }

  /**
   * An async iterator of changes from now on, optionally only under `prefix`. A slow
   * consumer gets the newest change per key (changes to one key coalesce while they
   * wait). Ends when the client is closed; throws the error when it fails. `break`
   * stops it.
   */
  changes(options?: { prefix?: string; signal?: AbortSignal }): AsyncIterableIterator<Change> {
    const prefix = options?.prefix;
    const queue = new ChangeQueue(
      (c) => prefix === undefined || c.key.startsWith(prefix),
      (q) => this.queues.delete(q),
    );
    if (this.state === 'closed') queue.end();
    else if (this.state === 'failed') queue.end(this.lastError);
    else this.queues.add(queue);
    const signal = options?.signal;
    if (signal) {
      if (signal.aborted) queue.end();
      else signal.addEventListener('abort', () => queue.end(), { once: true });
    }
    return queue;
  }

  /** `for await (const change of client)`: same as {@link changes}(). */
  [Symbol.asyncIterator](): AsyncIterator<Change> {
    return this.changes();
  }

  /**
   * Stops watching, writes the snapshot (when configured and changed), ends the
   * change iterators and closes the channel. Idempotent; never rejects.
   */
  close(): Promise<void> {
    if (this.closing === undefined) this.closing = this.shutdown();
    return this.closing;
  }

  // ---------------------------------------------------------------- internals

  private async begin(): Promise<void> {
    if (this.snapshotWriter && this.snapshotInfo) {
      const read = await readSnapshot(this.snapshotWriter.file, this.tenant, this.prefixes);
      if (read.kind === 'loaded' && this.source === 'none') {
        this.cache.load(read.data.entries);
        this.resumeToken = read.data.resumeToken;
        this.storeId = read.data.storeId;
        this.revision = read.data.revision;
        this.source = 'snapshot';
        this.snapshotInfo.loaded = true;
        this.snapshotInfo.savedAt = read.data.savedAt;
      } else if (read.kind === 'ignored') {
        this.snapshotInfo.ignored = read.reason;
      }
    }
    // The watch starts on a later turn of the event loop, so listeners attached right
    // after `await start()` (or `await ConfigWatchClient.connect()`) hear everything.
    this.loop = new Promise<void>((resolve) => setImmediate(resolve)).then(() => this.run());
  }

  private async shutdown(): Promise<void> {
    this.setState('closed');
    this.signalClosed();
    this.abortCall?.();
    this.wake?.();
    const closed = new ClosedError();
    for (const w of [...this.readyWaiters]) w.reject(closed);
    for (const q of [...this.queues]) q.end();
    await this.started;
    await this.loop;
    if (this.snapshotWriter) await this.snapshotWriter.flush();
    this.rpc.close();
    this.emitSafely('close');
  }

  private setState(state: ClientState): void {
    if (this.state === 'closed') return;
    this.state = state;
  }

  private isClosed(): boolean {
    return this.state === 'closed';
  }

  private async run(): Promise<void> {
    // Failed attempts in a row (the backoff exponent) and refused tokens in a row,
    // both counted since the last stream that reached its initial state.
    let failures = 0;
    let authRefusals = 0;
    try {
      while (!this.isClosed()) {
        this.setState('connecting');
        this.attempts++;
        const outcome = await this.watchOnce();
        if (this.isClosed()) return;
        const { error, synced } = outcome;
        this.lastError = error;
        if (error.code === 'UNAVAILABLE' && this.silentFor() >= this.idleTimeoutMs) {
          // Nothing came over this channel for idleTimeoutMs: a silent stream, or
          // attempts that keep failing. Its connection may be half-open (a dead peer,
          // a NAT that forgot the flow; a new call on it would hang the same way), or
          // accepted and then silent before HTTP/2 was set up (grpc-js then fails
          // every call at once while it waits, with no deadline). The next attempt
          // gets a new channel.
          this.renewChannel();
        }
        if (synced) {
          failures = 0;
          authRefusals = 0;
        }
        const sentVersions = this.withVersions;
        this.withVersions = !synced && (this.withVersions || outcome.askedForVersions === true);
        if (outcome.askedForVersions && !sentVersions) {
          // Not a failure: the server needs the versions to send the difference.
          // (Asked again after sending them, it is an error like any other, so
          // nothing spins.)
          continue;
        }
        let delay: number;
        if (error.code === 'UNAUTHENTICATED') {
          // Expired or refused: ask the token source again. Right away the first
          // time; with backoff (and an error event) when fresh tokens keep failing.
          authRefusals++;
          if (authRefusals === 1) {
            delay = 0;
          } else {
            delay = backoffDelay(failures++, this.backoff);
            this.emitError(error);
          }
        } else if (error.code === 'INVALID_ARGUMENT' && outcome.sentResumeToken && !synced) {
          // The token (e.g. from an old snapshot) is not one this server reads: start
          // over from the known versions. A second refusal is fatal.
          this.resumeToken = '';
          delay = 0;
        } else if (!error.retryable) {
          this.fail(error);
          return;
        } else {
          delay = backoffDelay(failures++, this.backoff);
          if (error.code === 'TOKEN_SOURCE' || error.code === 'PROTOCOL' || error.code === 'MASS_REMOVAL') {
            this.emitError(error);
          }
        }
        this.setState('reconnecting');
        this.nextAttemptAt = new Date(Date.now() + delay);
        this.emitSafely('reconnecting', { attempt: this.attempts, delayMs: delay, error });
        await this.sleep(delay);
      }
    } catch (e) {
      // Not reached by design; never leave the loop without saying why.
      this.fail(e instanceof ConfigWatchError ? e : new ProtocolError(`watch loop failed: ${String(e)}`));
    }
  }

  private fail(error: ConfigWatchError): void {
    this.lastError = error;
    this.setState('failed');
    for (const w of [...this.readyWaiters]) w.reject(error);
    for (const q of [...this.queues]) q.end(error);
    this.emitError(error);
  }

  /** Waits `ms`, or less if close() wakes it. */
  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.wake = undefined;
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.wake = done;
    });
  }

  private async token(): Promise<string> {
    let token: unknown;
    try {
      token = await this.tokenSource();
    } catch (e) {
      throw new TokenSourceError(`the token source failed: ${e instanceof Error ? e.message : String(e)}`, e);
    }
    if (typeof token !== 'string' || token === '') {
      throw new TokenSourceError(
        `the token source returned ${typeof token === 'string' ? 'an empty string' : typeof token}, not a token`,
      );
    }
    return token;
  }

  private async metadata(): Promise<grpc.Metadata> {
    const md = new grpc.Metadata();
    md.set('authorization', `Bearer ${await this.token()}`);
    return md;
  }

  /** One Watch, from request to end. Resolves (never rejects) with why it ended. */
  private async watchOnce(): Promise<Outcome> {
    let metadata: grpc.Metadata | 'closed';
    try {
      // A token source that never answers must not hold close() up.
      metadata = await Promise.race([this.metadata(), this.closedSignal]);
    } catch (e) {
      return { error: e instanceof ConfigWatchError ? e : fromGrpcError(e), synced: false, sentResumeToken: false };
    }
    if (metadata === 'closed' || this.isClosed()) {
      return { error: new ClosedError(), synced: false, sentResumeToken: false };
    }
    // With a resume token (so the cache holds a state the server sent) a 16-byte
    // digest of what the cache holds, unless the server asked for the versions
    // themselves; without one, the versions.
    const digest = !this.withVersions && this.resumeToken !== '';
    const request: WatchRequest = {
      prefixes: [...this.prefixes],
      tenant: this.tenant,
      resume_token: this.resumeToken,
      known_versions: digest ? {} : this.cache.knownVersions(),
      known_digest: digest ? this.cache.knownDigest() : Buffer.alloc(0),
      known_store_id: this.storeId,
    };
    const sentResumeToken = this.resumeToken !== '';
    const call = this.rpc.Watch(request, metadata);

    return new Promise<Outcome>((resolve) => {
      let done = false;
      let synced = false;
      let initial: WireEntry[] = [];
      let initialMode: 'full' | 'diff' | 'resumed' | undefined;
      /** The store identity the initial messages carry ('' when the server sends none). */
      let storeId = '';
      let idle: NodeJS.Timeout | undefined;

      const finish = (error: ConfigWatchError, askedForVersions = false): void => {
        if (done) return;
        done = true;
        if (idle !== undefined) clearTimeout(idle);
        this.abortCall = undefined;
        call.cancel();
        if (synced && !this.isClosed()) this.emitSafely('disconnected', { error });
        resolve({ error, synced, sentResumeToken, askedForVersions });
      };
      const armIdle = (): void => {
        if (idle !== undefined) clearTimeout(idle);
        idle = setTimeout(
          () =>
            finish(
              new ConfigWatchError('UNAVAILABLE', `nothing arrived from the server for ${this.idleTimeoutMs} ms; reconnecting`, {
                retryable: true,
              }),
            ),
          this.idleTimeoutMs,
        );
      };

      const onMessage = (msg: WatchResponse): void => {
        this.lastMessageAt = new Date();
        switch (msg.kind) {
          case 'KIND_INITIAL': {
            const mode = modeOf(msg.initial_mode);
            if (mode === undefined || (initialMode !== undefined && mode !== initialMode)) {
              throw new ProtocolError(`initial message with mode ${String(msg.initial_mode)}`);
            }
            initialMode = mode;
            if (msg.store_id !== '') storeId = msg.store_id;
            for (const e of msg.changes) initial.push(fromWire(e));
            if (!msg.initial_complete) return;
            this.guard(mode, initial, storeId);
            const changes = this.cache.applyInitial(mode, initial);
            initial = [];
            this.advance(msg);
            if (storeId !== '') this.storeId = storeId;
            this.heldBack = undefined;
            synced = true;
            this.everSynced = true;
            this.attempts = 0;
            this.source = 'server';
            this.lastSyncAt = new Date();
            this.lastError = undefined;
            this.setState('connected');
            this.deliver(changes);
            this.snapshotWriter?.schedule();
            this.emitSafely('connected', { mode, revision: this.revision, changes: changes.length });
            for (const w of [...this.readyWaiters]) w.resolve();
            return;
          }
          case 'KIND_DELTA': {
            if (!synced) {
              throw new ProtocolError('a delta arrived before the initial state was complete', true);
            }
            const changes = this.cache.applyDeltas(msg.changes.map(fromWire), 'delta');
            this.advance(msg);
            this.deliver(changes);
            this.snapshotWriter?.schedule();
            return;
          }
          case 'KIND_PROGRESS':
            if (!synced) return;
            this.advance(msg);
            this.emitSafely('progress', { revision: this.revision });
            return;
          default:
            // A kind this client does not know (a newer server): liveness only.
            return;
        }
      };

      this.abortCall = () => finish(new ClosedError());
      armIdle();
      call.on('data', (msg: WatchResponse) => {
        if (done) return;
        armIdle();
        try {
          onMessage(msg);
        } catch (e) {
          finish(e instanceof ConfigWatchError ? e : new ProtocolError(`cannot apply a message: ${String(e)}`));
        }
      });
      call.on('error', (e: unknown) => finish(fromGrpcError(e), asksForVersions(e)));
      call.on('status', (s: grpc.StatusObject) => {
        finish(
          s.code === grpc.status.OK
            ? new ServerError(grpc.status.UNAVAILABLE, 'the server ended the watch')
            : new ServerError(s.code, s.details),
        );
      });
    });
  }

  /**
   * Checks a complete initial state before it is applied: reports a store identity
   * other than the one of the state held, and refuses (throws a
   * {@link MassRemovalError}, which ends the stream; the watch retries with backoff) a
   * state that would remove every entry held, unless `allowMassRemoval` accepts it.
   */
  private guard(mode: 'full' | 'diff' | 'resumed', entries: readonly WireEntry[], serverStoreId: string): void {
    const heldStoreId = this.storeId;
    // Empty on either side is unknown (a server that reports none, a state received
    // before identities): nothing to compare.
    const storeChanged = heldStoreId !== '' && serverStoreId !== '' && heldStoreId !== serverStoreId;
    if (storeChanged) {
      this.lastStoreChange = { previous: heldStoreId, current: serverStoreId, at: new Date() };
      this.emitSafely('storeChanged', { ...this.lastStoreChange });
    }
    const counts = this.cache.massRemoval(mode, entries);
    if (counts === undefined || mode === 'resumed') return;
    const info: MassRemovalInfo = {
      mode,
      ...counts,
      heldStoreId,
      serverStoreId,
      storeChanged,
      firstSeen: this.heldBack?.firstSeen ?? new Date(),
      times: (this.heldBack?.times ?? 0) + 1,
    };
    let allowed: boolean;
    if (typeof this.allowMassRemoval === 'function') {
      try {
        allowed = this.allowMassRemoval({ ...info }) === true;
      } catch {
        allowed = false;
      }
    } else {
      allowed = this.allowMassRemoval;
    }
    this.emitSafely('massRemoval', { ...info, applied: allowed });
    if (allowed) return;
    this.heldBack = info;
    throw new MassRemovalError(info);
  }

  /** Replaces the channel (and its connection) with a new one. */
  private renewChannel(): void {
    if (this.isClosed()) return;
    const old = this.rpc;
    this.rpc = this.newRpc();
    this.rpcSince = Date.now();
    old.close();
  }

  /** How long since anything came from the server on the current channel, in ms. */
  private silentFor(): number {
    return Date.now() - Math.max(this.lastMessageAt?.getTime() ?? 0, this.rpcSince);
  }

  /** Takes the revision and (non-empty) resume token of a message. */
  private advance(msg: WatchResponse): void {
    const revision = toNumber('revision', msg.revision);
    if (revision > 0) this.revision = revision;
    if (msg.resume_token !== '') this.resumeToken = msg.resume_token;
  }

  private deliver(changes: Change[]): void {
    for (const c of changes) {
      if (c.type === 'set' && !c.secret && c.value === undefined) {
        const info = this.cache.live(c.key);
        if (info?.decodeError) this.emitError(new DecodeError(c.key, `the value is not JSON: ${info.decodeError}`));
      }
      this.emitSafely('change', c);
      for (const q of this.queues) q.push(c);
    }
  }

  private async getFromServer(keys: string[]): Promise<GetResponse> {
    const call = async (): Promise<GetResponse> => {
      const metadata = await this.metadata();
      return new Promise<GetResponse>((resolve, reject) => {
        this.rpc.Get({ keys, tenant: this.tenant }, metadata, { deadline: Date.now() + this.callTimeoutMs }, (err, res) => {
          if (err) reject(fromGrpcError(err));
          else if (res === undefined) reject(new ProtocolError('Get returned no response'));
          else resolve(res);
        });
      });
    };
    try {
      return await call();
    } catch (e) {
      // A refused token: the token source gets one more chance.
      if (e instanceof ConfigWatchError && e.code === 'UNAUTHENTICATED') return call();
      throw e;
    }
  }

  private snapshotData(): SnapshotData {
    return {
      tenant: this.tenant,
      prefixes: [...this.prefixes],
      savedAt: new Date(),
      revision: this.revision,
      resumeToken: this.resumeToken,
      storeId: this.storeId,
      entries: this.cache.liveEntries().map((h) => ({
        key: h.key,
        version: h.version,
        value: h.raw ?? '',
        secret: h.secret,
        deleted: false,
        revision: h.revision,
        updatedAt: h.updatedAt,
      })),
    };
  }

  private describeLastError(): string {
    return this.lastError ? `last error: ${this.lastError.message}` : `state ${this.state}`;
  }

  /** Emits 'error' only when someone listens (an unheard 'error' would crash the process). */
  private emitError(error: ConfigWatchError): void {
    if (this.listenerCount('error') > 0) this.emitSafely('error', error);
  }

  /**
   * Emits after the cache is updated. A listener that throws must not break the
   * watch: the exception is rethrown on its own tick, as an uncaught exception
   * would be from any other event source.
   */
  private emitSafely<E extends keyof ClientEvents>(event: E, ...args: ClientEvents[E]): void {
    try {
      // The generic rest type is not narrowed through EventEmitter's conditional type.
      (this.emit as (e: E, ...a: ClientEvents[E]) => boolean)(event, ...args);
    } catch (e) {
      process.nextTick(() => {
        throw e;
      });
    }
  }
}

/** The server's answer to a `known_digest` that differs from its state. */
function asksForVersions(e: unknown): boolean {
  if (typeof e !== 'object' || e === null) return false;
  const { code, metadata } = e as { code?: unknown; metadata?: unknown };
  return (
    code === grpc.status.ABORTED &&
    metadata instanceof grpc.Metadata &&
    metadata.get('configwatch-resume').some((v) => v.toString() === 'known-versions')
  );
}
