/**
 * The events a {@link ConfigWatchClient} emits ({@link ClientEvents}) and what each
 * carries. Types only.
 */
import type { Change } from './cache';
import type { ConfigWatchError, MassRemovalInfo } from './errors';
import type { StoreChange } from './status';

export interface ConnectedInfo {
  /** How the server built the initial state: all of it, a diff against the versions held, or a replay after the resume token. */
  mode: 'full' | 'diff' | 'resumed';
  revision: number;
  /** Visible changes the initial state made to the cache. */
  changes: number;
}

export interface DisconnectedInfo {
  error: ConfigWatchError;
}

/** The watch moved to another server address after a failure on the one before. */
export interface AddressChangedInfo {
  /** The address that failed the watch. */
  previous: string;
  /** The address the next attempt goes to. */
  current: string;
  /** Why the watch left `previous`. */
  error: ConfigWatchError;
}

export interface ReconnectingInfo {
  attempt: number;
  delayMs: number;
  error: ConfigWatchError;
}

/** The events a {@link ConfigWatchClient} emits. */
export interface ClientEvents {
  /** A key changed (emitted after the whole message is applied, so reads are consistent). */
  change: [change: Change];
  /** An initial state was applied: the cache is current. */
  connected: [info: ConnectedInfo];
  /** A stream that was connected ended. */
  disconnected: [info: DisconnectedInfo];
  /** The next attempt is scheduled. */
  reconnecting: [info: ReconnectingInfo];
  /** The watch moved to another server address (emitted before `reconnecting`). */
  addressChanged: [info: AddressChangedInfo];
  /** The server says nothing changed up to `revision`. */
  progress: [info: { revision: number }];
  /** A snapshot was written. */
  snapshot: [info: { path: string; savedAt: Date }];
  /**
   * The server sent an initial state that would remove every entry held: `applied`
   * false when it was held back (see `allowMassRemoval`), true when the option let it apply.
   */
  massRemoval: [info: MassRemovalInfo & { applied: boolean }];
  /** The server reported a store identity other than the one of the state held. */
  storeChanged: [info: StoreChange];
  /**
   * Something the application should know: a fatal watch error (state `failed`), a
   * refused token or failing token source (retried), a snapshot write failure, an
   * undecodable value. Emitted only when a listener is attached.
   */
  error: [error: ConfigWatchError];
  /** `close()` finished. */
  close: [];
}
