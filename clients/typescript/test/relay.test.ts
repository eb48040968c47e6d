// The client behind a relay (`configwatch serve --upstream`), every instance a real
// process: while the relay is cut off from its origin the client stays on it,
// serving what it holds, and its status says since when; once the origin is back the
// mark clears and the changes made meanwhile arrive.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Harness, waitFor } from './helpers';

const TENANT = 'acme';
/** A relay takes up to its reconnect backoff's cap (10 s) to find its origin again. */
const RECOVERY_MS = 30_000;

test('behind a relay cut off from its origin, the status says since when until it is back', async (t) => {
  const h = new Harness(t);
  const origin = await h.server();
  await origin.put(TENANT, 'tenant_config_a', 1);
  const relay = await h.relay(origin);
  const client = await h.client({ address: relay.url, tenant: TENANT, token: () => origin.token(TENANT) });
  await client.ready({ timeoutMs: 10_000 });
  assert.equal(client.get('tenant_config_a')?.value, 1);
  assert.equal(client.status().serverDisconnectedSince, undefined);

  const before = Date.now();
  await origin.kill('SIGKILL');
  await waitFor(() => client.status().serverDisconnectedSince !== undefined, RECOVERY_MS, () => `the mark; status ${JSON.stringify(client.status())}`);
  const s = client.status();
  const since = s.serverDisconnectedSince?.getTime() ?? 0;
  assert.ok(since <= Date.now() && since + 1000 >= before, `cut off since ${since}, the origin died at ${before}`);
  // The relay keeps serving: the client stays on it, connected, with what it holds.
  assert.ok(s.connected && s.address === relay.url, JSON.stringify(s));
  assert.equal(client.get('tenant_config_a')?.value, 1);

  await origin.restart();
  const version = await origin.put(TENANT, 'tenant_config_a', 2);
  await waitFor(
    () => client.status().serverDisconnectedSince === undefined && client.get('tenant_config_a')?.version === version,
    RECOVERY_MS,
    () => `the mark cleared and version ${version}; status ${JSON.stringify(client.status())}`,
  );
  assert.equal(client.get('tenant_config_a')?.value, 2);
  assert.equal(client.address, relay.url);
});
