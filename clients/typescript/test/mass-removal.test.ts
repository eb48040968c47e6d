import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';

import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

import { ConfigWatchClient, ConfigWatchError, InvalidOptionsError, MassRemovalError, type MassRemovalInfo, type StoreChange } from '../src';
import loaderOptions from '../src/loader-options.json';
import { PROTO_FILE, PROTO_ROOT, loaderOptionsFor } from '../src/wire';
import { Harness, cacheState, converged as convergedOn, record, waitFor, type Server } from './helpers';

const TENANT = 'acme';

const converged = (client: ConfigWatchClient, server: Server, prefixes: string[] = []): Promise<void> =>
  convergedOn(client, server, TENANT, prefixes);

test('a store lost on the server is held back and reported, unless the application accepts it', async (t) => {
  const h = new Harness(t);
  const dataDir = path.join(await h.tempDir(), 'data');
  const server = await h.server(dataDir);
  await server.put(TENANT, 'tenant_config_a', { on: true });
  await server.put(TENANT, 'tenant_config_b', 2);
  await server.put(TENANT, 'param_config_db/url', 'pg://db');
  const before = JSON.stringify([...(await server.state(TENANT))]);
  // A new store signs with a new key: the test replaces the token after the
  // restart. (Minting one from the token source would write a key into the emptied
  // data directory before the server starts on it.)
  let current = await server.token(TENANT);
  const token = (): string => current;

  // The default: hold back. With a snapshot, which must keep the entries too.
  const snapshotPath = path.join(await h.tempDir(), 'held.json');
  const held = await h.client({ address: server.url, tenant: TENANT, token, snapshotPath, snapshotDebounceMs: 10 });
  // Opted in.
  const allowed = await h.client({ address: server.url, tenant: TENANT, token, allowMassRemoval: true });
  // Asks the application, which says no, then yes.
  let accept = false;
  let asked = 0;
  const decided = await h.client({
    address: server.url,
    tenant: TENANT,
    token,
    allowMassRemoval: (info) => {
      if (info.held === 3 && info.removed === 3) asked++;
      return accept;
    },
  });
  for (const c of [held, allowed, decided]) await converged(c, server);
  await waitFor(() => held.status().snapshot?.savedAt !== undefined, 10_000, () => 'the snapshot to be written');
  const heldSeen = record(held);
  const allowedSeen = record(allowed);
  const heldEvents: (MassRemovalInfo & { applied: boolean })[] = [];
  held.on('massRemoval', (i) => heldEvents.push(i));
  const heldErrors: ConfigWatchError[] = [];
  held.on('error', (e) => heldErrors.push(e));
  const allowedEvents: boolean[] = [];
  allowed.on('massRemoval', (i) => allowedEvents.push(i.applied));

  // The store is lost: the server restarts on the same port with an empty data
  // directory (as a store recreated on purpose does).
  await server.kill();
  await fs.rm(dataDir, { recursive: true, force: true });
  await server.restart();
  current = await server.token(TENANT);

  // The default client keeps its entries, says why, is stale, and keeps trying.
  await waitFor(
    () => (held.status().heldBack?.times ?? 0) >= 2,
    20_000,
    () => `a second refusal: ${JSON.stringify(held.status())}`,
  );
  const s = held.status();
  assert.equal(s.stale, true);
  assert.equal(s.connected, false);
  assert.notEqual(s.state, 'failed');
  assert.deepEqual(
    [s.heldBack?.held, s.heldBack?.removed, s.heldBack?.remaining],
    [3, 3, 0],
    JSON.stringify(s.heldBack),
  );
  // A server that reports its store identity: the new store has a new one, so it
  // sent the full (empty) state, and the change is reported. (One that reports
  // none diffed against the versions held, and there is nothing to compare.)
  if (s.storeId !== '') {
    assert.equal(s.heldBack?.storeChanged, true);
    assert.equal(s.heldBack?.mode, 'full');
    assert.equal(s.lastStoreChange?.previous, s.storeId);
    assert.notEqual(s.lastStoreChange?.current, s.storeId);
  }
  assert.ok(s.lastError instanceof MassRemovalError, String(s.lastError));
  assert.equal(s.lastError.code, 'MASS_REMOVAL');
  assert.equal(s.lastError.retryable, true);
  assert.match(s.lastError.message, /remove all 3 entries held/);
  assert.match(s.lastError.message, /allowMassRemoval/);
  assert.equal(JSON.stringify(cacheState(held)), before);
  assert.equal(held.get('tenant_config_b')?.value, 2);
  assert.equal(heldSeen.length, 0, JSON.stringify(heldSeen));
  assert.ok(heldEvents.length >= 2 && heldEvents.every((e) => !e.applied), JSON.stringify(heldEvents));
  assert.ok(heldErrors.some((e) => e instanceof MassRemovalError));
  // The snapshot still holds what the cache holds.
  assert.match(await fs.readFile(snapshotPath, 'utf8'), /tenant_config_b/);

  // The client that opted in applied the removal.
  await waitFor(
    () => allowed.status().connected && allowed.keys().length === 0,
    20_000,
    () => `the removal applied: ${JSON.stringify(allowed.status())}`,
  );
  assert.equal(allowed.status().heldBack, undefined);
  assert.equal(allowedSeen.filter((c) => c.endsWith('-')).length, 3, JSON.stringify(allowedSeen));
  assert.deepEqual(allowedEvents, [true]);

  // The deciding client held it back while the application said no...
  await waitFor(() => asked >= 2, 20_000, () => `asked twice: ${JSON.stringify(decided.status())}`);
  assert.equal(decided.keys().length, 3);
  assert.notEqual(decided.status().heldBack, undefined);
  // ...and applies it once the application says yes.
  accept = true;
  await waitFor(
    () => decided.status().connected && decided.keys().length === 0,
    20_000,
    () => `the removal accepted: ${JSON.stringify(decided.status())}`,
  );

  // A new key in the new store does not make it a partial removal: every key held
  // is still gone, so the default client keeps holding.
  await server.put(TENANT, 'tenant_config_new', 1);
  const times = held.status().heldBack?.times ?? 0;
  await waitFor(
    () => {
      const hb = held.status().heldBack;
      return hb !== undefined && hb.times > times && hb.remaining === 1;
    },
    20_000,
    () => `another refusal: ${JSON.stringify(held.status())}`,
  );
  assert.equal(JSON.stringify(cacheState(held)), before);
  // A state that keeps one of the keys held is a partial removal: it applies.
  // (Written twice: to a server that reports no store identity, the new store's
  // version 1 would look like the version 1 held, from the old store.)
  await server.put(TENANT, 'tenant_config_a', { on: null });
  await server.put(TENANT, 'tenant_config_a', { on: false });
  await converged(held, server);
  assert.equal(held.status().heldBack, undefined);
  assert.equal(held.status().stale, false);
  const expected: [string, boolean][] = [
    ['tenant_config_b@', true],
    ['param_config_db/url@', true],
    ['tenant_config_new@', false],
  ];
  for (const [key, del] of expected) {
    assert.ok(
      heldSeen.some((c) => c.startsWith(key) && c.endsWith('-') === del),
      `${key} in ${JSON.stringify(heldSeen)}`,
    );
  }
  for (const c of [held, allowed, decided]) await converged(c, server);
});

