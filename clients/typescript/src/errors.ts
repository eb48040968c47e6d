/**
 * Typed errors. Every error this package produces, thrown, rejected or emitted, is a
 * {@link ConfigWatchError} with a {@link ErrorCode}; errors that come from a gRPC
 * status are {@link ServerError}s and carry the status code.
 */
import { status as GrpcStatus, type ServiceError } from '@grpc/grpc-js';

/** What went wrong, as a stable string to switch on. */
export type ErrorCode =
  /** The options given to the client are invalid (thrown by the constructor). */
  | 'INVALID_OPTIONS'
  /** The server refused the request as malformed: bad key, prefix or resume token. */
  | 'INVALID_ARGUMENT'
  /** The token does not allow this (another tenant, or too weak a role). */
  | 'PERMISSION_DENIED'
  /** The token is missing, malformed or expired. */
  | 'UNAUTHENTICATED'
  /** The server is unreachable, shutting down, or the connection dropped. */
  | 'UNAVAILABLE'
  /** Any other gRPC status from the server. */
  | 'SERVER'
  /** The token source threw, rejected, or returned something other than a non-empty string. */
  | 'TOKEN_SOURCE'
  /** A value is not the JSON the caller expected. */
  | 'DECODE'
  /** The server sent something this client does not understand. */
  | 'PROTOCOL'
  /** A wait or a call ran out of time. */
  | 'TIMEOUT'
  /** The client was closed. */
  | 'CLOSED'
  /** The on-disk snapshot could not be written. */
  | 'SNAPSHOT'
  /**
   * The server sent an initial state that would remove every entry the cache holds,
   * and the client held it back (see `allowMassRemoval`); it retries with backoff.
   */
  | 'MASS_REMOVAL';

/** The base of every error of this package. */
export class ConfigWatchError extends Error {
  override name = 'ConfigWatchError';
  readonly code: ErrorCode;
  /**
   * True when the client keeps trying by itself (it reconnects); false when the
   * application must change something (a token, an option, a key).
   */
  readonly retryable: boolean;

  constructor(code: ErrorCode, message: string, options?: { retryable?: boolean; cause?: unknown }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.retryable = options?.retryable ?? false;
  }
}

/** The server (or the gRPC transport) ended a call with a non-OK status. */
export class ServerError extends ConfigWatchError {
  override name = 'ServerError';
  /** The gRPC status code (`@grpc/grpc-js` `status`). */
  readonly grpcCode: GrpcStatus;
  /** The status message the server sent. */
  readonly details: string;

  constructor(grpcCode: GrpcStatus, details: string, options?: { cause?: unknown }) {
    const code = codeOf(grpcCode);
    super(code, `${GrpcStatus[grpcCode] ?? grpcCode}: ${details}`, {
      retryable: isRetryableStatus(grpcCode),
      cause: options?.cause,
    });
    this.grpcCode = grpcCode;
    this.details = details;
  }
}

/** The token source failed; the client calls it again after a backoff. */
export class TokenSourceError extends ConfigWatchError {
  override name = 'TokenSourceError';
  constructor(message: string, cause?: unknown) {
    super('TOKEN_SOURCE', message, { retryable: true, cause });
  }
}

/** A value could not be decoded (bad JSON, or refused by the caller's decoder). */
export class DecodeError extends ConfigWatchError {
  override name = 'DecodeError';
  readonly key: string;
  constructor(key: string, message: string, cause?: unknown) {
    super('DECODE', `${key}: ${message}`, { cause });
    this.key = key;
  }
}

/** Bad client options. */
export class InvalidOptionsError extends ConfigWatchError {
  override name = 'InvalidOptionsError';
  constructor(message: string) {
    super('INVALID_OPTIONS', message);
  }
}

/** The server sent a message this client cannot use. */
export class ProtocolError extends ConfigWatchError {
  override name = 'ProtocolError';
  constructor(message: string, retryable = false) {
    super('PROTOCOL', message, { retryable });
  }
}

/** A wait ran out of time. */
export class TimeoutError extends ConfigWatchError {
  override name = 'TimeoutError';
  constructor(message: string) {
    super('TIMEOUT', message, { retryable: true });
  }
}

/** The client was closed. */
export class ClosedError extends ConfigWatchError {
  override name = 'ClosedError';
  constructor(message = 'the client is closed') {
    super('CLOSED', message);
  }
}

