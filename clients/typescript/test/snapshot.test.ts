import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';

import { ConfigWatchClient, TimeoutError } from '../src';
import { Harness, waitFor } from './helpers';

const TENANT = 'acme';

test('server down at start: reads serve the snapshot, stale; once the server is up the cache is current', async (t) => {
  const h = new Harness(t);
  const server = await h.server();
  const dir = await h.tempDir();
  const snapshotPath = path.join(dir, 'nested', 'acme.json');
  await server.put(TENANT, 'tenant_config_flag', { on: false });
  await server.put(TENANT, 'param_config_gone', 'x');

  // A first run writes the snapshot.
  const first = await h.client({ address: server.url, tenant: TENANT, token: () => server.token(TENANT), snapshotPath, snapshotDebounceMs: 20 });
  await first.ready({ timeoutMs: 10_000 });
  await waitFor(() => first.status().snapshot?.savedAt !== undefined, 10_000, () => 'the first snapshot');
  await first.close();
  const written = JSON.parse(await fs.readFile(snapshotPath, 'utf8')) as { tenant: string; entries: { key: string }[] };
  assert.equal(written.tenant, TENANT);
  assert.deepEqual(written.entries.map((e) => e.key), ['param_config_gone', 'tenant_config_flag']);
  // Written atomically: nothing but the snapshot in its directory.
  assert.deepEqual(await fs.readdir(path.dirname(snapshotPath)), ['acme.json']);

  // Changes the snapshot does not have, then the server goes away.
  await server.put(TENANT, 'tenant_config_flag', { on: true });
  await server.delete(TENANT, 'param_config_gone');
  await server.put(TENANT, 'tenant_config_added', 42);
  await server.kill('SIGKILL');

  // The service starts while the server is down.
  const client = new ConfigWatchClient({
    address: server.address,
    tenant: TENANT,
    token: () => server.token(TENANT),
    snapshotPath,
    snapshotDebounceMs: 20,
    backoff: { initialMs: 50, maxMs: 300 },
  });
  t.after(() => client.close());
  const modes: string[] = [];
  client.on('connected', (i) => modes.push(i.mode));
  await client.start();
  assert.deepEqual(client.get('tenant_config_flag')?.value, { on: false });
  assert.equal(client.get('param_config_gone')?.value, 'x');
  let s = client.status();
  assert.equal(s.source, 'snapshot');
  assert.equal(s.stale, true);
  assert.equal(s.connected, false);
  assert.equal(s.snapshot?.loaded, true);
  assert.ok(s.snapshot?.savedAt instanceof Date);
  // It really is unreachable: attempts fail, the snapshot keeps serving.
  await waitFor(() => client.status().attempts >= 3, 10_000, () => `failed attempts; status ${JSON.stringify(client.status())}`);
  assert.equal(client.status().source, 'snapshot');
  assert.equal(client.status().lastError?.code, 'UNAVAILABLE');
  await assert.rejects(client.ready({ timeoutMs: 100 }), TimeoutError);

  await server.restart();
  await client.ready({ timeoutMs: 15_000 });
  s = client.status();
  assert.equal(s.source, 'server');
  assert.equal(s.stale, false);
  assert.deepEqual(client.get('tenant_config_flag')?.value, { on: true });
  assert.equal(client.has('param_config_gone'), false);
  assert.equal(client.get('tenant_config_added')?.value, 42);
  // The snapshot's resume token is from the previous server instance: a diff
  // against the versions the snapshot held.
  assert.deepEqual(modes, ['diff']);
  const truth = await server.state(TENANT);
  assert.deepEqual(client.keys(), [...truth.keys()]);

  // And the snapshot follows.
  await waitFor(
    () => (client.status().snapshot?.savedAt?.getTime() ?? 0) > (s.snapshot?.savedAt?.getTime() ?? 0),
    10_000,
    () => 'a new snapshot',
  );
  await client.close();
  const after = JSON.parse(await fs.readFile(snapshotPath, 'utf8')) as { entries: { key: string }[] };
  assert.deepEqual(after.entries.map((e) => e.key), ['tenant_config_added', 'tenant_config_flag']);
});

test("another tenant's snapshot is ignored", async (t) => {
  const h = new Harness(t);
  const server = await h.server();
  const snapshotPath = path.join(await h.tempDir(), 'snap.json');
  await server.put(TENANT, 'tenant_config_secret_plan', 'acme only');
  const acme = await h.client({ address: server.url, tenant: TENANT, token: () => server.token(TENANT), snapshotPath, snapshotDebounceMs: 20 });
  await acme.ready({ timeoutMs: 10_000 });
  await waitFor(() => acme.status().snapshot?.savedAt !== undefined, 10_000, () => 'the snapshot');
  await acme.close();
  await server.kill();

  const globex = await h.client({ address: server.address, tenant: 'globex', token: () => 'unused', snapshotPath });
  assert.deepEqual(globex.keys(), []);
  assert.equal(globex.get('tenant_config_secret_plan'), undefined);
  const s = globex.status();
  assert.equal(s.source, 'none');
  assert.equal(s.snapshot?.loaded, false);
  assert.match(s.snapshot?.ignored ?? '', /tenant "acme"/);

  // A snapshot for other prefixes is not used either.
  const narrow = await h.client({ address: server.address, tenant: TENANT, token: () => 'unused', snapshotPath, prefixes: ['param_config_'] });
  assert.deepEqual(narrow.keys(), []);
  assert.match(narrow.status().snapshot?.ignored ?? '', /prefixes/);
});
