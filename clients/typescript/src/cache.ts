/**
 * The tenant-scoped cache and the rules that keep it equal to the server's state.
 * Pure: no I/O, no gRPC, no timers, so the rules can be read (and tested) alone.
 *
 * - FULL initial state: replaces everything held (the cache only ever holds keys
 *   under the watched prefixes of one tenant). From another store (a failover to a
 *   server of another store, a store recreated) it also forgets the tombstones: the
 *   versions of that store's deleted keys mean nothing in this one, and kept they
 *   would hide this store's first versions of those keys.
 * - DIFF initial state: each entry applies if it is newer than what is held for its
 *   key (live or deleted): the server may lag behind the instance the cache heard a
 *   version from, and versions only grow. A deleted entry is a removal; at version 0
 *   (a key neither the server nor its sources know) it always applies, and the
 *   tombstone keeps the version held (as a FULL state's removals).
 * - RESUMED initial state and deltas: an entry applies only if its version is newer
 *   than the one held for its key. Versions of deleted keys are kept as tombstones,
 *   so an old message can never bring a deleted key back.
 * - Secrets: only their version and existence are held, never a value.
 */
import { createHash } from 'node:crypto';

import type { WireEntry } from './wire';

/** How a change reached the cache. */
export type ChangeCause = 'full' | 'diff' | 'resumed' | 'delta';

/** One key's change, as delivered to listeners and iterators. */
export interface Change<T = unknown> {
  key: string;
  /** `set`: the key has a (new) value; `delete`: it no longer exists. */
  type: 'set' | 'delete';
  /** The key's version after the change (for a delete, the tombstone's version). */
  version: number;
  /** The new value (decoded JSON); undefined for deletes, secrets and undecodable values. */
  value: T | undefined;
  /** The value before, when the key existed; undefined otherwise. */
  previous: T | undefined;
  /** The version before, when the key existed (live). */
  previousVersion: number | undefined;
  /** A secret entry: read its value with `readSecret(key)`. */
  secret: boolean;
  /** The tenant revision at which the server applied the change. */
  revision: number;
  cause: ChangeCause;
}

/** The counts of an initial state that would remove every live entry held. */
export interface RemovalCounts {
  /** Live entries held. */
  held: number;
  /** How many of them the state removes (all). */
  removed: number;
  /** Live entries the cache would hold afterwards (keys it did not hold). */
  remaining: number;
}

/** What the cache holds for one key. */
export interface Held {
  key: string;
  version: number;
  deleted: boolean;
  secret: boolean;
  /** JSON text as received; undefined for tombstones and secrets. */
  raw: string | undefined;
  /** `raw` decoded; undefined when `raw` is, or when it is not JSON (see `decodeError`). */
  value: unknown;
  decodeError: string | undefined;
  revision: number;
  updatedAt: Date | undefined;
}

function hold(e: WireEntry): Held {
  if (e.deleted || e.secret) {
    return {
      key: e.key,
      version: e.version,
      deleted: e.deleted,
      secret: e.secret,
      raw: undefined,
      value: undefined,
      decodeError: undefined,
      revision: e.revision,
      updatedAt: e.updatedAt,
    };
  }
  let value: unknown;
  let decodeError: string | undefined;
  try {
    value = JSON.parse(e.value);
  } catch (err) {
    decodeError = err instanceof Error ? err.message : String(err);
  }
  return {
    key: e.key,
    version: e.version,
    deleted: false,
    secret: false,
    raw: e.value,
    value,
    decodeError,
    revision: e.revision,
    updatedAt: e.updatedAt,
  };
}

function sameState(a: Held, b: Held): boolean {
  return a.version === b.version && a.deleted === b.deleted && a.secret === b.secret && a.raw === b.raw;
}

export class Cache {
  private readonly held = new Map<string, Held>();

  /** The live entry for a key (secrets included), or undefined. */
  live(key: string): Held | undefined {
    const h = this.held.get(key);
    return h === undefined || h.deleted ? undefined : h;
  }

  /** Every live entry, in key order. */
  liveEntries(): Held[] {
    return [...this.held.values()].filter((h) => !h.deleted).sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  }

  liveCount(): number {
    let n = 0;
    for (const h of this.held.values()) if (!h.deleted) n++;
    return n;
  }

  /** key -> version of every live entry, as Watch's `known_versions` wants it. */
  knownVersions(): Record<string, string> {
    const out: Record<string, string> = {};
    for (const h of this.held.values()) if (!h.deleted) out[h.key] = String(h.version);
    return out;
  }

  /**
   * The digest of {@link knownVersions}, as Watch's `known_digest` wants it: for each
   * live entry, SHA-256 over the key, a zero byte and the version as 8 big-endian
   * bytes; the first 16 bytes of each XORed together.
   */
  knownDigest(): Buffer {
    const acc = Buffer.alloc(16);
    const version = Buffer.alloc(8);
    for (const h of this.held.values()) {
      if (h.deleted) continue;
      version.writeBigUInt64BE(BigInt(h.version));
      const sum = createHash('sha256').update(h.key, 'utf8').update(Buffer.of(0)).update(version).digest();
      for (let i = 0; i < 16; i++) acc.writeUInt8(acc.readUInt8(i) ^ sum.readUInt8(i), i);
    }
    return acc;
  }

