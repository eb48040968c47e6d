/**
 * Which server address the watch uses and how long it waits before its next attempt:
 * what follows a failed attempt ({@link nextStep}), and the round-robin over the
 * addresses with the backoff ({@link Rotation}).
 *
 * The watch moves to the next address when the server (or the path to it) failed it:
 * unreachable, a stream broken by the transport, a server shutting down or ending the
 * stream at its maximum connection age (all UNAVAILABLE), a silent stream, or an
 * answer the client cannot use. It tries the next address at once while one of the
 * round is untried, and waits by the backoff only once every address failed in a
 * row; the first move after an established stream broke waits {@link spreadDelay}
 * (at most the backoff's first step), so the clients of a server that died do not
 * all reach the next one at once. A refused token or permission is the same on every
 * server: never a reason to move. Pure: indexes, counts and delays; no I/O, no timers, nothing of gRPC.
 */
import { backoffDelay, spreadDelay, type BackoffPolicy } from './backoff';
import type { ConfigWatchError } from './errors';

/** What the watch does after an attempt that ended with an error. */
export type Step =
  /** Stop: the application must change something (state `failed`). */
  | 'fail'
  /** Ask the token source again and retry on the same address. */
  | 'refreshToken'
  /** The server cannot read the resume token: retry at once, without it, on the same address. */
  | 'dropResumeToken'
  /** The server failed the watch: the next address, with backoff after a full round. */
  | 'nextAddress'
  /** A failure that would be the same on every server (the token source): the same address, with backoff. */
  | 'stay';

/**
 * The step after an attempt that ended with `error`. `sentResumeToken` and `synced`
 * say whether the attempt sent a resume token and reached its initial state.
 */
export function nextStep(error: ConfigWatchError, sentResumeToken: boolean, synced: boolean): Step {
  if (error.code === 'UNAUTHENTICATED') return 'refreshToken';
  if (error.code === 'INVALID_ARGUMENT' && sentResumeToken && !synced) return 'dropResumeToken';
  if (!error.retryable) return 'fail';
  if (error.code === 'TOKEN_SOURCE') return 'stay';
  return 'nextAddress';
}

/**
 * Where the first attempt goes among `count` addresses: one drawn at random, so that
 * many clients given the same list spread over its servers from the start instead of
 * all piling onto the first; or the first, when the list is an order of preference.
 */
export function startIndex(count: number, randomStart: boolean, random: () => number = Math.random): number {
  if (!randomStart || count <= 1) return 0;
  return Math.min(count - 1, Math.floor(random() * count));
}

/** What {@link Rotation.after} decided. */
export interface Decision {
  /** How long to wait before the next attempt, in ms. */
  delayMs: number;
  /** The next attempt goes to another address than the last one. */
  moved: boolean;
}

/** The round-robin over the addresses, and the backoff's exponent. */
export class Rotation {
  private index: number;
  /** Addresses that failed in a row since the last sync or the last full round. */
  private failedInRound = 0;
  /** Backoff delays taken since the last sync: the backoff's exponent. */
  private retries = 0;
  private refusals = 0;
  /** The last stream reached its initial state: the next move waits the spread rather than nothing. */
  private broke = false;

  /**
   * A rotation over `count` addresses (at least one) starting at `start`.
   * `random` draws the backoff's jitter.
   */
  constructor(
    private readonly count: number,
    start: number,
    private readonly backoff: BackoffPolicy,
    private readonly random: () => number = Math.random,
  ) {
    this.count = Math.max(1, count);
    this.index = ((start % this.count) + this.count) % this.count;
  }

  /** The index of the address to use now. */
  get current(): number {
    return this.index;
  }

  /** Tokens refused in a row since the last sync (1 the first time). */
  get authRefusals(): number {
    return this.refusals;
  }

  /** A stream reached its initial state: this address works; failures count from zero again. */
  synced(): void {
    this.failedInRound = 0;
    this.retries = 0;
    this.refusals = 0;
    this.broke = true;
  }

  /** What follows an attempt that ended by `step` (not `fail`): the delay, and whether it moved. */
  after(step: Exclude<Step, 'fail'>): Decision {
    const broke = this.broke;
    this.broke = false;
    switch (step) {
      case 'refreshToken':
        // Expired or refused: ask the token source again, at once the first time,
        // with backoff when fresh tokens keep being refused.
        this.refusals++;
        return { delayMs: this.refusals === 1 ? 0 : this.wait(), moved: false };
      case 'dropResumeToken':
        return { delayMs: 0, moved: false };
      case 'stay':
        return { delayMs: this.wait(), moved: false };
      case 'nextAddress': {
        // Every client of a server that died moves at the same instant: the first
        // move after an established stream broke is spread.
        const decision = this.moveOn();
        if (broke && decision.delayMs === 0) decision.delayMs = spreadDelay(this.backoff, this.random);
        return decision;
      }
    }
  }

  /**
   * The current address failed the watch: the next one, at once while an address of
   * this round is untried, after the backoff's next delay once every one failed in a
   * row. With one address that is the backoff every time, as without a list.
   */
  private moveOn(): Decision {
    const before = this.index;
    this.index = (this.index + 1) % this.count;
    this.failedInRound++;
    const moved = this.index !== before;
    if (this.failedInRound < this.count) return { delayMs: 0, moved };
    this.failedInRound = 0;
    return { delayMs: this.wait(), moved };
  }

  private wait(): number {
    return backoffDelay(this.retries++, this.backoff, this.random);
  }
}
