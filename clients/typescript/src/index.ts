/**
 * @configwatch/client: a tenant's configuration from a configwatch server, held in a
 * local cache that the server keeps current.
 *
 * - {@link ConfigWatchClient} (client.ts): the cache, its reads, events, iterator,
 *   status and `readSecret`; runs the Watch, reconnects, resumes, re-authenticates.
 * - cache.ts: the rules that apply initial states and deltas by version (no I/O).
 * - snapshot.ts: the atomic on-disk snapshot, scoped to a tenant and prefixes.
 * - wire.ts: the only module that knows the protobuf messages (types generated from
 *   proto/ at build time).
 * - errors.ts: every error is a {@link ConfigWatchError} with a `code`.
 */
export {
  ConfigWatchClient,
  type ClientOptions,
  type ClientEvents,
  type ClientState,
  type ClientStatus,
  type CacheSource,
  type ConnectedInfo,
  type DisconnectedInfo,
  type ReconnectingInfo,
  type StoreChange,
  type EntryInfo,
  type TokenSource,
  type Versioned,
} from './client';
export type { Change, ChangeCause } from './cache';
export { backoffDelay, DEFAULT_BACKOFF, type BackoffOptions } from './backoff';
export {
  ConfigWatchError,
  ServerError,
  TokenSourceError,
  DecodeError,
  InvalidOptionsError,
  ProtocolError,
  TimeoutError,
  ClosedError,
  SnapshotError,
  MassRemovalError,
  isConfigWatchError,
  type MassRemovalInfo,
  type ErrorCode,
} from './errors';
