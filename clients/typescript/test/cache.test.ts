// The cache rules, the backoff and the change queue, without a server.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { backoffDelay, DEFAULT_BACKOFF } from '../src/backoff';
import { Cache, type Change } from '../src/cache';
import { ChangeQueue } from '../src/changes';
import type { WireEntry } from '../src/wire';

function e(key: string, version: number, value: unknown, extra: Partial<WireEntry> = {}): WireEntry {
  return { key, version, value: JSON.stringify(value), secret: false, deleted: false, revision: version, updatedAt: undefined, ...extra };
}
function del(key: string, version: number): WireEntry {
  return { key, version, value: '', secret: false, deleted: true, revision: version, updatedAt: undefined };
}
const summary = (cs: Change[]): string[] => cs.map((c) => `${c.key}@${c.version}${c.type === 'delete' ? '-' : ''}`);

test('deltas apply only when newer; tombstones keep an old message from resurrecting a key', () => {
  const c = new Cache();
  assert.deepEqual(summary(c.applyDeltas([e('k', 1, 'a'), e('k', 2, 'b')])), ['k@1', 'k@2']);
  assert.deepEqual(summary(c.applyDeltas([e('k', 2, 'dup'), e('k', 1, 'old')])), []);
  assert.equal(c.live('k')?.value, 'b');
  assert.deepEqual(summary(c.applyDeltas([del('k', 3)])), ['k@3-']);
  assert.deepEqual(summary(c.applyDeltas([e('k', 2, 'b')])), []);
  assert.equal(c.live('k'), undefined);
  assert.equal(c.versionOf('k'), 3);
  assert.deepEqual(c.knownVersions(), {});
  assert.deepEqual(summary(c.applyDeltas([e('k', 4, 'back')])), ['k@4']);
  assert.deepEqual(c.knownVersions(), { k: '4' });
  // A removal of a key never held is not a visible change.
  assert.deepEqual(summary(c.applyDeltas([del('never', 1)])), []);
});

test('the digest of the versions held is the one the API defines', () => {
  // The server's and the Rust client's tests check the same values.
  const c = new Cache();
  assert.equal(c.knownDigest().toString('hex'), '00000000000000000000000000000000');
  c.applyDeltas([e('tenant_config_a', 1, 1)]);
  assert.equal(c.knownDigest().toString('hex'), '1189b337f183118e15d6dc71f6d0d83c');
  c.applyDeltas([{ ...e('param_config_db/url', 1_732_406_400_123_456, ''), value: '', secret: true }]);
  assert.equal(c.knownDigest().toString('hex'), '00c129ddb1e3f7f8fc7dfd609aecf9f2');
  // Tombstones are not held state.
  c.applyDeltas([del('param_config_db/url', 1_732_406_400_123_457), del('tenant_config_gone', 3)]);
  assert.equal(c.knownDigest().toString('hex'), '1189b337f183118e15d6dc71f6d0d83c');
});

test('an initial state that removes everything held is recognised', () => {
  const c = new Cache();
  // Nothing held: nothing to protect.
  assert.equal(c.massRemoval('full', []), undefined);
  c.applyInitial('full', [e('a', 1, 1), e('b', 1, 1)]);
  const counts = (held: number, removed: number, remaining: number): object => ({ held, removed, remaining });
  // An empty FULL state (a new, empty store).
  assert.deepEqual(c.massRemoval('full', []), counts(2, 2, 0));
  // A FULL state of other keys removes everything held too.
  assert.deepEqual(c.massRemoval('full', [e('z', 1, 1)]), counts(2, 2, 1));
  // One key kept: a partial removal.
  assert.equal(c.massRemoval('full', [e('b', 1, 1)]), undefined);
  // A DIFF removing every key held (an empty store diffed against the versions).
  assert.deepEqual(c.massRemoval('diff', [del('a', 0), del('b', 0)]), counts(2, 2, 0));
  // A DIFF that removes some, or changes the others, is a partial removal.
  assert.equal(c.massRemoval('diff', [del('a', 2)]), undefined);
  assert.equal(c.massRemoval('diff', [del('a', 2), e('b', 2, 2)]), undefined);
  assert.equal(c.massRemoval('diff', []), undefined);
  // RESUMED states are changes that happened, applied by version.
  assert.equal(c.massRemoval('resumed', [del('a', 2), del('b', 2)]), undefined);
  // Tombstones are not held: deleting the last live key is still everything.
  c.applyDeltas([del('a', 2)]);
  assert.deepEqual(c.massRemoval('diff', [del('b', 2)]), counts(1, 1, 0));
});

