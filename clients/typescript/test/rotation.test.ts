// The rotation over several server addresses, without a server: which address an
// attempt goes to after a failure, when the backoff applies, and which failures are
// never a reason to move.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import * as grpc from '@grpc/grpc-js';

import { ConfigWatchClient, InvalidOptionsError, MassRemovalError, ServerError, TokenSourceError } from '../src';
import { backoffDelay, spreadDelay, type BackoffPolicy } from '../src/backoff';
import { ConfigWatchError, ProtocolError } from '../src/errors';
import { Rotation, nextStep, startIndex } from '../src/rotation';

const POLICY: BackoffPolicy = { initialMs: 100, maxMs: 10_000, multiplier: 2, jitter: 0.5 };
/** A fixed draw, so delays are exact. */
const HALF = (): number => 0.5;
const delay = (n: number): number => backoffDelay(n, POLICY, HALF);

const unavailable = new ServerError(grpc.status.UNAVAILABLE, 'server is shutting down; reconnect and resume with your last resume_token');

test('a failing server moves the watch to the next address at once; the backoff only after a full round', () => {
  const r = new Rotation(3, 1, POLICY, HALF);
  assert.equal(r.current, 1);
  const seen: Array<[number, number]> = [];
  for (let i = 0; i < 7; i++) {
    const d = r.after('nextAddress');
    assert.equal(d.moved, true);
    seen.push([r.current, d.delayMs]);
  }
  // 1 failed: 2 at once, then 0 at once; 0 failed too (every address failed in a
  // row): 1 after the first delay; the next round waits the second delay.
  assert.deepEqual(seen, [
    [2, 0],
    [0, 0],
    [1, delay(0)],
    [2, 0],
    [0, 0],
    [1, delay(1)],
    [2, 0],
  ]);
  // A stream that reaches its initial state resets it all: its end moves on within
  // the first step (half of it, with this draw), the rest of the round at once, and a
  // full round later the first delay again.
  r.synced();
  assert.deepEqual([r.after('nextAddress'), r.after('nextAddress'), r.after('nextAddress')], [
    { delayMs: 50, moved: true },
    { delayMs: 0, moved: true },
    { delayMs: delay(0), moved: true },
  ]);
  assert.equal(r.current, 2);
});

test('one address: every failure waits the growing backoff, as a client with a single address always did', () => {
  const r = new Rotation(1, 0, POLICY, HALF);
  const delays = [0, 1, 2, 3].map(() => r.after('nextAddress'));
  assert.deepEqual(delays, [0, 1, 2, 3].map((n) => ({ delayMs: delay(n), moved: false })));
  assert.equal(r.current, 0);
  r.synced();
  assert.deepEqual(r.after('nextAddress'), { delayMs: delay(0), moved: false });
});

test('a refused token or permission never moves the watch; other server failures do', () => {
  const unauthenticated = new ServerError(grpc.status.UNAUTHENTICATED, 'token expired');
  const denied = new ServerError(grpc.status.PERMISSION_DENIED, 'the token is for another tenant');
  assert.equal(nextStep(unauthenticated, true, true), 'refreshToken');
  assert.equal(nextStep(unauthenticated, false, false), 'refreshToken');
  assert.equal(nextStep(denied, false, false), 'fail');
  assert.equal(nextStep(denied, true, true), 'fail');
  assert.equal(nextStep(new ServerError(grpc.status.INVALID_ARGUMENT, 'bad prefix'), false, false), 'fail');
  // A resume token this server cannot read: again at once, here, without it.
  assert.equal(nextStep(new ServerError(grpc.status.INVALID_ARGUMENT, 'resume_token'), true, false), 'dropResumeToken');
  // The token source is the client's own: the same everywhere.
  assert.equal(nextStep(new TokenSourceError('down'), false, false), 'stay');
  // Unreachable, dropped, shut down, maximum connection age, silent, overloaded,
  // an answer the client cannot use, a state that would empty the cache: the server's.
  for (const e of [
    unavailable,
    new ServerError(grpc.status.UNAVAILABLE, 'the connection reached its maximum age; reconnect and resume'),
    new ServerError(grpc.status.INTERNAL, 'Received RST_STREAM with code 2'),
    new ServerError(grpc.status.RESOURCE_EXHAUSTED, 'too many streams'),
    new ConfigWatchError('UNAVAILABLE', 'nothing arrived from the server for 30000 ms; reconnecting', { retryable: true }),
    new ProtocolError('a delta arrived before the initial state was complete', true),
    new MassRemovalError({
      mode: 'full',
      held: 1,
      removed: 1,
      remaining: 0,
      heldStoreId: 'A',
      serverStoreId: 'B',
      storeChanged: true,
      firstSeen: new Date(),
      times: 1,
    }),
  ]) {
    assert.equal(nextStep(e, true, true), 'nextAddress', e.message);
  }

  // On a rotation: refusals stay on the address, at once the first time, then with backoff.
  const r = new Rotation(2, 0, POLICY, HALF);
  assert.deepEqual(r.after('refreshToken'), { delayMs: 0, moved: false });
  assert.deepEqual(r.after('refreshToken'), { delayMs: delay(0), moved: false });
  assert.equal(r.authRefusals, 2);
  assert.deepEqual(r.after('stay'), { delayMs: delay(1), moved: false });
  assert.deepEqual(r.after('dropResumeToken'), { delayMs: 0, moved: false });
  assert.equal(r.current, 0);
});