test('removals of some keys apply as usual; of every key held, are held back', async (t) => {
  const h = new Harness(t);
  const server = await h.server();
  for (const k of ['tenant_config_a', 'tenant_config_b', 'tenant_config_c']) await server.put(TENANT, k, 1);
  await server.put(TENANT, 'param_config_x', 'unwatched');
  // The token source can be held shut, so removals land while the client is away
  // and reach it as a diff against the versions it holds.
  let gate: Promise<void> = Promise.resolve();
  const client = await h.client({
    address: server.url,
    tenant: TENANT,
    prefixes: ['tenant_config_'],
    token: async () => {
      await gate;
      return server.token(TENANT);
    },
  });
  const seen = record(client);
  const modes: string[] = [];
  client.on('connected', (i) => modes.push(i.mode));
  await client.ready({ timeoutMs: 10_000 });
  await converged(client, server, ['tenant_config_']);

  // Two of three removed while the client is away (after a restart, so that the
  // reconnection is a diff): applied.
  let open = (): void => undefined;
  gate = new Promise((r) => (open = r));
  await server.kill();
  await server.restart();
  await server.delete(TENANT, 'tenant_config_a');
  await server.delete(TENANT, 'tenant_config_b');
  open();
  await converged(client, server, ['tenant_config_']);
  assert.deepEqual(client.keys(), ['tenant_config_c']);
  assert.equal(modes.at(-1), 'diff');
  assert.equal(client.status().heldBack, undefined);
  assert.ok(seen.includes('tenant_config_a@2-') && seen.includes('tenant_config_b@2-'), JSON.stringify(seen));

  // Deleted while connected: deltas are never held back, even of the last key.
  await server.delete(TENANT, 'tenant_config_c');
  await waitFor(() => client.keys().length === 0, 10_000, () => 'the delete of the last key');
  await server.put(TENANT, 'tenant_config_d', 1);
  await waitFor(() => client.has('tenant_config_d'), 10_000, () => 'the new key');

  // The only key held removed while away looks like a lost store: held back.
  gate = new Promise((r) => (open = r));
  await server.kill();
  await server.restart();
  await server.delete(TENANT, 'tenant_config_d');
  open();
  await waitFor(() => client.status().heldBack !== undefined, 10_000, () => JSON.stringify(client.status()));
  assert.ok(client.has('tenant_config_d'));
  assert.equal(client.status().stale, true);
  // Written again, the key is in the server's state: no longer a removal of
  // everything held, so it applies (and the removal never reached the listeners).
  await server.put(TENANT, 'tenant_config_d', 2);
  await converged(client, server, ['tenant_config_']);
  assert.equal(client.status().heldBack, undefined);
  assert.ok(!seen.includes('tenant_config_d@2-'), JSON.stringify(seen));
  assert.equal(client.get('tenant_config_d')?.value, 2);
});

