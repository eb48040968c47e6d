import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { test } from 'node:test';
import { inspect } from 'node:util';

import { ServerError, type Change } from '../src';
import { Harness, waitFor } from './helpers';

const TENANT = 'acme';

test('secrets: readSecret returns the value; the cache, its events and its snapshot never hold it', async (t) => {
  const h = new Harness(t);
  const server = await h.server();
  await server.put(TENANT, 'param_config_db/password', 'hunter2-first', { secret: true });
  await server.put(TENANT, 'param_config_db/user', 'app');
  const snapshotPath = path.join(await h.tempDir(), 'snap.json');
  const client = await h.client({
    address: server.url,
    tenant: TENANT,
    token: () => server.token(TENANT),
    snapshotPath,
    snapshotDebounceMs: 20,
  });
  const changes: Change[] = [];
  client.on('change', (c) => changes.push(c));
  await client.ready({ timeoutMs: 10_000 });

  // The cache knows the secret exists, and its version, but holds no value.
  assert.equal(client.has('param_config_db/password'), true);
  assert.equal(client.info('param_config_db/password')?.secret, true);
  assert.equal(client.info('param_config_db/password')?.version, 1);
  assert.equal(client.get('param_config_db/password'), undefined);
  assert.equal(client.getValue('param_config_db/password', 'fallback'), 'fallback');
  assert.deepEqual(client.keys('param_config_db/'), ['param_config_db/password', 'param_config_db/user']);

  // On demand, through Get.
  assert.equal(await client.readSecret('param_config_db/password'), 'hunter2-first');
  assert.equal(await client.readSecret('param_config_db/user'), 'app');
  assert.equal(await client.readSecret('param_config_db/missing'), undefined);

  // Rotation: a change event says that it changed, not to what.
  await server.put(TENANT, 'param_config_db/password', 'hunter2-second', { secret: true });
  await waitFor(() => client.info('param_config_db/password')?.version === 2, 10_000, () => 'the rotation');
  const rotated = changes.find((c) => c.key === 'param_config_db/password' && c.version === 2);
  assert.equal(rotated?.secret, true);
  assert.equal(rotated?.value, undefined);
  assert.equal(await client.readSecret('param_config_db/password'), 'hunter2-second');

  // Nowhere in the client's memory, nor in what it wrote to disk.
  const everything = inspect(client, { depth: Infinity, maxArrayLength: Infinity, maxStringLength: Infinity });
  assert.ok(everything.includes('param_config_db/user'), 'the inspection reaches the cache');
  assert.ok(!everything.includes('hunter2'), 'a secret value is held in memory');
  assert.ok(!JSON.stringify(changes).includes('hunter2'));
  await waitFor(() => (client.status().snapshot?.savedAt?.getTime() ?? 0) > 0, 10_000, () => 'a snapshot');
  await client.close();
  const onDisk = await fs.readFile(snapshotPath, 'utf8');
  assert.ok(onDisk.includes('param_config_db/password'));
  assert.ok(!onDisk.includes('hunter2'), 'a secret value is in the snapshot');
});

test('secrets: readSecret passes over an address that is down, and names every address it tried when none answers', async (t) => {
  const h = new Harness(t);
  const server = await h.server();
  await server.put(TENANT, 'param_config_db/password', 'hunter2', { secret: true });
  const dead = `http://127.0.0.1:${await closedPort()}`;
  const client = await h.client({ addresses: [dead, server.url], randomStart: false, tenant: TENANT, token: () => server.token(TENANT) });
  // Read at once: the watch has not left the dead address yet, and the read starts there.
  assert.equal(client.address, dead);
  assert.equal(await client.readSecret('param_config_db/password'), 'hunter2');

  const [one, two] = [`http://127.0.0.1:${await closedPort()}`, `http://127.0.0.1:${await closedPort()}`];
  const none = await h.client({ addresses: [one, two], randomStart: false, tenant: TENANT, token: () => server.token(TENANT) });
  await assert.rejects(none.readSecret('param_config_db/password'), (e: unknown) => {
    assert.ok(e instanceof ServerError, String(e));
    assert.equal(e.code, 'UNAVAILABLE', e.message);
    assert.match(e.message, new RegExp(`tried: ${one}: .*; ${two}: `));
    return true;
  });
});

/** A port on 127.0.0.1 where nothing listens (bound, then closed). */
async function closedPort(): Promise<number> {
  const listener = net.createServer();
  await new Promise<void>((resolve) => listener.listen(0, '127.0.0.1', resolve));
  const { port } = listener.address() as net.AddressInfo;
  await new Promise((resolve) => listener.close(resolve));
  return port;
}