  /** The version held for a key, tombstones included. */
  versionOf(key: string): number | undefined {
    return this.held.get(key)?.version;
  }

  /**
   * What a complete initial state would do to the live entries held: the counts when
   * it would remove every one of them (at least one is held), undefined otherwise.
   * RESUMED states are changes that happened, applied by version: never checked.
   */
  massRemoval(mode: 'full' | 'diff' | 'resumed', entries: readonly WireEntry[]): RemovalCounts | undefined {
    const held = this.liveCount();
    if (held === 0 || mode === 'resumed') return undefined;
    // A state carries one entry per key. Cheap answers first: an ordinary resync
    // keeps most keys, and is told apart without allocating.
    if (mode === 'full') {
      // FULL: a held key stays if the state has it live.
      if (entries.some((e) => !e.deleted && this.live(e.key) !== undefined)) return undefined;
    } else {
      // DIFF: only explicit removals remove; keys it does not name stay.
      let removals = 0;
      for (const e of entries) if (e.deleted) removals++;
      if (removals < held) return undefined;
      const removed = new Set<string>();
      for (const e of entries) if (e.deleted && this.live(e.key) !== undefined) removed.add(e.key);
      if (removed.size < held) return undefined;
    }
    let remaining = 0;
    for (const e of entries) if (!e.deleted && this.live(e.key) === undefined) remaining++;
    return { held, removed: held, remaining };
  }

  /**
   * Applies a complete initial state. Returns the visible changes. `otherStore`: the
   * state comes from another store than the one of the state held.
   */
  applyInitial(mode: 'full' | 'diff' | 'resumed', entries: readonly WireEntry[], otherStore = false): Change[] {
    switch (mode) {
      case 'resumed':
        return this.applyDeltas(entries, 'resumed');
      case 'diff':
        return this.applyAuthoritative(this.newerThanHeld(entries), 'diff');
      case 'full': {
        const changes: Change[] = [];
        const present = new Set(entries.map((e) => e.key));
        for (const h of [...this.held.values()]) {
          if (!h.deleted && !present.has(h.key)) {
            // Gone from the server: keep its version as a tombstone.
            changes.push(this.set(hold({ ...asWire(h), deleted: true, value: '' }), 'full'));
          }
        }
        changes.push(...this.applyAuthoritative(entries, 'full'));
        if (otherStore) {
          for (const h of [...this.held.values()]) if (h.deleted) this.held.delete(h.key);
        }
        return changes;
      }
    }
  }

  /** Applies deltas: each entry only if newer than what is held. */
  applyDeltas(entries: readonly WireEntry[], cause: ChangeCause = 'delta'): Change[] {
    const changes: Change[] = [];
    for (const e of entries) {
      const cur = this.held.get(e.key);
      if (cur !== undefined && e.version <= cur.version) continue;
      const c = this.setVisible(hold(e), cause);
      if (c) changes.push(c);
    }
    return changes;
  }

  /** Loads entries from a snapshot into an empty cache (no changes reported). */
  load(entries: readonly WireEntry[]): void {
    for (const e of entries) this.held.set(e.key, hold(e));
  }

  /**
   * The entries of a DIFF that apply: those newer than what is held for their key
   * (live or deleted), and removals at version 0 (keys the server does not know), at
   * the version held.
   */
  private newerThanHeld(entries: readonly WireEntry[]): WireEntry[] {
    const out: WireEntry[] = [];
    for (const e of entries) {
      const cur = this.held.get(e.key);
      if (e.deleted && e.version === 0) out.push(cur === undefined ? e : { ...e, version: cur.version });
      else if (cur === undefined || cur.version < e.version) out.push(e);
    }
    return out;
  }

  private applyAuthoritative(entries: readonly WireEntry[], cause: ChangeCause): Change[] {
    const changes: Change[] = [];
    for (const e of entries) {
      const next = hold(e);
      const cur = this.held.get(e.key);
      if (cur !== undefined && sameState(cur, next)) continue;
      const c = this.setVisible(next, cause);
      if (c) changes.push(c);
    }
    return changes;
  }

  /** Stores `next`; returns the change a reader can see, if any. */
  private setVisible(next: Held, cause: ChangeCause): Change | undefined {
    const cur = this.held.get(next.key);
    if (next.deleted && (cur === undefined || cur.deleted)) {
      this.held.set(next.key, next);
      return undefined;
    }
    return this.set(next, cause);
  }

  private set(next: Held, cause: ChangeCause): Change {
    const cur = this.held.get(next.key);
    this.held.set(next.key, next);
    const wasLive = cur !== undefined && !cur.deleted;
    return {
      key: next.key,
      type: next.deleted ? 'delete' : 'set',
      version: next.version,
      value: next.value,
      previous: wasLive ? cur.value : undefined,
      previousVersion: wasLive ? cur.version : undefined,
      secret: next.secret,
      revision: next.revision,
      cause,
    };
  }
}

/** What is held for a key, as the server sends it (a secret's value empty). */
export function asWire(h: Held): WireEntry {
  return {
    key: h.key,
    version: h.version,
    value: h.raw ?? '',
    secret: h.secret,
    deleted: h.deleted,
    revision: h.revision,
    updatedAt: h.updatedAt,
  };
}
