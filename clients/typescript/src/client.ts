/**
 * {@link ConfigWatchClient}: one tenant's configuration, held in memory and kept
 * current by a Watch stream that reconnects, resumes and re-authenticates by itself.
 *
 * Reads never touch the network. The watch runs in the background:
 *
 *   start() ── snapshot? ──► connect ──► initial state ──► deltas / progress ─┐
 *                               ▲                                             │
 *                               └── next address ◄── UNAVAILABLE, dropped, ◄──┤
 *                                   (backoff after a full round)  idle        │
 *                               └── fresh token ◄── UNAUTHENTICATED ◄─────────┤
 *                               └── backoff, cache kept ◄── removes all held ◄┤
 *                                   failed ◄── PERMISSION_DENIED, INVALID_ARGUMENT
 */
import { EventEmitter } from 'node:events';

import type * as grpc from '@grpc/grpc-js';

import { Cache, asWire, type Change } from './cache';
import { ChangeQueue } from './changes';
import { authMetadata, Connection } from './connection';
import {
  ClosedError,
  ConfigWatchError,
  DecodeError,
  InvalidOptionsError,
  MassRemovalError,
  ProtocolError,
  fromGrpcError,
  type MassRemovalInfo,
} from './errors';
import type { ClientEvents } from './events';
import { massRemovalOf, storeChangeOf } from './guard';
import { resolveOptions, type ClientOptions, type ServerAddress, type Settings } from './options';
import { ReadyWaiters } from './ready';
import { entryInfo, versioned, type EntryInfo, type Versioned } from './reads';
import { Rotation, nextStep, startIndex } from './rotation';
import { readSecret } from './secrets';
import { SnapshotWriter, readSnapshot, type SnapshotData } from './snapshot';
import type { CacheSource, ClientState, ClientStatus, StoreChange } from './status';
import { openWatch, watchRequest, type InitialMode, type Outcome } from './stream';
import { fromWire, timeOf, toNumber, type WatchResponse, type WireEntry } from './wire';

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

  private readonly settings: Settings;
  /** The channel to the address the rotation names; replaced when the watch moves. */
  private connection: Connection;
  private readonly connectTo: (server: ServerAddress) => Connection;
  private readonly rotation: Rotation;
  private readonly cache = new Cache();
  private readonly snapshotWriter: SnapshotWriter | undefined;

  private state: ClientState = 'idle';
  private source: CacheSource = 'none';
  private resumeToken = '';
  /** The store identity of the state held ('' when unknown). */
  private storeId = '';
  private heldBack: MassRemovalInfo | undefined;
  private lastStoreChange: StoreChange | undefined;
  /** As the last message of the server in use said (see {@link ClientStatus}). */
  private serverDisconnectedSince: Date | undefined;
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
  private readonly readyWaiters = new ReadyWaiters();
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
    const settings = resolveOptions(options);
    this.settings = settings;
    this.tenant = settings.tenant;
    this.prefixes = settings.prefixes;
    const count = settings.servers.length;
    this.rotation = new Rotation(count, startIndex(count, settings.randomStart), settings.backoff);
    this.connectTo = (server) => new Connection(server.target, server.tls, settings.backoff, options.credentials, options.channelOptions);
    this.connection = this.connectTo(this.server());

    if (options.snapshotPath !== undefined) {
      if (typeof options.snapshotPath !== 'string' || options.snapshotPath === '') {
        throw new InvalidOptionsError('snapshotPath must be a non-empty string');
      }
      const file = options.snapshotPath;
      this.snapshotInfo = { path: file, loaded: false, savedAt: undefined, ignored: undefined };
      this.snapshotWriter = new SnapshotWriter(file, settings.snapshotDebounceMs, () => this.snapshotData(), (error, savedAt) => {
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
    return this.readyWaiters.wait(
      options,
      (ms) => `the cache was not current from the server within ${ms} ms (${this.describeLastError()})`,
    );
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
    return versioned(h, decode);
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
    return entryInfo(h);
  }

  /** Live keys (secrets included), sorted; only those starting with `prefix` when given. */
  keys(prefix?: string): string[] {
    return this.cache
      .liveEntries()
      .map((h) => h.key)
      .filter((k) => prefix === undefined || k.startsWith(prefix));
  }

  /**
   * The server address the watch uses now (or is trying), as given in the options.
   * Changes when it moves to another (the `addressChanged` event).
   */
  get address(): string {
    return this.server().address;
  }

  /** Connection, freshness and origin of the cache. */
  status(): ClientStatus {
    const connected = this.state === 'connected';
    const fresh =
      connected &&
      this.source === 'server' &&
      this.lastMessageAt !== undefined &&
      Date.now() - this.lastMessageAt.getTime() <= this.settings.staleAfterMs;
    return {
      state: this.state,
      address: this.address,
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
      serverDisconnectedSince: this.serverDisconnectedSince,
      snapshot: this.snapshotInfo ? { ...this.snapshotInfo } : undefined,
    };
  }

  /**
   * Reads a secret's value from the server on demand (Get). Never cached. Resolves
   * to the string the secret holds, or undefined when the key does not exist. Asks
   * the address the watch uses, and the next ones in turn while one cannot be
   * reached or fails the call (UNAVAILABLE), all within `callTimeoutMs`; the watch
   * does not move. Rejects with a {@link ServerError} (e.g. INVALID_ARGUMENT for a bad
   * key; UNAVAILABLE naming every address tried when none answered), a
   * {@link TokenSourceError}, a {@link DecodeError} when the value is not a JSON
   * string, a {@link TimeoutError}, or a {@link ClosedError}.
   */
  async readSecret(key: string): Promise<string | undefined> {
    if (this.state === 'closed') throw new ClosedError();
    const { connection, connectTo } = this;
    return readSecret({ ...this.settings, current: this.rotation.current, connection, connectTo }, key);
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
    this.readyWaiters.rejectAll(closed);
    for (const q of [...this.queues]) q.end();
    await this.started;
    await this.loop;
    if (this.snapshotWriter) await this.snapshotWriter.flush();
    this.connection.close();
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
    try {
      while (!this.isClosed()) {
        this.setState('connecting');
        this.attempts++;
        const outcome = await this.watchOnce();
        if (this.isClosed()) return;
        const { error, synced } = outcome;
        this.lastError = error;
        if (synced) this.rotation.synced();
        const sentVersions = this.withVersions;
        this.withVersions = !synced && (this.withVersions || outcome.askedForVersions === true);
        if (outcome.askedForVersions && !sentVersions) {
          // Not a failure: the server needs the versions to send the difference.
          // (Asked again after sending them, it is an error like any other, so
          // nothing spins.)
          continue;
        }
        const step = nextStep(error, outcome.sentResumeToken, synced);
        if (step === 'fail') {
          this.fail(error);
          return;
        }
        // The token (e.g. from an old snapshot) is not one this server reads: start
        // over from the known versions. A second refusal is fatal.
        if (step === 'dropResumeToken') this.resumeToken = '';
        const from = this.address;
        const { delayMs, moved } = this.rotation.after(step);
        if (moved) {
          this.moveTo(from, error);
        } else if (error.code === 'UNAVAILABLE' && this.connection.silentFor(this.lastMessageAt) >= this.settings.idleTimeoutMs) {
          // Nothing came over this channel for idleTimeoutMs: a silent stream, or
          // attempts that keep failing. Its connection may be half-open (a dead peer,
          // a NAT that forgot the flow; a new call on it would hang the same way), or
          // accepted and then silent before HTTP/2 was set up (grpc-js then fails
          // every call at once while it waits, with no deadline). The next attempt
          // gets a new channel.
          this.connection.renew();
        }
        // Refused tokens are retried at once the first time, and reported when fresh
        // ones keep being refused.
        const report =
          step === 'refreshToken'
            ? this.rotation.authRefusals > 1
            : error.code === 'TOKEN_SOURCE' || error.code === 'PROTOCOL' || error.code === 'MASS_REMOVAL';
        if (report) this.emitError(error);
        this.setState('reconnecting');
        this.nextAttemptAt = new Date(Date.now() + delayMs);
        this.emitSafely('reconnecting', { attempt: this.attempts, delayMs, error });
        await this.sleep(delayMs);
      }
    } catch (e) {
      // Not reached by design; never leave the loop without saying why.
      this.fail(e instanceof ConfigWatchError ? e : new ProtocolError(`watch loop failed: ${String(e)}`));
    }
  }

  /** The server address the rotation names. */
  private server(): ServerAddress {
    return this.settings.servers[this.rotation.current] ?? this.settings.servers[0];
  }

  /**
   * The watch moves to the address the rotation names now, after `error` on `from`:
   * a channel to it, the old one closed (a `readSecret` in flight on it ends
   * normally).
   */
  private moveTo(from: string, error: ConfigWatchError): void {
    const previous = this.connection;
    this.connection = this.connectTo(this.server());
    previous.close();
    // What the last server said of its sources says nothing of the next.
    this.serverDisconnectedSince = undefined;
    this.emitSafely('addressChanged', { previous: from, current: this.address, error });
  }

  private fail(error: ConfigWatchError): void {
    this.lastError = error;
    this.setState('failed');
    this.readyWaiters.rejectAll(error);
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

  /** One Watch, from request to end. Resolves (never rejects) with why it ended. */
  private async watchOnce(): Promise<Outcome> {
    let metadata: grpc.Metadata | 'closed';
    try {
      // A token source that never answers must not hold close() up.
      metadata = await Promise.race([authMetadata(this.settings.token), this.closedSignal]);
    } catch (e) {
      return { error: e instanceof ConfigWatchError ? e : fromGrpcError(e), synced: false, sentResumeToken: false };
    }
    if (metadata === 'closed' || this.isClosed()) {
      return { error: new ClosedError(), synced: false, sentResumeToken: false };
    }
    const { prefixes, tenant, resumeToken, storeId } = this;
    const request = watchRequest({ prefixes, tenant, resumeToken, storeId }, this.cache, this.withVersions);
    const call = openWatch(this.connection.rpc, request, metadata, this.settings.idleTimeoutMs, {
      message: (msg) => {
        this.lastMessageAt = new Date();
        this.serverDisconnectedSince = timeOf(msg.disconnected_since);
      },
      initial: (mode, entries, storeId, msg) => this.applyInitial(mode, entries, storeId, msg),
      delta: (msg) => {
        const changes = this.cache.applyDeltas(msg.changes.map(fromWire), 'delta');
        this.advance(msg);
        this.deliver(changes);
        this.snapshotWriter?.schedule();
      },
      progress: (msg) => {
        this.advance(msg);
        this.emitSafely('progress', { revision: this.revision });
      },
      disconnected: (error) => {
        if (!this.isClosed()) this.emitSafely('disconnected', { error });
      },
    });
    this.abortCall = call.abort;
    const outcome = await call.outcome;
    this.abortCall = undefined;
    return outcome;
  }

  /** Applies a complete initial state: the cache is current from the server. */
  private applyInitial(mode: InitialMode, initial: WireEntry[], storeId: string, msg: WatchResponse): void {
    const otherStore = this.guard(mode, initial, storeId);
    const changes = this.cache.applyInitial(mode, initial, otherStore);
    this.advance(msg);
    if (storeId !== '') this.storeId = storeId;
    this.heldBack = undefined;
    this.everSynced = true;
    this.attempts = 0;
    this.source = 'server';
    this.lastSyncAt = new Date();
    this.lastError = undefined;
    this.setState('connected');
    this.deliver(changes);
    this.snapshotWriter?.schedule();
    this.emitSafely('connected', { mode, revision: this.revision, changes: changes.length });
    this.readyWaiters.resolveAll();
  }

  /**
   * Checks a complete initial state before it is applied: reports a store identity
   * other than the one of the state held, and refuses (throws a
   * {@link MassRemovalError}, which ends the stream; the watch retries with backoff) a
   * state that would remove every entry held, unless `allowMassRemoval` accepts it.
   * Returns whether the state comes from another store than the one held.
   */
  private guard(mode: InitialMode, entries: readonly WireEntry[], serverStoreId: string): boolean {
    const heldStoreId = this.storeId;
    const storeChange = storeChangeOf(heldStoreId, serverStoreId);
    if (storeChange) {
      this.lastStoreChange = storeChange;
      this.emitSafely('storeChanged', { ...this.lastStoreChange });
    }
    const removal = massRemovalOf({
      cache: this.cache,
      mode,
      entries,
      heldStoreId,
      serverStoreId,
      storeChanged: storeChange !== undefined,
      heldBack: this.heldBack,
      allowMassRemoval: this.settings.allowMassRemoval,
    });
    const otherStore = storeChange !== undefined;
    if (removal === undefined) return otherStore;
    const { info, allowed } = removal;
    this.emitSafely('massRemoval', { ...info, applied: allowed });
    if (allowed) return otherStore;
    this.heldBack = info;
    throw new MassRemovalError(info);
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

  private snapshotData(): SnapshotData {
    return {
      tenant: this.tenant,
      prefixes: [...this.prefixes],
      savedAt: new Date(),
      revision: this.revision,
      resumeToken: this.resumeToken,
      storeId: this.storeId,
      entries: this.cache.liveEntries().map(asWire),
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
