/**
 * The checks on a complete initial state before it is applied: a store identity other
 * than the one of the state held ({@link storeChangeOf}), and a state that would
 * remove every entry held ({@link massRemovalOf}), applied only when
 * `allowMassRemoval` accepts it. Decides only: the client records, emits and holds back.
 */
import type { Cache } from './cache';
import type { MassRemovalInfo } from './errors';
import type { StoreChange } from './status';
import type { InitialMode } from './stream';
import type { WireEntry } from './wire';

/** The store change the server's identity makes, if any. */
export function storeChangeOf(heldStoreId: string, serverStoreId: string): StoreChange | undefined {
  // Empty on either side is unknown (a server that reports none, a state received
  // before identities): nothing to compare.
  const storeChanged = heldStoreId !== '' && serverStoreId !== '' && heldStoreId !== serverStoreId;
  return storeChanged ? { previous: heldStoreId, current: serverStoreId, at: new Date() } : undefined;
}

/** What is known when an initial state is checked. */
export interface Check {
  cache: Cache;
  mode: InitialMode;
  entries: readonly WireEntry[];
  heldStoreId: string;
  serverStoreId: string;
  storeChanged: boolean;
  /** The removal held back before, if the last state was. */
  heldBack: MassRemovalInfo | undefined;
  allowMassRemoval: boolean | ((info: MassRemovalInfo) => boolean);
}

/**
 * Undefined when the state keeps something (or replays changes); otherwise the
 * removal, and whether `allowMassRemoval` lets it apply (a function that throws does not).
 */
export function massRemovalOf(check: Check): { info: MassRemovalInfo; allowed: boolean } | undefined {
  const { mode, heldBack, allowMassRemoval } = check;
  const counts = check.cache.massRemoval(mode, check.entries);
  if (counts === undefined || mode === 'resumed') return undefined;
  const info: MassRemovalInfo = {
    mode,
    ...counts,
    heldStoreId: check.heldStoreId,
    serverStoreId: check.serverStoreId,
    storeChanged: check.storeChanged,
    firstSeen: heldBack?.firstSeen ?? new Date(),
    times: (heldBack?.times ?? 0) + 1,
  };
  let allowed: boolean;
  if (typeof allowMassRemoval === 'function') {
    try {
      allowed = allowMassRemoval({ ...info }) === true;
    } catch {
      allowed = false;
    }
  } else {
    allowed = allowMassRemoval;
  }
  return { info, allowed };
}
