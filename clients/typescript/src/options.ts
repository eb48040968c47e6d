/**
 * What a {@link ConfigWatchClient} is given ({@link ClientOptions}, {@link TokenSource})
 * and their validation with the defaults filled in ({@link resolveOptions}). No I/O;
 * knows nothing of the watch. The snapshot options are checked where the snapshot
 * writer is made.
 */
import type * as grpc from '@grpc/grpc-js';

import { DEFAULT_BACKOFF, type BackoffOptions, type BackoffPolicy } from './backoff';
import { InvalidOptionsError, type MassRemovalInfo } from './errors';
import { normalizePrefixes } from './snapshot';

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

/** The options, checked, with the defaults filled in. */
export interface Settings {
  tenant: string;
  /** Sorted, deduplicated, frozen. */
  prefixes: readonly string[];
  token: TokenSource;
  /** `host:port`, the scheme taken off. */
  target: string;
  /** The address asked for TLS (`https://`). */
  tls: boolean;
  backoff: BackoffPolicy;
  staleAfterMs: number;
  idleTimeoutMs: number;
  callTimeoutMs: number;
  snapshotDebounceMs: number;
  allowMassRemoval: boolean | ((info: MassRemovalInfo) => boolean);
}

/**
 * Checks the options (all but the snapshot's) and fills in the defaults.
 *
 * @throws {InvalidOptionsError} when an option is invalid.
 */
export function resolveOptions(options: ClientOptions): Settings {
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
  const b = options.backoff ?? {};
  const backoff: BackoffPolicy = {
    initialMs: positive('backoff.initialMs', b.initialMs, DEFAULT_BACKOFF.initialMs),
    maxMs: positive('backoff.maxMs', b.maxMs, DEFAULT_BACKOFF.maxMs),
    multiplier: b.multiplier ?? DEFAULT_BACKOFF.multiplier,
    jitter: b.jitter ?? DEFAULT_BACKOFF.jitter,
  };
  if (!(backoff.multiplier >= 1) || !(backoff.jitter >= 0 && backoff.jitter <= 1)) {
    throw new InvalidOptionsError('backoff.multiplier must be >= 1 and backoff.jitter within [0, 1]');
  }
  const staleAfterMs = positive('staleAfterMs', options.staleAfterMs, 15_000);
  const idleTimeoutMs = positive('idleTimeoutMs', options.idleTimeoutMs, 30_000);
  const callTimeoutMs = positive('callTimeoutMs', options.callTimeoutMs, 10_000);
  const snapshotDebounceMs = positive('snapshotDebounceMs', options.snapshotDebounceMs, 500);
  const allowMassRemoval = options.allowMassRemoval ?? false;
  if (typeof allowMassRemoval !== 'boolean' && typeof allowMassRemoval !== 'function') {
    throw new InvalidOptionsError('allowMassRemoval must be a boolean or a function');
  }
  return {
    tenant: options.tenant,
    prefixes: Object.freeze(normalizePrefixes(prefixes)),
    token: options.token,
    target,
    tls,
    backoff,
    staleAfterMs,
    idleTimeoutMs,
    callTimeoutMs,
    snapshotDebounceMs,
    allowMassRemoval,
  };
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
