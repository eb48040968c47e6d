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
  /**
   * The server: `host:port`, `http://host:port`, or `https://host:port` (TLS). The
   * same as `addresses` with one element; give one of the two.
   */
  address?: string;
  /**
   * Several servers that serve the same configuration (origins, relays), each written
   * as `address` is. The watch uses one at a time and moves to the next (round-robin)
   * when that one fails it; see `randomStart`.
   */
  addresses?: readonly string[];
  /**
   * Whether the first attempt goes to an address drawn at random from `addresses`
   * (`true`, the default: clients given the same list spread over its servers instead
   * of all starting on the first) or to the first one (`false`: the list is an order
   * of preference). Later moves go round-robin from there either way.
   */
  randomStart?: boolean;
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

/** One server address, parsed. */
export interface ServerAddress {
  /** As given (blanks around it dropped): what the client reports. */
  address: string;
  /** `host:port`, the scheme taken off. */
  target: string;
  /** The address asked for TLS (`https://`). */
  tls: boolean;
}

/** The options, checked, with the defaults filled in. */
export interface Settings {
  tenant: string;
  /** Sorted, deduplicated, frozen. */
  prefixes: readonly string[];
  token: TokenSource;
  /** In the order given, none twice. */
  servers: readonly [ServerAddress, ...ServerAddress[]];
  randomStart: boolean;
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
  const servers = serverAddresses(options.address, options.addresses);
  const randomStart = options.randomStart ?? true;
  if (typeof randomStart !== 'boolean') throw new InvalidOptionsError('randomStart must be a boolean');
  const prefixes = options.prefixes ?? [];
  if (!Array.isArray(prefixes) || !prefixes.every((p) => typeof p === 'string' && p !== '')) {
    throw new InvalidOptionsError('prefixes must be an array of non-empty strings');
  }
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
    servers,
    randomStart,
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

/** `address` or `addresses` (exactly one of them), parsed. */
function serverAddresses(address: unknown, addresses: unknown): [ServerAddress, ...ServerAddress[]] {
  if (address !== undefined && addresses !== undefined) {
    throw new InvalidOptionsError('give address or addresses, not both');
  }
  let list: unknown[];
  if (addresses !== undefined) {
    if (!Array.isArray(addresses) || addresses.length === 0) {
      throw new InvalidOptionsError('addresses must be a non-empty array of strings');
    }
    list = addresses;
  } else {
    list = [address];
  }
  const servers = list.map((a) => {
    if (typeof a !== 'string') {
      throw new InvalidOptionsError(addresses === undefined ? 'address must be a string' : 'addresses must be strings');
    }
    return parseAddress(a);
  });
  const [first, ...rest] = servers;
  if (first === undefined) throw new InvalidOptionsError('addresses must be a non-empty array of strings');
  const targets = new Set(servers.map((s) => s.target));
  if (targets.size < servers.length) throw new InvalidOptionsError('addresses names a server twice');
  return [first, ...rest];
}

function parseAddress(address: string): ServerAddress {
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
  return { address: address.trim(), target, tls };
}