/** The snapshot could not be written (reads and the watch go on). */
export class SnapshotError extends ConfigWatchError {
  override name = 'SnapshotError';
  readonly path: string;
  constructor(path: string, message: string, cause?: unknown) {
    super('SNAPSHOT', `${path}: ${message}`, { retryable: true, cause });
    this.path = path;
  }
}

/** Why a {@link MassRemovalError} was raised, with the counts. */
export interface MassRemovalInfo {
  /** How the server built the state: the whole state, or removals against the versions sent. */
  mode: 'full' | 'diff';
  /** Live entries the cache holds (secrets included). */
  held: number;
  /** How many of them the state removes: all of them. */
  removed: number;
  /** Live entries the cache would hold after applying it (keys it did not hold). */
  remaining: number;
  /** The store identity of the state held ('' when unknown). */
  heldStoreId: string;
  /** The store identity the server sent with this state ('' when unknown). */
  serverStoreId: string;
  /** Both identities are known and differ: the store was recreated (or is another one). */
  storeChanged: boolean;
  /** When the server first sent such a state, in this run of refusals. */
  firstSeen: Date;
  /** How many times in a row the server sent such a state (1 the first time). */
  times: number;
}

/**
 * The server sent an initial state that would remove every entry the cache holds (a
 * store that lost its data looks like this) and the client held it back: the cache
 * keeps serving what it holds, stale, and the watch retries with backoff.
 */
export class MassRemovalError extends ConfigWatchError {
  override name = 'MassRemovalError';
  readonly info: MassRemovalInfo;
  constructor(info: MassRemovalInfo) {
    const store = info.storeChanged
      ? `; the server's store identity changed from ${JSON.stringify(info.heldStoreId)} to ${JSON.stringify(info.serverStoreId)}`
      : '';
    super(
      'MASS_REMOVAL',
      `the server's initial state (${info.mode}) would remove all ${info.held} entries held (${info.remaining} would remain)${store}; ` +
        `sent ${info.times} time(s) in a row. Held back: the cache keeps serving what it holds (stale) and retries with backoff. ` +
        'If the removal is intended, accept it with the allowMassRemoval option',
      { retryable: true },
    );
    this.info = info;
  }
}

/** True for any error this package produces. */
export function isConfigWatchError(e: unknown): e is ConfigWatchError {
  return e instanceof ConfigWatchError;
}

function codeOf(grpcCode: GrpcStatus): ErrorCode {
  switch (grpcCode) {
    case GrpcStatus.INVALID_ARGUMENT:
      return 'INVALID_ARGUMENT';
    case GrpcStatus.PERMISSION_DENIED:
      return 'PERMISSION_DENIED';
    case GrpcStatus.UNAUTHENTICATED:
      return 'UNAUTHENTICATED';
    case GrpcStatus.UNAVAILABLE:
      return 'UNAVAILABLE';
    default:
      return 'SERVER';
  }
}

/**
 * Statuses after which a watch reconnects by itself. UNAUTHENTICATED is retried too,
 * but with a fresh token (see the client); the rest need the application.
 */
function isRetryableStatus(grpcCode: GrpcStatus): boolean {
  switch (grpcCode) {
    case GrpcStatus.INVALID_ARGUMENT:
    case GrpcStatus.PERMISSION_DENIED:
    case GrpcStatus.NOT_FOUND:
    case GrpcStatus.ALREADY_EXISTS:
    case GrpcStatus.FAILED_PRECONDITION:
    case GrpcStatus.OUT_OF_RANGE:
    case GrpcStatus.UNIMPLEMENTED:
      return false;
    default:
      return true;
  }
}

/** Converts whatever a grpc-js call failed with into a typed error. */
export function fromGrpcError(e: unknown): ConfigWatchError {
  if (e instanceof ConfigWatchError) return e;
  if (isServiceError(e)) return new ServerError(e.code, e.details, { cause: e });
  return new ServerError(GrpcStatus.UNKNOWN, e instanceof Error ? e.message : String(e), { cause: e });
}

function isServiceError(e: unknown): e is ServiceError {
  return (
    typeof e === 'object' &&
    e !== null &&
    typeof (e as { code?: unknown }).code === 'number' &&
    typeof (e as { details?: unknown }).details === 'string'
  );
}
