// A client given several server addresses, against real servers: it moves to the
// next one when the server it uses dies, resumes there from what it holds, and a
// refused token or permission never moves it.
import assert from 'node:assert/strict';
import * as net from 'node:net';
import { test } from 'node:test';

import type { AddressChangedInfo, ConnectedInfo, ReconnectingInfo, StoreChange } from '../src';
import { Harness, converged, waitFor } from './helpers';

const TENANT = 'acme';

test('two servers of different stores: the one in use dies, the client moves to the other and holds exactly its state; and back', async (t) => {
  const h = new Harness(t);
  const a = await h.server();
  const b = await h.peer(a);
  // A and B share one key (so moving is no mass removal), at other versions and values.
  await a.put(TENANT, 'tenant_config_shared', 'a1');
  await a.put(TENANT, 'tenant_config_shared', 'a2');
  await a.put(TENANT, 'tenant_config_a-only', { from: 'a' });
  await a.put(TENANT, 'tenant_config_gone', 'a');
  await b.put(TENANT, 'tenant_config_shared', 'b1');
  await b.put(TENANT, 'tenant_config_b-only', { from: 'b' });
  await b.put(TENANT, 'param_config_b', 'b');

  const client = await h.client({ addresses: [a.url, b.url], randomStart: false, tenant: TENANT, token: () => a.token(TENANT) });
  const moves: AddressChangedInfo[] = [];
  const waits: ReconnectingInfo[] = [];
  const syncs: ConnectedInfo[] = [];
  const storeChanges: StoreChange[] = [];
  client.on('addressChanged', (i) => moves.push(i));
  client.on('reconnecting', (i) => waits.push(i));
  client.on('connected', (i) => syncs.push(i));
  client.on('storeChanged', (i) => storeChanges.push(i));
  await client.ready({ timeoutMs: 10_000 });
  assert.equal(client.address, a.url);
  // A deletes a key while the client watches: the client holds its tombstone (version 2).
  await a.delete(TENANT, 'tenant_config_gone');
  await converged(client, a, TENANT);
  const storeA = client.status().storeId;
  assert.notEqual(storeA, '');

  // A dies: the client moves to B without the backoff (an untried address), after a
  // random part of the first step (the harness's 50 ms), as every client of A does.
  await a.kill('SIGKILL');
  await converged(client, b, TENANT);
  assert.equal(client.address, b.url);
  assert.equal(client.status().address, b.url);
  assert.deepEqual(
    moves.map((m) => [m.previous, m.current, m.error.code]),
    [[a.url, b.url, 'UNAVAILABLE']],
  );
  assert.ok(waits[0] !== undefined && waits[0].delayMs <= 50, JSON.stringify(waits));
  // Another store: the versions held mean nothing there, so a full state, and the
  // cache equals B's: A's keys gone, the shared key at B's (lower) version.
  assert.equal(syncs.at(-1)?.mode, 'full');
  const storeB = client.status().storeId;
  assert.notEqual(storeB, storeA);
  assert.deepEqual(
    storeChanges.map((c) => [c.previous, c.current]),
    [[storeA, storeB]],
  );
  assert.equal(client.get('tenant_config_shared')?.version, 1);
  assert.equal(client.has('tenant_config_a-only'), false);
  // Nothing of A's is left, not even the version of the key A deleted: B's first
  // version of it arrives.
  const created = await b.put(TENANT, 'tenant_config_gone', 'b');
  assert.equal(created, 1);
  await waitFor(() => client.get('tenant_config_gone')?.value === 'b', 10_000, () => 'B’s tenant_config_gone@1');
  await converged(client, b, TENANT);

  // A comes back and B dies: back to A, equal to A again.
  await a.restart();
  await b.kill('SIGKILL');
  await converged(client, a, TENANT);
  assert.equal(client.address, a.url);
  assert.deepEqual(
    moves.map((m) => [m.previous, m.current]),
    [
      [a.url, b.url],
      [b.url, a.url],
    ],
  );
  assert.equal(client.status().storeId, storeA);
  assert.equal(client.get('tenant_config_shared')?.value, 'a2');
  assert.equal(client.has('tenant_config_gone'), false);
  assert.equal(client.has('param_config_b'), false);
});

test('the same store behind the next address: the client resumes there by digest, with nothing resent', async (t) => {
  const h = new Harness(t);
  const a = await h.server();
  for (const k of ['a', 'b', 'c']) await a.put(TENANT, `tenant_config_${k}`, k);
  // B is the same data directory served on another port once A is gone (one process
  // at a time holds the store): another address, the same store.
  const portB = await freePort();
  const client = await h.client({
    addresses: [a.url, `http://127.0.0.1:${portB}`],
    randomStart: false,
    tenant: TENANT,
    token: () => a.token(TENANT),
  });
  const syncs: ConnectedInfo[] = [];
  const storeChanges: StoreChange[] = [];
  client.on('connected', (i) => syncs.push(i));
  client.on('storeChanged', (i) => storeChanges.push(i));
  let changes = 0;
  client.on('change', () => changes++);
  await client.ready({ timeoutMs: 10_000 });
  assert.equal(changes, 3);
  await a.kill('SIGKILL');
  const b = await h.server(a.dataDir, portB);
  await converged(client, b, TENANT);
  assert.equal(client.address, b.url);
  // Not a full state: the digest of what the client holds matched, and nothing came again.
  assert.deepEqual(
    syncs.map((s) => [s.mode, s.changes]),
    [
      ['full', 3],
      ['diff', 0],
    ],
  );
  assert.equal(changes, 3);
  assert.deepEqual(storeChanges, []);
  // And it follows B from there.
  await b.put(TENANT, 'tenant_config_a', 'again');
  await waitFor(() => client.get('tenant_config_a')?.value === 'again', 10_000, () => 'the write on B');
});

