import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';

import { Harness, waitFor } from './helpers';

const TENANT = 'acme';
const FLAG = 'tenant_config_new-checkout';

test('the example service prints the feature flag each time it changes', async (t) => {
  const h = new Harness(t);
  const server = await h.server();
  await server.put(TENANT, FLAG, { enabled: false });
  const tokenFile = path.join(await h.tempDir(), 'token');
  await fs.writeFile(tokenFile, await server.token(TENANT));

  const child = spawn(process.execPath, [path.join(__dirname, '..', 'examples', 'feature-flag.js')], {
    env: { ...process.env, CONFIGWATCH_SERVER: server.url, CONFIGWATCH_TENANT: TENANT, CONFIGWATCH_TOKEN_FILE: tokenFile },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  t.after(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const lines = (): string[] => out.split('\n').filter((l) => l !== '');
  const expectLines = (n: number): Promise<void> =>
    waitFor(() => lines().length >= n, 10_000, () => `${n} lines; stdout ${JSON.stringify(out)} stderr ${JSON.stringify(err)}`);

  await expectLines(1);
  await server.put(TENANT, FLAG, { enabled: true });
  await expectLines(2);
  await server.put(TENANT, 'tenant_config_unrelated', 1);
  await server.delete(TENANT, FLAG);
  await expectLines(3);
  child.kill('SIGTERM');
  assert.equal(await exited, 0);
  assert.deepEqual(lines(), [
    `${FLAG} off (version 1) [synced]`,
    `${FLAG} on (version 2) [changed]`,
    `${FLAG} unset (off) [changed]`,
  ]);
});