/** What the fake server answers to a Watch. */
interface Answer {
  mode: 'INITIAL_MODE_FULL' | 'INITIAL_MODE_DIFF';
  storeId: string;
  entries: { key: string; version: number; value: string }[];
}

interface Request {
  known_store_id: string;
  resume_token: string;
}

/**
 * A fake configwatch server speaking the real protocol over a real socket: every
 * Watch gets the initial state last given to `serve`, and stays open until
 * `endStreams` (the client then reconnects).
 */
async function fakeServer(first: Answer): Promise<{
  url: string;
  requests: Request[];
  serve: (a: Answer) => void;
  endStreams: () => void;
  close: () => Promise<void>;
}> {
  const definition = protoLoader.loadSync(PROTO_FILE, { ...loaderOptionsFor(loaderOptions), includeDirs: [PROTO_ROOT] });
  const pkg = grpc.loadPackageDefinition(definition) as unknown as {
    configwatch: { v1: { ConfigService: { service: grpc.ServiceDefinition } } };
  };
  const requests: Request[] = [];
  const open = new Set<grpc.ServerWritableStream<Request, unknown>>();
  let answer = first;
  const server = new grpc.Server();
  server.addService(pkg.configwatch.v1.ConfigService.service, {
    Watch: (call: grpc.ServerWritableStream<Request, unknown>) => {
      requests.push({ known_store_id: call.request.known_store_id, resume_token: call.request.resume_token });
      const n = String(requests.length);
      open.add(call);
      call.on('cancelled', () => open.delete(call));
      call.write({
        kind: 'KIND_INITIAL',
        initial_mode: answer.mode,
        changes: answer.entries.map((e) => ({ ...e, version: String(e.version), revision: n })),
        initial_complete: true,
        revision: n,
        resume_token: `token-${n}`,
        store_id: answer.storeId,
      });
    },
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))),
  );
  const endStreams = (): void => {
    for (const c of open) c.end();
    open.clear();
  };
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    serve: (a) => {
      answer = a;
    },
    endStreams,
    close: () =>
      new Promise<void>((resolve) => {
        endStreams();
        server.tryShutdown(() => resolve());
      }),
  };
}

