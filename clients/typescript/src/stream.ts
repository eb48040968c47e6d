/**
 * One Watch call, from request to end: the initial state gathered from its chunks
 * (one mode throughout), deltas refused before it is complete, progress, the idle
 * timer that gives up on a silent stream, and why the stream ended
 * ({@link Outcome}). What a message does to the cache is the caller's
 * ({@link StreamHandlers}); this module holds no state between calls.
 */
import * as grpc from '@grpc/grpc-js';

import type { Cache } from './cache';
import { ClosedError, ConfigWatchError, ProtocolError, ServerError, fromGrpcError } from './errors';
import { fromWire, type ConfigServiceClient, type WatchRequest, type WatchResponse, type WireEntry } from './wire';

export type InitialMode = 'full' | 'diff' | 'resumed';

/** Why a Watch ended. */
export interface Outcome {
  error: ConfigWatchError;
  synced: boolean;
  sentResumeToken: boolean;
  /** The server answered that the digest sent differs from its state. */
  askedForVersions?: boolean;
}

/** What the caller does with what arrives. A handler that throws ends the stream with that error. */
export interface StreamHandlers {
  /** Anything arrived (called before the message is handled). */
  message(msg: WatchResponse): void;
  /** The initial state is complete: `entries` gathered from every initial message. */
  initial(mode: InitialMode, entries: WireEntry[], storeId: string, last: WatchResponse): void;
  /** Changes after the initial state. */
  delta(msg: WatchResponse): void;
  /** The server says nothing changed up to the message's revision. */
  progress(msg: WatchResponse): void;
  /** A stream that reached its initial state ended. */
  disconnected(error: ConfigWatchError): void;
}

/** A Watch in progress. */
export interface WatchCall {
  /** Settles (never rejects) when the stream ends. */
  outcome: Promise<Outcome>;
  /** Ends the stream with a {@link ClosedError}. */
  abort(): void;
}

/** What a Watch request says of the client and of the state it holds. */
export interface Held {
  readonly prefixes: readonly string[];
  readonly tenant: string;
  /** The newest resume token ('' when none). */
  readonly resumeToken: string;
  /** The store identity of the state held ('' when unknown). */
  readonly storeId: string;
}

/**
 * The Watch request for what is held: with a resume token (so the cache holds a
 * state the server sent) a 16-byte digest of what the cache holds, unless the server
 * asked for the versions themselves (`withVersions`); without one, the versions.
 */
export function watchRequest(held: Held, cache: Pick<Cache, 'knownVersions' | 'knownDigest'>, withVersions: boolean): WatchRequest {
  const digest = !withVersions && held.resumeToken !== '';
  return {
    prefixes: [...held.prefixes],
    tenant: held.tenant,
    resume_token: held.resumeToken,
    known_versions: digest ? {} : cache.knownVersions(),
    known_digest: digest ? cache.knownDigest() : Buffer.alloc(0),
    known_store_id: held.storeId,
  };
}

/** Opens a Watch and follows it; a stream silent for `idleTimeoutMs` ends as UNAVAILABLE. */
export function openWatch(
  rpc: ConfigServiceClient,
  request: WatchRequest,
  metadata: grpc.Metadata,
  idleTimeoutMs: number,
  handlers: StreamHandlers,
): WatchCall {
  const sentResumeToken = request.resume_token !== '';
  const call = rpc.Watch(request, metadata);
  let abort: () => void = () => undefined;

  const outcome = new Promise<Outcome>((resolve) => {
    let done = false;
    let synced = false;
    let initial: WireEntry[] = [];
    let initialMode: InitialMode | undefined;
    /** The store identity the initial messages carry ('' when the server sends none). */
    let storeId = '';
    let idle: NodeJS.Timeout | undefined;

    const finish = (error: ConfigWatchError, askedForVersions = false): void => {
      if (done) return;
      done = true;
      if (idle !== undefined) clearTimeout(idle);
      call.cancel();
      if (synced) handlers.disconnected(error);
      resolve({ error, synced, sentResumeToken, askedForVersions });
    };
    const armIdle = (): void => {
      if (idle !== undefined) clearTimeout(idle);
      idle = setTimeout(
        () =>
          finish(
            new ConfigWatchError('UNAVAILABLE', `nothing arrived from the server for ${idleTimeoutMs} ms; reconnecting`, {
              retryable: true,
            }),
          ),
        idleTimeoutMs,
      );
    };

    const onMessage = (msg: WatchResponse): void => {
      handlers.message(msg);
      switch (msg.kind) {
        case 'KIND_INITIAL': {
          const mode = modeOf(msg.initial_mode);
          if (mode === undefined || (initialMode !== undefined && mode !== initialMode)) {
            throw new ProtocolError(`initial message with mode ${String(msg.initial_mode)}`);
          }
          initialMode = mode;
          if (msg.store_id !== '') storeId = msg.store_id;
          for (const e of msg.changes) initial.push(fromWire(e));
          if (!msg.initial_complete) return;
          const entries = initial;
          initial = [];
          handlers.initial(mode, entries, storeId, msg);
          synced = true;
          return;
        }
        case 'KIND_DELTA': {
          if (!synced) {
            throw new ProtocolError('a delta arrived before the initial state was complete', true);
          }
          handlers.delta(msg);
          return;
        }
        case 'KIND_PROGRESS':
          if (!synced) return;
          handlers.progress(msg);
          return;
        default:
          // A kind this client does not know (a newer server): liveness only.
          return;
      }
    };

    abort = () => finish(new ClosedError());
    armIdle();
    call.on('data', (msg: WatchResponse) => {
      if (done) return;
      armIdle();
      try {
        onMessage(msg);
      } catch (e) {
        finish(e instanceof ConfigWatchError ? e : new ProtocolError(`cannot apply a message: ${String(e)}`));
      }
    });
    call.on('error', (e: unknown) => finish(fromGrpcError(e), asksForVersions(e)));
    call.on('status', (s: grpc.StatusObject) => {
      finish(
        s.code === grpc.status.OK
          ? new ServerError(grpc.status.UNAVAILABLE, 'the server ended the watch')
          : new ServerError(s.code, s.details),
      );
    });
  });
  return { outcome, abort: () => abort() };
}

function modeOf(mode: WatchResponse['initial_mode']): InitialMode | undefined {
  switch (mode) {
    case 'INITIAL_MODE_FULL':
      return 'full';
    case 'INITIAL_MODE_DIFF':
      return 'diff';
    case 'INITIAL_MODE_RESUMED':
      return 'resumed';
    default:
      return undefined;
  }
}

/** The server's answer to a `known_digest` that differs from its state. */
function asksForVersions(e: unknown): boolean {
  if (typeof e !== 'object' || e === null) return false;
  const { code, metadata } = e as { code?: unknown; metadata?: unknown };
  return (
    code === grpc.status.ABORTED &&
    metadata instanceof grpc.Metadata &&
    metadata.get('configwatch-resume').some((v) => v.toString() === 'known-versions')
  );
}
