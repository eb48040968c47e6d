import assert from 'node:assert/strict';
import { test } from 'node:test';

import type { ConfigWatchClient } from '../src';
import { Harness, converged as convergedOn, record, waitFor, type Server } from './helpers';

const TENANT = 'acme';

const converged = (client: ConfigWatchClient, server: Server): Promise<void> => convergedOn(client, server, TENANT);

test('server restarted mid-stream (SIGKILL and SIGTERM): the cache converges by itself', async (t) => {
  const h = new Harness(t);
  const server = await h.server();
  await server.put(TENANT, 'tenant_config_a', 1);
  await server.put(TENANT, 'tenant_config_b', 1);
  await server.put(TENANT, 'param_config_c', 'one');

  // The token source can be held shut, to make sure writes land while the client is
  // away (so the reconnect has something to catch up on); it is the only lever the
  // test has, and the application does nothing.
  let gate: Promise<void> = Promise.resolve();
  let tokenCalls = 0;
  const client = await h.client({
    address: server.url,
    tenant: TENANT,
    token: async () => {
      tokenCalls++;
      await gate;
      return server.token(TENANT);
    },
  });
  const seen = record(client);
  const modes: string[] = [];
  client.on('connected', (i) => modes.push(i.mode));
  let disconnects = 0;
  client.on('disconnected', () => disconnects++);
  await client.ready({ timeoutMs: 10_000 });
  await converged(client, server);

  // 1. SIGKILL: the connection drops. Writes land while the client is held away.
  let open = (): void => undefined;
  gate = new Promise((r) => (open = r));
  await server.kill('SIGKILL');
  await waitFor(() => !client.status().connected, 10_000, () => 'the client to notice the dropped connection');
  assert.equal(disconnects, 1);
  // Reads still serve the last known values, and say they are stale.
  assert.equal(client.get('tenant_config_a')?.value, 1);
  assert.equal(client.status().stale, true);
  await server.restart();
  await server.put(TENANT, 'tenant_config_a', 2);
  await server.delete(TENANT, 'tenant_config_b');
  await server.put(TENANT, 'tenant_config_d', { new: true });
  open();
  await converged(client, server);
  // The new server instance cannot use the old resume token: it diffs against the
  // versions the client holds, including the removal of b.
  assert.equal(modes.at(-1), 'diff');
  assert.ok(seen.includes('tenant_config_b@2-'), `delete of b in ${JSON.stringify(seen)}`);
  assert.ok(seen.includes('tenant_config_a@2'));
  assert.ok(seen.includes('tenant_config_d@1'));

  // 2. SIGTERM: graceful shutdown ends the watch with UNAVAILABLE; writes right after
  // the restart race the reconnect, and the cache converges either way.
  await server.kill('SIGTERM');
  await waitFor(() => !client.status().connected, 10_000, () => 'the client to notice the shutdown');
  const lastError = client.status().lastError;
  assert.equal(lastError?.code, 'UNAVAILABLE');
  await server.restart();
  await server.put(TENANT, 'tenant_config_a', 3);
  await server.put(TENANT, 'param_config_c', 'two');
  await converged(client, server);
  assert.equal(disconnects, 2);
  assert.equal(client.get('tenant_config_a')?.value, 3);
  // A token was asked for each connection.
  assert.ok(tokenCalls >= 3, `token source called ${tokenCalls} times`);
});
