/**
 * What the reads of a {@link ConfigWatchClient} hand out: a value with its version
 * ({@link Versioned}) and what is held about a key without its value
 * ({@link EntryInfo}). Knows the cache's entries, nothing of the watch.
 */
import type { Held } from './cache';
import { DecodeError } from './errors';

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

/**
 * A live key's value (not a secret's, and decoded) with its version, checked by
 * `decode` when given.
 *
 * @throws {DecodeError} when `decode` throws.
 */
export function versioned<T>(h: Held, decode?: (value: unknown) => T): Versioned<T> {
  let value: T;
  if (decode) {
    try {
      value = decode(h.value);
    } catch (e) {
      throw new DecodeError(h.key, `the value was refused by the decoder: ${e instanceof Error ? e.message : String(e)}`, e);
    }
  } else {
    value = h.value as T;
  }
  return { key: h.key, value, version: h.version, revision: h.revision, updatedAt: h.updatedAt };
}

/** What is held about a live key, without its value. */
export function entryInfo(h: Held): EntryInfo {
  return {
    key: h.key,
    version: h.version,
    secret: h.secret,
    revision: h.revision,
    updatedAt: h.updatedAt,
    decodeError: h.decodeError,
  };
}