test('the first move after an established stream broke is spread over the backoff’s first step', () => {
  assert.equal(spreadDelay(POLICY, () => 0), 0);
  assert.equal(spreadDelay(POLICY, () => 1), 100);
  assert.equal(spreadDelay({ ...POLICY, jitter: 0 }, () => 0.25), 25);
  // Drawn: never above the first step, and spread over all of it.
  const waits: number[] = [];
  for (let i = 0; i < 2000; i++) {
    const r = new Rotation(3, 0, POLICY);
    r.synced();
    const d = r.after('nextAddress');
    assert.equal(d.moved, true);
    waits.push(d.delayMs);
    // The rest of the round goes at once.
    assert.equal(r.after('nextAddress').delayMs, 0);
  }
  assert.ok(waits.every((w) => w >= 0 && w <= POLICY.initialMs), JSON.stringify(waits));
  // In ten slices of 10 ms, each holds some of the draws.
  for (let slice = 0; slice < 10; slice++) {
    const n = waits.filter((w) => w >= slice * 10 && w < (slice + 1) * 10).length;
    assert.ok(n > 100, `${n} waits in ${slice * 10}..${(slice + 1) * 10} ms`);
  }
  // A refused token after a break is renewed at once, as before; the break is used up.
  const r = new Rotation(2, 0, POLICY, HALF);
  r.synced();
  assert.deepEqual(r.after('refreshToken'), { delayMs: 0, moved: false });
  assert.deepEqual(r.after('nextAddress'), { delayMs: 0, moved: true });
});

test('the first address is drawn at random (spread over the list), or the first one', () => {
  const counts = [0, 0, 0, 0];
  for (let i = 0; i < 400; i++) counts[startIndex(4, true)]! += 1;
  // Every address gets some of 400 clients (each at least 40 of an expected 100).
  assert.ok(counts.every((n) => n >= 40), JSON.stringify(counts));
  assert.equal(startIndex(4, true, () => 0), 0);
  assert.equal(startIndex(4, true, () => 0.99), 3);
  assert.equal(startIndex(4, false, () => 0.99), 0);
  assert.equal(startIndex(1, true, () => 0.99), 0);
});

test('addresses: one list or one address, each checked; the address used is reported as given', async () => {
  const token = (): string => 't';
  const tenant = 'acme';
  const made: ConfigWatchClient[] = [];
  const make = (o: Omit<ConstructorParameters<typeof ConfigWatchClient>[0], 'tenant' | 'token'>): ConfigWatchClient => {
    const c = new ConfigWatchClient({ tenant, token, ...o });
    made.push(c);
    return c;
  };
  assert.equal(make({ address: ' http://127.0.0.1:1 ' }).address, 'http://127.0.0.1:1');
  const listed = make({ addresses: ['http://127.0.0.1:1', '127.0.0.1:2'], randomStart: false });
  assert.equal(listed.address, 'http://127.0.0.1:1');
  assert.equal(listed.status().address, 'http://127.0.0.1:1');
  for (const bad of [
    { addresses: [] },
    { address: '127.0.0.1:1', addresses: ['127.0.0.1:2'] },
    { addresses: ['127.0.0.1:1', 'http://127.0.0.1:1'] },
    { addresses: ['127.0.0.1:1', 'http://host:1/path'] },
    { addresses: '127.0.0.1:1' as unknown as string[] },
    { addresses: ['127.0.0.1:1'], randomStart: 'yes' as unknown as boolean },
    {},
  ]) {
    assert.throws(() => make(bad), InvalidOptionsError, JSON.stringify(bad));
  }
  await Promise.all(made.map((c) => c.close()));
});