test('a FULL initial state replaces everything held', () => {
  const c = new Cache();
  c.applyDeltas([e('a', 1, 1), e('b', 1, 1)]);
  const changes = c.applyInitial('full', [e('a', 1, 1), e('c', 1, 1)]);
  assert.deepEqual(summary(changes), ['b@1-', 'c@1']);
  assert.deepEqual(c.liveEntries().map((h) => h.key), ['a', 'c']);
});

test('a DIFF initial state never takes a key back, but removes what the server does not know', () => {
  const c = new Cache();
  c.applyDeltas([e('a', 5, 'five'), e('b', 2, 'two'), del('d', 9)]);
  // A server that lags behind the instance the cache came from: a at 3 and d live at
  // 8 are older than held; b it does not know at all (version 0).
  const changes = c.applyInitial('diff', [e('a', 3, 'three'), del('b', 0), e('d', 8, 'eight')]);
  // b is gone: its tombstone keeps the version held.
  assert.deepEqual(summary(changes), ['b@2-']);
  assert.equal(c.live('a')?.value, 'five');
  assert.equal(c.live('b'), undefined);
  assert.equal(c.live('d'), undefined);
  // What is newer applies; b at the version of its tombstone does not.
  assert.deepEqual(summary(c.applyInitial('diff', [e('a', 6, 'six'), e('d', 10, 'ten'), e('b', 2, 'old')])), [
    'a@6',
    'd@10',
  ]);
  // A RESUMED state is applied like deltas.
  assert.deepEqual(summary(c.applyInitial('resumed', [e('a', 6, 'dup'), e('a', 7, 'seven')])), ['a@7']);
});

test('secrets never hold a value, even if one arrives', () => {
  const c = new Cache();
  const changes = c.applyDeltas([e('s', 1, 'leaked', { secret: true })]);
  assert.equal(changes[0]?.value, undefined);
  assert.equal(c.live('s')?.raw, undefined);
  assert.equal(c.live('s')?.value, undefined);
  assert.equal(c.live('s')?.secret, true);
});

test('values that are not JSON are held as undecodable, not thrown', () => {
  const c = new Cache();
  c.applyDeltas([{ ...e('x', 1, 0), value: '{nope' }]);
  assert.match(c.live('x')?.decodeError ?? '', /JSON/);
});

test('backoff grows exponentially, is jittered, and is capped', () => {
  const p = { ...DEFAULT_BACKOFF, initialMs: 100, maxMs: 1000, multiplier: 2, jitter: 0.5 };
  assert.equal(backoffDelay(0, p, () => 0), 100);
  assert.equal(backoffDelay(0, p, () => 1), 50);
  assert.equal(backoffDelay(3, p, () => 0), 800);
  assert.equal(backoffDelay(10, p, () => 0), 1000);
  const draws = new Set(Array.from({ length: 50 }, () => backoffDelay(2, p)));
  assert.ok(draws.size > 1, 'jittered');
  for (const d of draws) assert.ok(d >= 200 && d <= 400);
});

test('the change iterator holds at most one change per key, newest last', async () => {
  const q = new ChangeQueue(() => true, () => undefined);
  const change = (key: string, version: number): Change => ({
    key,
    type: 'set',
    version,
    value: version,
    previous: undefined,
    previousVersion: undefined,
    secret: false,
    revision: version,
    cause: 'delta',
  });
  for (let v = 1; v <= 1000; v++) {
    q.push(change('a', v));
    q.push(change('b', v));
  }
  q.push(change('a', 1001));
  q.end();
  const got: string[] = [];
  for await (const c of q) got.push(`${c.key}@${c.version}`);
  assert.deepEqual(got, ['b@1000', 'a@1001']);
});

test('a full state from another store forgets the tombstones: that store starts its own versions', () => {
  const c = new Cache();
  c.applyInitial('full', [e('kept', 5, 'a'), e('gone', 3, 'a'), e('only-a', 2, 'a')]);
  c.applyDeltas([del('gone', 4)]);
  // The same store: tombstones stay, and an old version of a deleted key is refused.
  c.applyInitial('full', [e('kept', 5, 'a'), e('only-a', 2, 'a')]);
  assert.equal(c.versionOf('gone'), 4);
  // Another store (lower versions): its state replaces everything, tombstones included.
  const changes = c.applyInitial('full', [e('kept', 1, 'b')], true);
  assert.deepEqual(summary(changes), ['only-a@2-', 'kept@1']);
  assert.deepEqual(c.knownVersions(), { kept: '1' });
  assert.equal(c.versionOf('gone'), undefined);
  assert.equal(c.versionOf('only-a'), undefined);
  // So its first versions of those keys apply.
  assert.deepEqual(summary(c.applyDeltas([e('gone', 1, 'b'), e('only-a', 1, 'b')])), ['gone@1', 'only-a@1']);
});
