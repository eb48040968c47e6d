import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Harness, waitFor } from './helpers';

const TENANT = 'acme';

test('token expiry: the token source is called again and the stream resumes without losing a change', async (t) => {
  const h = new Harness(t);
  const server = await h.server();
  await server.put(TENANT, 'tenant_config_flag', 'v1');

  // Every token lives 2 s. Each time the client comes back for a new one, the test
  // writes a change first: it lands while the client has no stream, and must arrive
  // through the resumed stream.
  let calls = 0;
  const client = await h.client({
    address: server.url,
    tenant: TENANT,
    token: async () => {
      calls++;
      if (calls > 1) await server.put(TENANT, 'tenant_config_flag', `v${calls}`);
      return server.token(TENANT, { ttl: '2s' });
    },
  });
  const modes: string[] = [];
  client.on('connected', (i) => modes.push(i.mode));
  const refusals: string[] = [];
  client.on('reconnecting', (i) => refusals.push(i.error.code));
  const errors: string[] = [];
  client.on('error', (e) => errors.push(e.message));
  const values: unknown[] = [];
  client.on('change', (c) => values.push(c.value));

  await client.ready({ timeoutMs: 10_000 });
  assert.equal(client.get('tenant_config_flag')?.value, 'v1');

  await waitFor(
    () => calls >= 3 && client.get('tenant_config_flag')?.value === `v${calls}` && client.status().connected,
    15_000,
    () => `two token refreshes; calls=${calls} value=${JSON.stringify(client.get('tenant_config_flag'))} status=${JSON.stringify(client.status())}`,
  );
  assert.deepEqual(refusals.slice(0, 2), ['UNAUTHENTICATED', 'UNAUTHENTICATED']);
  // Resumed by token (same server, history reaches back): exactly the missed change.
  assert.deepEqual(modes.slice(0, 3), ['full', 'resumed', 'resumed']);
  assert.deepEqual(values.slice(0, 3), ['v1', 'v2', 'v3']);
  // An expired token is routine, not an error for the application.
  assert.deepEqual(errors, []);
});

test('a token source that fails is retried with backoff and reported', async (t) => {
  const h = new Harness(t);
  const server = await h.server();
  await server.put(TENANT, 'tenant_config_flag', true);
  let calls = 0;
  const client = await h.client({
    address: server.url,
    tenant: TENANT,
    token: async () => {
      calls++;
      if (calls <= 2) throw new Error('identity provider is down');
      return server.token(TENANT);
    },
  });
  const errors: string[] = [];
  client.on('error', (e) => errors.push(`${e.name}/${e.code}/${e.retryable}`));
  await client.ready({ timeoutMs: 10_000 });
  assert.equal(client.get('tenant_config_flag')?.value, true);
  assert.equal(calls, 3);
  assert.deepEqual(errors, ['TokenSourceError/TOKEN_SOURCE/true', 'TokenSourceError/TOKEN_SOURCE/true']);
});
