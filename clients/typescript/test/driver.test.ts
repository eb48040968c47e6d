// The convergence driver (convergence-client.ts) given two addresses, as the Rust
// convergence suite can run it across two instances: it starts on the first, moves
// to the second when the first dies, and its dump says where it is.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { test } from 'node:test';

import { Harness, waitFor } from './helpers';

const TENANT = 'acme';

interface Dump {
  status: { address: string; connected: boolean };
  entries: Record<string, { version: number; value?: unknown }>;
  counts: { moves: number };
}

test('the convergence driver takes several --address flags and moves between them', async (t) => {
  const h = new Harness(t);
  const a = await h.server();
  const b = await h.peer(a);
  await a.put(TENANT, 'tenant_config_k', 'a');
  await b.put(TENANT, 'tenant_config_k', 'b');
  const tokenFile = path.join(await h.tempDir(), 'token');
  await fs.writeFile(tokenFile, await a.token(TENANT));

  const script = path.join(__dirname, 'convergence-client.js');
  const child = spawn(
    process.execPath,
    [script, '--address', a.url, '--address', b.url, '--tenant', TENANT, '--token-file', tokenFile],
    { stdio: ['pipe', 'pipe', 'pipe'] },
  );
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  t.after(() => {
    child.kill('SIGKILL');
  });
  const lines: unknown[] = [];
  readline.createInterface({ input: child.stdout }).on('line', (l) => lines.push(JSON.parse(l)));
  let id = 0;
  const dump = async (): Promise<Dump> => {
    const n = ++id;
    const before = lines.length;
    child.stdin.write(`${JSON.stringify({ id: n, cmd: 'dump' })}\n`);
    await waitFor(() => lines.slice(before).some((l) => (l as { id?: number }).id === n), 10_000, () => `dump ${n}; ${stderr}`);
    return lines.find((l) => (l as { id?: number }).id === n) as Dump;
  };
  /** Dumps until the driver is connected to `address` and holds its value of the key. */
  const until = async (address: string, value: string): Promise<Dump> => {
    const deadline = Date.now() + 15_000;
    for (;;) {
      const d = await dump();
      if (d.status.connected && d.status.address === address && d.entries['tenant_config_k']?.value === value) return d;
      if (Date.now() > deadline) throw new Error(`the driver never held ${address}'s value: ${JSON.stringify(d)}; ${stderr}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  };

  await waitFor(() => lines.length > 0, 20_000, () => `the driver to start; ${stderr}`);
  assert.deepEqual(lines[0], { type: 'started' });
  await until(a.url, 'a');
  await a.kill('SIGKILL');
  const d = await until(b.url, 'b');
  assert.equal(d.counts.moves, 1);
  assert.match(stderr, /moved from http:\/\/127\.0\.0\.1:\d+ to http:\/\/127\.0\.0\.1:\d+/);

  child.stdin.write(`${JSON.stringify({ id: ++id, cmd: 'close' })}\n`);
  assert.equal(await exited, 0);
});