/** A port free on 127.0.0.1 now (for a server started later on it). */
async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  await new Promise((resolve) => server.close(resolve));
  assert.ok(address !== null && typeof address === 'object');
  return address.port;
}

test('every address down: the client goes round them, waiting the backoff after each full round, and syncs when one is back', async (t) => {
  const h = new Harness(t);
  const a = await h.server();
  const b = await h.peer(a);
  await a.put(TENANT, 'tenant_config_k', 'a');
  await b.put(TENANT, 'tenant_config_k', 'b');
  const client = await h.client({
    addresses: [a.url, b.url],
    randomStart: false,
    tenant: TENANT,
    token: () => a.token(TENANT),
    backoff: { initialMs: 200, maxMs: 400 },
  });
  await client.ready({ timeoutMs: 10_000 });
  const waits: Array<[string, number]> = [];
  client.on('reconnecting', (i) => waits.push([client.address, i.delayMs]));
  // B first: the client, on A, notices nothing until A dies.
  await b.kill('SIGKILL');
  await a.kill('SIGKILL');
  await waitFor(() => waits.length >= 6, 10_000, () => `six attempts, saw ${JSON.stringify(waits)}`);
  // Each wait is the one before the attempt on the address named: B after A within
  // the first step (A's stream was established: the move is spread); A again only
  // after the backoff (at least half of 200 ms, then of 400 ms); then B at once...
  const expected = [b.url, a.url, b.url, a.url, b.url, a.url];
  assert.deepEqual(
    waits.slice(0, 6).map(([address]) => address),
    expected,
  );
  for (const [i, [address, delay]] of waits.slice(0, 6).entries()) {
    if (i === 0) assert.ok(delay <= 200, JSON.stringify(waits));
    else if (address === b.url) assert.equal(delay, 0, JSON.stringify(waits));
    else assert.ok(delay >= 100, JSON.stringify(waits));
  }
  await b.restart();
  await converged(client, b, TENANT);
  assert.equal(client.address, b.url);
});

test('a refused token or permission never moves the client to another address', async (t) => {
  const h = new Harness(t);
  const a = await h.server();
  const b = await h.peer(a);
  const moves: AddressChangedInfo[] = [];

  // A token of another tenant: PERMISSION_DENIED, fatal, on the first address only.
  const denied = await h.client({ addresses: [a.url, b.url], randomStart: false, tenant: TENANT, token: () => a.token('globex') });
  denied.on('addressChanged', (i) => moves.push(i));
  await assert.rejects(denied.ready({ timeoutMs: 10_000 }), (e: unknown) => (e as { code?: string }).code === 'PERMISSION_DENIED');
  assert.equal(denied.status().state, 'failed');
  assert.equal(denied.address, a.url);

  // A token no server accepts: UNAUTHENTICATED; the token source is asked again and
  // again, on the same address.
  const other = await h.server();
  let asked = 0;
  const refused = await h.client({
    addresses: [a.url, b.url],
    randomStart: false,
    tenant: TENANT,
    token: () => {
      asked++;
      return other.token(TENANT);
    },
  });
  refused.on('addressChanged', (i) => moves.push(i));
  await waitFor(() => asked >= 4, 10_000, () => `four token requests, saw ${asked}`);
  assert.equal(refused.status().lastError?.code, 'UNAUTHENTICATED');
  assert.equal(refused.address, a.url);
  assert.deepEqual(moves, []);
});

test('one address in a list behaves as a single address: the same server again, after the backoff', async (t) => {
  const h = new Harness(t);
  const server = await h.server();
  await server.put(TENANT, 'tenant_config_k', 1);
  const client = await h.client({ addresses: [server.url], tenant: TENANT, token: () => server.token(TENANT) });
  const moves: AddressChangedInfo[] = [];
  const waits: number[] = [];
  client.on('addressChanged', (i) => moves.push(i));
  client.on('reconnecting', (i) => waits.push(i.delayMs));
  await client.ready({ timeoutMs: 10_000 });
  await server.kill('SIGTERM');
  await waitFor(() => waits.length >= 3, 10_000, () => `three attempts, saw ${JSON.stringify(waits)}`);
  // The harness's backoff starts at 50 ms: each wait is at least half of it.
  assert.ok(waits.every((d) => d >= 25), JSON.stringify(waits));
  await server.restart();
  await server.put(TENANT, 'tenant_config_k', 2);
  await converged(client, server, TENANT);
  assert.deepEqual(moves, []);
  assert.equal(client.address, server.url);
});
