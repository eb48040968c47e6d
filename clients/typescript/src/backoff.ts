/** Jittered exponential backoff for reconnecting. */

export interface BackoffOptions {
  /** The first delay, in ms. Default 250. */
  initialMs?: number;
  /** The longest delay, in ms. Default 30,000. */
  maxMs?: number;
  /** Growth per failed attempt. Default 2. */
  multiplier?: number;
  /**
   * How much of each delay is random, 0..1. Default 0.5: a delay is drawn uniformly
   * from [50%, 100%] of the exponential value, so clients that lost the same server
   * do not come back in step.
   */
  jitter?: number;
}

export type BackoffPolicy = Required<BackoffOptions>;

export const DEFAULT_BACKOFF: BackoffPolicy = { initialMs: 250, maxMs: 30_000, multiplier: 2, jitter: 0.5 };

/** The delay before retry number `attempt` (0 for the first retry). */
export function backoffDelay(attempt: number, policy: BackoffPolicy, random: () => number = Math.random): number {
  const exp = Math.min(policy.maxMs, policy.initialMs * Math.pow(policy.multiplier, Math.max(0, attempt)));
  return Math.round(exp * (1 - policy.jitter * random()));
}

/**
 * The wait before the first reconnect after an established stream broke, when the
 * next attempt would otherwise go at once (to another address): a uniform draw from
 * [0, initialMs], whatever `jitter`. A server that dies breaks every stream it holds
 * in the same instant; spread over the first step, its clients reach the next server
 * at a rate of about N / initialMs instead of all in the same millisecond (10,000
 * clients over the default 250 ms: 40 per millisecond).
 */
export function spreadDelay(policy: BackoffPolicy, random: () => number = Math.random): number {
  return Math.round(policy.initialMs * Math.min(1, Math.max(0, random())));
}
