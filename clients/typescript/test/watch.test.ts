import assert from 'node:assert/strict';
import { test } from 'node:test';

import type { Change } from '../src';
import { Harness, record, waitFor } from './helpers';

const TENANT = 'acme';

test('bootstrap, then deltas, then a delete', async (t) => {
  const h = new Harness(t);
  const server = await h.server();
  await server.put(TENANT, 'tenant_config_checkout', { enabled: false, limit: 3 });
  await server.put(TENANT, 'param_config_db/url', 'postgres://db');
  // Another tenant's data must never show up.
  await server.put('globex', 'tenant_config_checkout', { enabled: true, limit: 99 });

  const client = await h.client({ address: server.url, tenant: TENANT, token: () => server.token(TENANT) });
  const seen = record(client);
  const connected: string[] = [];
  client.on('connected', (i) => connected.push(i.mode));
  const iterated: Change[] = [];
  const iterating = (async () => {
    for await (const c of client.changes({ prefix: 'tenant_config_' })) {
      iterated.push(c);
      if (c.type === 'delete') break;
    }
  })();

  await client.ready({ timeoutMs: 10_000 });
  assert.deepEqual(connected, ['full']);
  const checkout = client.get<{ enabled: boolean; limit: number }>('tenant_config_checkout');
  assert.deepEqual(checkout?.value, { enabled: false, limit: 3 });
  assert.equal(checkout?.version, 1);
  assert.equal(client.get<string>('param_config_db/url')?.value, 'postgres://db');
  assert.deepEqual(client.keys(), ['param_config_db/url', 'tenant_config_checkout']);
  const s = client.status();
  assert.equal(s.state, 'connected');
  assert.equal(s.source, 'server');
  assert.equal(s.stale, false);
  assert.ok(s.lastMessageAt instanceof Date);
  assert.ok(s.revision > 0);

  // Deltas.
  await server.put(TENANT, 'tenant_config_checkout', { enabled: true, limit: 3 });
  await server.put(TENANT, 'tenant_config_new', [1, 2, 3]);
  await waitFor(
    () => client.get('tenant_config_new') !== undefined && client.get('tenant_config_checkout')?.version === 2,
    10_000,
    () => `deltas; seen ${JSON.stringify(seen)}`,
  );
  assert.deepEqual(client.get('tenant_config_checkout')?.value, { enabled: true, limit: 3 });
  assert.deepEqual(client.getValue('tenant_config_new', []), [1, 2, 3]);

  // A delete.
  const tomb = await server.delete(TENANT, 'tenant_config_checkout');
  await waitFor(() => !client.has('tenant_config_checkout'), 10_000, () => 'the delete');
  assert.equal(client.get('tenant_config_checkout'), undefined);
  assert.equal(client.getValue('tenant_config_checkout', 'fallback'), 'fallback');

  assert.deepEqual(seen, [
    'param_config_db/url@1',
    'tenant_config_checkout@1',
    'tenant_config_checkout@2',
    'tenant_config_new@1',
    `tenant_config_checkout@${tomb}-`,
  ]);
  await iterating;
  assert.deepEqual(
    iterated.map((c) => [c.key, c.type, c.version, c.cause]),
    [
      ['tenant_config_checkout', 'set', 1, 'full'],
      ['tenant_config_checkout', 'set', 2, 'delta'],
      ['tenant_config_new', 'set', 1, 'delta'],
      ['tenant_config_checkout', 'delete', tomb, 'delta'],
    ],
  );
  const del = iterated.at(-1);
  assert.deepEqual(del?.previous, { enabled: true, limit: 3 });
  assert.equal(del?.previousVersion, 2);

  // The cache equals the server's state for this tenant, and nothing of another.
  const truth = await server.state(TENANT);
  assert.deepEqual(
    client.keys().map((k) => [k, client.get(k)?.version, client.get(k)?.value]),
    [...truth].map(([k, [v, val]]) => [k, v, val]),
  );
});

test('a prefix-scoped client holds only its prefixes, and progress keeps it fresh', async (t) => {
  const h = new Harness(t);
  const server = await h.server();
  await server.put(TENANT, 'tenant_config_a', 1);
  await server.put(TENANT, 'param_config_b', 'x');
  const client = await h.client({
    address: server.address,
    tenant: TENANT,
    token: () => server.token(TENANT),
    prefixes: ['param_config_'],
    staleAfterMs: 60_000,
  });
  let progress = 0;
  client.on('progress', () => progress++);
  await client.ready({ timeoutMs: 10_000 });
  assert.deepEqual(client.keys(), ['param_config_b']);
  assert.equal(client.get('tenant_config_a'), undefined);
  const first = client.status().lastMessageAt?.getTime() ?? 0;
  // The test server sends progress every ~1 s when idle.
  await waitFor(() => progress > 0, 10_000, () => 'a progress message');
  assert.ok((client.status().lastMessageAt?.getTime() ?? 0) > first);
  assert.equal(client.status().stale, false);
});
