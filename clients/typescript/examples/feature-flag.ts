/**
 * A small service that prints a feature flag each time it changes.
 *
 *   configwatch serve --data-dir data &                       # prints: listening on 127.0.0.1:50051
 *   export CONFIGWATCH_TOKEN=$(configwatch token --data-dir data --tenant acme)
 *   CONFIGWATCH_TENANT=acme node dist/examples/feature-flag.js
 *   configwatch put tenant_config_new-checkout '{"enabled":true}' \
 *     --token "$(configwatch token --data-dir data --tenant acme --role writer)"
 *
 * Environment:
 *   CONFIGWATCH_SERVER      server address (default http://127.0.0.1:50051)
 *   CONFIGWATCH_TENANT      tenant (required)
 *   CONFIGWATCH_TOKEN_FILE  a file holding the token, read again whenever one is needed
 *   CONFIGWATCH_TOKEN       the token itself (when no token file)
 *   FLAG_KEY                the flag's key (default tenant_config_new-checkout)
 *   SNAPSHOT                where to keep a snapshot (optional): start from it when
 *                           the server is down
 *
 * In an application, import from '@configwatch/client' instead of '../src'.
 */
import { readFile } from 'node:fs/promises';

import { ConfigWatchClient, type Change } from '../src';

const address = process.env['CONFIGWATCH_SERVER'] ?? 'http://127.0.0.1:50051';
const tenant = process.env['CONFIGWATCH_TENANT'] ?? '';
const flagKey = process.env['FLAG_KEY'] ?? 'tenant_config_new-checkout';
const tokenFile = process.env['CONFIGWATCH_TOKEN_FILE'];

async function token(): Promise<string> {
  if (tokenFile) return (await readFile(tokenFile, 'utf8')).trim();
  return process.env['CONFIGWATCH_TOKEN'] ?? '';
}

/** A flag is on when its value is `true` or `{ "enabled": true }`. */
function enabled(value: unknown): boolean {
  if (typeof value === 'boolean') return value;
  if (typeof value === 'object' && value !== null && 'enabled' in value) return (value as { enabled: unknown }).enabled === true;
  return false;
}

async function main(): Promise<number> {
  if (tenant === '') {
    console.error('set CONFIGWATCH_TENANT (and CONFIGWATCH_TOKEN or CONFIGWATCH_TOKEN_FILE)');
    return 64;
  }
  const snapshotPath = process.env['SNAPSHOT'];
  const client = new ConfigWatchClient({
    address,
    tenant,
    token,
    ...(snapshotPath ? { snapshotPath } : {}),
  });

  // Prints the flag when its state differs from the last one printed.
  let shown: string | undefined;
  const print = (why: string): void => {
    const flag = client.get(flagKey);
    const id = flag === undefined ? 'unset' : String(flag.version);
    if (id === shown) return;
    shown = id;
    const state = flag === undefined ? 'unset (off)' : `${enabled(flag.value) ? 'on' : 'off'} (version ${flag.version})`;
    console.log(`${flagKey} ${state} [${why}]`);
  };

  client.on('change', (c: Change) => {
    if (c.key === flagKey) print(c.cause === 'delta' ? 'changed' : 'synced');
  });
  client.on('connected', (i) => {
    console.error(`connected (${i.mode}, revision ${i.revision})`);
    print('current');
  });
  client.on('disconnected', (i) => console.error(`disconnected: ${i.error.message}`));
  client.on('error', (e) => console.error(`error [${e.code}]: ${e.message}`));

  const stop = new Promise<'stop'>((resolve) => {
    process.once('SIGINT', () => resolve('stop'));
    process.once('SIGTERM', () => resolve('stop'));
  });

  await client.start();
  if (client.status().source === 'snapshot') print('from snapshot, stale');
  // ready() rejects only when the watch cannot go on (a bad token's tenant, a bad prefix).
  const failed = client.ready().then(
    () => new Promise<never>(() => undefined),
    (e: unknown) => {
      console.error(`cannot watch: ${e instanceof Error ? e.message : String(e)}`);
      return 'failed' as const;
    },
  );
  const outcome = await Promise.race([stop, failed]);
  await client.close();
  return outcome === 'failed' ? 1 : 0;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    console.error(e);
    process.exitCode = 1;
  },
);