test('the store identity is remembered, sent back, reported when it changes, and kept in the snapshot', async (t) => {
  const h = new Harness(t);
  const a1 = { key: 'tenant_config_a', version: 1, value: '1' };
  const b1 = { key: 'tenant_config_b', version: 1, value: '2' };
  const fake = await fakeServer({ mode: 'INITIAL_MODE_FULL', storeId: 'S1', entries: [a1, b1] });
  t.after(() => fake.close());
  const snapshotPath = path.join(await h.tempDir(), 'snap.json');
  const client = await h.client({ address: fake.url, tenant: TENANT, token: () => 'token', snapshotPath, snapshotDebounceMs: 10 });
  const changes: StoreChange[] = [];
  client.on('storeChanged', (c) => changes.push(c));
  await client.ready({ timeoutMs: 10_000 });
  assert.equal(client.status().storeId, 'S1');
  assert.equal(fake.requests[0]?.known_store_id, '');

  // The store is recreated: a new identity, and nothing in it. The identity held is
  // sent back, the new one reported, and the empty state held back.
  fake.serve({ mode: 'INITIAL_MODE_FULL', storeId: 'S2', entries: [] });
  fake.endStreams();
  await waitFor(() => (client.status().heldBack?.times ?? 0) >= 2, 10_000, () => JSON.stringify(client.status()));
  assert.ok(fake.requests.slice(1).every((r) => r.known_store_id === 'S1'), JSON.stringify(fake.requests));
  assert.ok(changes.length >= 2, JSON.stringify(changes));
  assert.ok(changes.every((c) => c.previous === 'S1' && c.current === 'S2'), JSON.stringify(changes));
  const s = client.status();
  assert.equal(s.heldBack?.storeChanged, true);
  assert.equal(s.heldBack?.mode, 'full');
  assert.equal(s.storeId, 'S1', 'the identity of the state held');
  assert.deepEqual([s.lastStoreChange?.previous, s.lastStoreChange?.current], ['S1', 'S2']);
  assert.match(String(s.lastError?.message), /store identity changed from "S1" to "S2"/);
  assert.deepEqual(client.keys(), ['tenant_config_a', 'tenant_config_b']);

  // One of the keys written again in the new store: a partial removal, applied.
  fake.serve({ mode: 'INITIAL_MODE_FULL', storeId: 'S2', entries: [{ ...a1, value: '10' }] });
  await waitFor(() => client.status().connected && client.status().storeId === 'S2', 10_000, () => JSON.stringify(client.status()));
  assert.deepEqual(client.keys(), ['tenant_config_a']);
  assert.equal(client.get('tenant_config_a')?.value, 10);
  assert.equal(client.status().heldBack, undefined);
  const reported = changes.length;

  // A server that reports no identity: unknown, nothing reported, the identity held stays.
  fake.serve({ mode: 'INITIAL_MODE_DIFF', storeId: '', entries: [] });
  const sent = fake.requests.length;
  fake.endStreams();
  await waitFor(() => fake.requests.length > sent && client.status().connected, 10_000, () => JSON.stringify(client.status()));
  assert.equal(fake.requests.at(-1)?.known_store_id, 'S2');
  assert.equal(client.status().storeId, 'S2');
  assert.equal(changes.length, reported);
  await client.close();
  const file = JSON.parse(await fs.readFile(snapshotPath, 'utf8')) as { storeId?: string };
  assert.equal(file.storeId, 'S2');

  // A new client starts from the snapshot and sends its identity.
  const again = await h.client({ address: fake.url, tenant: TENANT, token: () => 'token', snapshotPath });
  assert.equal(again.status().storeId, 'S2');
  const before = fake.requests.length;
  await waitFor(() => fake.requests.length > before, 10_000, () => 'the next Watch');
  assert.equal(fake.requests.at(-1)?.known_store_id, 'S2');
});

test('allowMassRemoval: a function that throws holds back; a value of another type is refused', async (t) => {
  assert.throws(
    () =>
      new ConfigWatchClient({
        address: '127.0.0.1:1',
        tenant: TENANT,
        token: () => 'token',
        allowMassRemoval: 'yes' as unknown as boolean,
      }),
    (e: unknown) => e instanceof InvalidOptionsError && /allowMassRemoval/.test(e.message),
  );
  const h = new Harness(t);
  const fake = await fakeServer({ mode: 'INITIAL_MODE_FULL', storeId: '', entries: [{ key: 'tenant_config_a', version: 1, value: '1' }] });
  t.after(() => fake.close());
  let calls = 0;
  const client = await h.client({
    address: fake.url,
    tenant: TENANT,
    token: () => 'token',
    allowMassRemoval: () => {
      calls++;
      throw new Error("the application's bug");
    },
  });
  await client.ready({ timeoutMs: 10_000 });
  // The same store (no identity), emptied.
  fake.serve({ mode: 'INITIAL_MODE_FULL', storeId: '', entries: [] });
  fake.endStreams();
  await waitFor(() => (client.status().heldBack?.times ?? 0) >= 2, 10_000, () => JSON.stringify(client.status()));
  assert.ok(calls >= 2);
  assert.deepEqual(client.keys(), ['tenant_config_a']);
  assert.equal(client.status().heldBack?.storeChanged, false);
  assert.equal(client.status().lastStoreChange, undefined);
});
