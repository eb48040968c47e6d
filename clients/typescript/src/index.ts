/**
 * @configwatch/client: a tenant's configuration from a configwatch server, held in a
 * local cache that the server keeps current.
 *
 * - {@link ConfigWatchClient} (client.ts): the cache, its reads, events, iterator,
 *   status and `readSecret`; runs the Watch loop: reconnects, resumes,
 *   re-authenticates. Beside it: options.ts (the options, checked), status.ts and
 *   events.ts (what it reports), reads.ts (what reads return), ready.ts (the
 *   `ready()` waits).
 * - rotation.ts: which server address the watch uses and how long it waits after a
 *   failure (round-robin over the addresses, backoff after a full round).
 * - stream.ts: one Watch call, from request to why it ended; guard.ts: the checks on
 *   an initial state (store identity, mass removal) before it is applied.
 * - connection.ts: the grpc-js client, its renewal, the `authorization` metadata;
 *   secrets.ts: `readSecret`'s `Get`, moving on through the addresses.
 * - cache.ts: the rules that apply initial states and deltas by version (no I/O);
 *   changes.ts: the coalescing change iterators.
 * - snapshot.ts: the atomic on-disk snapshot, scoped to a tenant and prefixes.
 * - wire.ts: the only module that knows the protobuf messages (types generated from
 *   proto/ at build time).
 * - errors.ts: every error is a {@link ConfigWatchError} with a `code`.
 */
export { ConfigWatchClient } from './client';
export type { ClientOptions, TokenSource } from './options';
export type { AddressChangedInfo, ClientEvents, ConnectedInfo, DisconnectedInfo, ReconnectingInfo } from './events';
export type { ClientState, ClientStatus, CacheSource, StoreChange } from './status';
export type { EntryInfo, Versioned } from './reads';
export type { Change, ChangeCause } from './cache';
export { backoffDelay, spreadDelay, DEFAULT_BACKOFF, type BackoffOptions } from './backoff';
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
