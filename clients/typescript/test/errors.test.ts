import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';

import { ClosedError, ConfigWatchClient, ConfigWatchError, DecodeError, InvalidOptionsError, ServerError } from '../src';
import { SNAPSHOT_FORMAT } from '../src/snapshot';
import { Harness, waitFor } from './helpers';

const TENANT = 'acme';

test('bad options are refused by the constructor with InvalidOptionsError', () => {
  const token = (): string => 't';
  assert.throws(() => new ConfigWatchClient({ address: '127.0.0.1:1', tenant: '', token }), InvalidOptionsError);
  assert.throws(() => new ConfigWatchClient({ address: 'http://host:1/path', tenant: TENANT, token }), InvalidOptionsError);
  assert.throws(
    () => new ConfigWatchClient({ address: '127.0.0.1:1', tenant: TENANT, token, backoff: { initialMs: -1 } }),
    (e: unknown) => e instanceof InvalidOptionsError && e.code === 'INVALID_OPTIONS',
  );
});

test('a bad prefix fails the watch with a typed INVALID_ARGUMENT, once, without spinning', async (t) => {
  const h = new Harness(t);
  const server = await h.server();
  const client = await h.client({ address: server.url, tenant: TENANT, token: () => server.token(TENANT), prefixes: ['no_such_family_'] });
  const errors: ConfigWatchError[] = [];
  client.on('error', (e) => errors.push(e));
  const iterator = client.changes();
  const err = await client.ready({ timeoutMs: 10_000 }).then(
    () => assert.fail('ready() resolved'),
    (e: unknown) => e,
  );
  assert.ok(err instanceof ServerError, `got ${String(err)}`);
  assert.equal(err.code, 'INVALID_ARGUMENT');
  assert.equal(err.retryable, false);
  assert.match(err.details, /no_such_family_/);
  const s = client.status();
  assert.equal(s.state, 'failed');
  assert.equal(s.attempts, 1);
  assert.equal(s.lastError, err);
  assert.deepEqual(errors, [err]);
  // The iterator ends with the same error.
  await assert.rejects(iterator.next(), (e: unknown) => e === err);
  // And later calls to ready() say why.
  await assert.rejects(client.ready(), (e: unknown) => e === err);
});

test("a token of another tenant is PERMISSION_DENIED: the cache never mixes tenants", async (t) => {
  const h = new Harness(t);
  const server = await h.server();
  await server.put('globex', 'tenant_config_plan', 'globex only');
  const client = await h.client({ address: server.url, tenant: TENANT, token: () => server.token('globex') });
  await assert.rejects(
    client.ready({ timeoutMs: 10_000 }),
    (e: unknown) => e instanceof ServerError && e.code === 'PERMISSION_DENIED' && !e.retryable,
  );
  assert.deepEqual(client.keys(), []);
  await assert.rejects(client.readSecret('tenant_config_plan'), (e: unknown) => e instanceof ServerError && e.code === 'PERMISSION_DENIED');
});

test('readSecret and get report bad input as typed errors', async (t) => {
  const h = new Harness(t);
  const server = await h.server();
  await server.put(TENANT, 'tenant_config_limits', { max: 'not a number' });
  const client = await h.client({ address: server.url, tenant: TENANT, token: () => server.token(TENANT) });
  await client.ready({ timeoutMs: 10_000 });
  await assert.rejects(
    client.readSecret('../etc/passwd'),
    (e: unknown) => e instanceof ServerError && e.code === 'INVALID_ARGUMENT' && /key/.test(e.details),
  );
  await assert.rejects(client.readSecret('tenant_config_limits'), DecodeError);
  const decodeMax = (v: unknown): { max: number } => {
    if (typeof v === 'object' && v !== null && typeof (v as { max?: unknown }).max === 'number') return v as { max: number };
    throw new TypeError('max must be a number');
  };
  assert.throws(() => client.get('tenant_config_limits', decodeMax), (e: unknown) => e instanceof DecodeError && /max must be a number/.test(e.message));
  // A fatal error of a call does not stop the watch.
  assert.equal(client.status().state, 'connected');
});

test('a refused token is retried with a fresh one and reported, not fatal', async (t) => {
  const h = new Harness(t);
  const server = await h.server();
  await server.put(TENANT, 'tenant_config_flag', 1);
  let calls = 0;
  const client = await h.client({
    address: server.url,
    tenant: TENANT,
    token: async () => (++calls <= 3 ? 'not-a-jwt' : server.token(TENANT)),
  });
  const errors: string[] = [];
  client.on('error', (e) => errors.push(e.code));
  await client.ready({ timeoutMs: 10_000 });
  assert.equal(calls, 4);
  // The first refusal is retried at once with a fresh token; the ones after it are
  // reported (the token source keeps giving bad tokens).
  assert.deepEqual(errors, ['UNAUTHENTICATED', 'UNAUTHENTICATED']);
  assert.equal(client.get('tenant_config_flag')?.value, 1);
});

test('a resume token the server cannot read (an old snapshot) is dropped, not fatal', async (t) => {
  const h = new Harness(t);
  const server = await h.server();
  await server.put(TENANT, 'tenant_config_flag', 'new');
  const snapshotPath = path.join(await h.tempDir(), 'snap.json');
  await fs.writeFile(
    snapshotPath,
    JSON.stringify({
      format: SNAPSHOT_FORMAT,
      tenant: TENANT,
      prefixes: [],
      savedAt: new Date().toISOString(),
      revision: 7,
      resumeToken: 'not a token',
      entries: [{ key: 'tenant_config_flag', version: 0, value: '"old"', secret: false, revision: 7, updatedAt: null }],
    }),
  );
  const client = await h.client({ address: server.url, tenant: TENANT, token: () => server.token(TENANT), snapshotPath });
  assert.equal(client.get('tenant_config_flag')?.value, 'old');
  const modes: string[] = [];
  client.on('connected', (i) => modes.push(i.mode));
  await client.ready({ timeoutMs: 10_000 });
  await waitFor(() => client.get('tenant_config_flag')?.value === 'new', 10_000, () => 'the current value');
  assert.deepEqual(modes, ['diff']);
});

test('close() settles a pending ready() with ClosedError, even while the token source hangs', async (t) => {
  const h = new Harness(t);
  let asked = false;
  const client = await h.client({
    address: '127.0.0.1:9',
    tenant: TENANT,
    token: () => {
      asked = true;
      return new Promise<string>(() => undefined);
    },
  });
  const pending = client.ready();
  await waitFor(() => asked, 5_000, () => 'the token source to be asked');
  await client.close();
  await assert.rejects(pending, ClosedError);
  assert.equal(client.status().state, 'closed');
  await assert.rejects(client.readSecret('tenant_config_x'), ClosedError);
});
