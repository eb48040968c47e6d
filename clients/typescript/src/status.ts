/**
 * How current a {@link ConfigWatchClient}'s cache is: its life cycle
 * ({@link ClientState}), where the content came from ({@link CacheSource}), the
 * {@link ClientStatus} that `status()` returns and the {@link StoreChange} it reports.
 * Types only.
 */
import type { ConfigWatchError, MassRemovalInfo } from './errors';

/** A store identity the server reported that differs from the one of the state held. */
export interface StoreChange {
  /** The identity of the state held at the time. */
  previous: string;
  /** The identity the server reported. */
  current: string;
  at: Date;
}

/** Where the cache's content came from. */
export type CacheSource = 'none' | 'snapshot' | 'server';

/** Where the client is in its life. */
export type ClientState =
  /** Constructed, `start()` not called yet. */
  | 'idle'
  /** Opening a Watch, or receiving its initial state. */
  | 'connecting'
  /** The initial state is applied; deltas arrive as they happen. */
  | 'connected'
  /** Waiting (backoff) before the next attempt. */
  | 'reconnecting'
  /** Stopped on an error the application must fix (see `lastError`); reads still work. */
  | 'failed'
  /** `close()` was called. */
  | 'closed';

export interface ClientStatus {
  state: ClientState;
  /**
   * The server address the watch uses now (or is trying), as given in the options;
   * with several, the one the last move went to.
   */
  address: string;
  /** True while a Watch is open and its initial state has been applied. */
  connected: boolean;
  source: CacheSource;
  /**
   * True unless connected, current from the server, and a message or progress
   * arrived within `staleAfterMs`. A cache served from a snapshot is always stale.
   */
  stale: boolean;
  /** When the last message (change or progress) arrived from the server. */
  lastMessageAt: Date | undefined;
  /** When the cache last completed an initial state from the server. */
  lastSyncAt: Date | undefined;
  /** The tenant revision the cache is at (0 when unknown). */
  revision: number;
  /** Live keys held (secrets included). */
  entries: number;
  /** The last error of the watch, if any (cleared by a successful sync). */
  lastError: ConfigWatchError | undefined;
  /** Connection attempts since the last successful sync (0 while connected). */
  attempts: number;
  /** When the next attempt is due, while `reconnecting`. */
  nextAttemptAt: Date | undefined;
  /**
   * The last initial state the server sent would have removed every entry held, and
   * was held back: the cache serves what it held before (and is stale) until a state
   * that keeps something is applied. Undefined once one is.
   */
  heldBack: MassRemovalInfo | undefined;
  /**
   * The store identity of the state the cache holds ('' when unknown: a server that
   * does not report one, or nothing received yet).
   */
  storeId: string;
  /** The last time the server reported a store identity other than the one of the state held. */
  lastStoreChange: StoreChange | undefined;
  /**
   * Since when the server in use says it is cut off from the sources of its data (a
   * relay that lost its upstream, or whose upstream did). Undefined while it says it
   * is current.
   *
   * The cache stays consistent meanwhile, but only as of that time: changes made
   * since may be missing until it clears. `stale` says whether this client hears from
   * its server; this says whether the server hears from its sources. Alert when it
   * has been set for longer than the application tolerates old configuration, and,
   * where the application can, prefer another server (the client does not move by
   * itself: a cut-off server still serves a consistent state, and its clients moving
   * together would crowd the next one).
   *
   * Taken from every message of the Watch, progress included (a server sends one at
   * once when it is cut off and when it is current again); cleared by a message
   * without it and when the watch moves to another server.
   */
  serverDisconnectedSince: Date | undefined;
  snapshot:
    | {
        path: string;
        /** Whether the cache started from it. */
        loaded: boolean;
        /** When the snapshot in use (loaded or last written) was taken. */
        savedAt: Date | undefined;
        /** Why an existing snapshot file was not used (another tenant, malformed, ...). */
        ignored: string | undefined;
      }
    | undefined;
}
