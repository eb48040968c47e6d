/**
 * Test harness: real configwatch servers on 127.0.0.1 port 0 with temporary data
 * directories, tokens and writes through the configwatch CLI (an oracle independent
 * of this package), and `waitFor` to poll for a condition with a deadline.
 *
 * The binary is $CONFIGWATCH_BIN, or ../../target/debug/configwatch relative to the
 * package (build it with `cargo build` at the repository root).
 */
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { TestContext } from 'node:test';
import { promisify } from 'node:util';

import { ConfigWatchClient, type ClientOptions } from '../src';

const run = promisify(execFile);

/** The package root (this file runs from dist/test/). */
export const PKG_ROOT = path.resolve(__dirname, '..', '..');

export const BIN = process.env['CONFIGWATCH_BIN']
  ? path.resolve(process.env['CONFIGWATCH_BIN'])
  : path.resolve(PKG_ROOT, '..', '..', 'target', 'debug', 'configwatch');

if (!existsSync(BIN)) {
  throw new Error(`configwatch binary not found at ${BIN}: run \`cargo build\` at the repository root or set CONFIGWATCH_BIN`);
}

/** Polls `cond` every 10 ms until it holds; fails with `what()` after `timeoutMs`. */
export async function waitFor(cond: () => boolean, timeoutMs: number, what: () => string = () => 'condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what()}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** One configwatch server process. */
export class Server {
  private child: ChildProcess | undefined;
  private exited: Promise<void> = Promise.resolve();
  private log = '';
  port = 0;

  private constructor(
    readonly dataDir: string,
    private readonly extraArgs: readonly string[],
  ) {}

  /** Starts a server on 127.0.0.1 (port 0 unless given) with `dataDir`, and `extraArgs` to `serve`. */
  static async start(dataDir: string, port = 0, extraArgs: readonly string[] = []): Promise<Server> {
    const s = new Server(dataDir, extraArgs);
    await s.spawn(port);
    return s;
  }

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  get url(): string {
    return `http://${this.address}`;
  }

  logs(): string {
    return this.log;
  }

  /** Starts again on the same port and data directory (after `kill`). */
  async restart(): Promise<void> {
    await this.spawn(this.port);
  }

  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const child = this.child;
    if (child === undefined) return;
    this.child = undefined;
    if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    await this.exited;
  }

  private async spawn(port: number): Promise<void> {
    const args = ['serve', '--listen', `127.0.0.1:${port}`, '--data-dir', this.dataDir, '--progress-interval', '1s', ...this.extraArgs];
    // A port just freed by a killed server may take a moment to be bindable again.
    const deadline = Date.now() + 10_000;
    for (;;) {
      try {
        await this.spawnOnce(args);
        return;
      } catch (e) {
        if (port === 0 || Date.now() > deadline || !/in use/i.test(this.log)) throw e;
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  }

  private spawnOnce(args: string[]): Promise<void> {
    const child = spawn(BIN, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, CONFIGWATCH_LOG: 'info', CONFIGWATCH_ADMIN_LISTEN: '' } });
    this.child = child;
    this.exited = new Promise((resolve) => child.once('exit', () => resolve()));
    child.stderr?.on('data', (d: Buffer) => {
      this.log += d.toString();
    });
    return new Promise<void>((resolve, reject) => {
      let out = '';
      const timer = setTimeout(() => fail(new Error('server did not print its address within 10 s')), 10_000);
      const fail = (e: Error): void => {
        clearTimeout(timer);
        child.kill('SIGKILL');
        this.child = undefined;
        reject(new Error(`${e.message}\n--- server log ---\n${this.log}`));
      };
      const early = (code: number | null, signal: NodeJS.Signals | null): void =>
        fail(new Error(`server exited (${code ?? signal}) before listening`));
      child.once('exit', early);
      child.stdout?.on('data', (d: Buffer) => {
        out += d.toString();
        const m = /^listening on 127\.0\.0\.1:(\d+)$/m.exec(out);
        if (m?.[1] !== undefined) {
          clearTimeout(timer);
          child.off('exit', early);
          this.port = Number(m[1]);
          resolve();
        }
      });
    });
  }

  /** A token signed with this server's key. */
  async token(tenant: string, options: { role?: 'reader' | 'writer' | 'admin'; ttl?: string } = {}): Promise<string> {
    const args = ['token', '--data-dir', this.dataDir, '--tenant', tenant, '--role', options.role ?? 'reader'];
    if (options.ttl) args.push('--ttl', options.ttl);
    const { stdout } = await run(BIN, args);
    return stdout.trim();
  }

  /** Writes with the CLI (writer role); returns the new version. */
  async put(tenant: string, key: string, json: unknown, options: { secret?: boolean } = {}): Promise<number> {
    const token = await this.token(tenant, { role: 'writer' });
    const args = ['put', key, JSON.stringify(json), '--server', this.url, '--token', token];
    if (options.secret) args.push('--secret');
    const { stdout } = await run(BIN, args);
    return (JSON.parse(stdout) as { version: number }).version;
  }

  async delete(tenant: string, key: string): Promise<number> {
    const token = await this.token(tenant, { role: 'writer' });
    const { stdout } = await run(BIN, ['delete', key, '--server', this.url, '--token', token]);
    return (JSON.parse(stdout) as { version: number }).version;
  }

  /** Every live entry of the tenant as the server holds it: key -> [version, value]. */
  async state(tenant: string, prefixes: string[] = []): Promise<Map<string, [number, unknown]>> {
    const token = await this.token(tenant);
    const args = ['get', '--server', this.url, '--token', token];
    for (const p of prefixes.length ? prefixes : ['tenant_config_', 'param_config_']) args.push('--prefix', p);
    const { stdout } = await run(BIN, args);
    const out = new Map<string, [number, unknown]>();
    for (const line of stdout.split('\n')) {
      if (line.trim() === '') continue;
      const e = JSON.parse(line) as { key: string; version: number; value?: unknown };
      out.set(e.key, [e.version, e.value]);
    }
    return out;
  }
}

/** Per-test resources, released when the test ends (pass or fail). */
export class Harness {
  private readonly servers: Server[] = [];
  private readonly clients: ConfigWatchClient[] = [];
  private readonly dirs: string[] = [];

  constructor(t: TestContext) {
    t.after(async () => {
      await Promise.all(this.clients.map((c) => c.close()));
      await Promise.all(this.servers.map((s) => s.kill()));
      // Retried: a `configwatch token` run that a client's token source started just
      // before it closed may still be writing into a data directory being removed
      // (ENOTEMPTY until it exits).
      await Promise.all(
        this.dirs.map((d) => fs.rm(d, { recursive: true, force: true, maxRetries: 10, retryDelay: 50 })),
      );
    });
  }

  async tempDir(): Promise<string> {
    const d = await fs.mkdtemp(path.join(os.tmpdir(), 'configwatch-ts-'));
    this.dirs.push(d);
    return d;
  }

  async server(dataDir?: string, port = 0, extraArgs: readonly string[] = []): Promise<Server> {
    const s = await Server.start(dataDir ?? (await this.tempDir()), port, extraArgs);
    this.servers.push(s);
    return s;
  }

  /**
   * A server of another store (a data directory of its own) that accepts the tokens
   * `of` signs: its directory starts with a copy of `of`'s signing key (and so it
   * needs `--new-store` to create its store; the flag does nothing to an intact one).
   */
  async peer(of: Server): Promise<Server> {
    const dataDir = await this.tempDir();
    await fs.copyFile(path.join(of.dataDir, 'signing-key.pem'), path.join(dataDir, 'signing-key.pem'));
    return this.server(dataDir, 0, ['--new-store']);
  }

  /**
   * A relay of `upstream` (`serve --upstream`): its directory starts with a copy of
   * the upstream's signing key (it checks its clients' tokens with it) and a relay
   * credential from it in a file.
   */
  async relay(upstream: Server): Promise<Server> {
    const dataDir = await this.tempDir();
    await fs.copyFile(path.join(upstream.dataDir, 'signing-key.pem'), path.join(dataDir, 'signing-key.pem'));
    const { stdout } = await run(BIN, ['token', '--role', 'relay', '--data-dir', upstream.dataDir]);
    const tokenFile = path.join(dataDir, 'relay.token');
    await fs.writeFile(tokenFile, stdout.trim());
    return this.server(dataDir, 0, ['--upstream', upstream.url, '--upstream-token-file', tokenFile]);
  }

  /** A client with fast reconnects; started. */
  async client(options: ClientOptions): Promise<ConfigWatchClient> {
    const c = new ConfigWatchClient({ backoff: { initialMs: 50, maxMs: 500 }, ...options });
    this.clients.push(c);
    await c.start();
    return c;
  }
}

/** key -> [version, value] of every live key (not secrets) of a client's cache, in key order. */
export function cacheState(client: ConfigWatchClient): [string, [number, unknown]][] {
  const out: [string, [number, unknown]][] = [];
  for (const k of client.keys()) {
    const v = client.get(k);
    if (v) out.push([k, [v.version, v.value]]);
  }
  return out;
}

/**
 * Waits until `client` is connected and its cache equals what `server` holds for
 * `tenant` (under `prefixes`; default both families), then checks the server again.
 */
export async function converged(client: ConfigWatchClient, server: Server, tenant: string, prefixes: string[] = []): Promise<void> {
  const truth = JSON.stringify([...(await server.state(tenant, prefixes))]);
  await waitFor(
    () => client.status().connected && JSON.stringify(cacheState(client)) === truth,
    15_000,
    () => `convergence: cache ${JSON.stringify(cacheState(client))} vs server ${truth}; status ${JSON.stringify(client.status())}`,
  );
  assert.deepEqual(cacheState(client), [...(await server.state(tenant, prefixes))]);
}

/** Collects a client's change events as `key@version` (or `key@version-` for deletes). */
export function record(client: ConfigWatchClient): string[] {
  const seen: string[] = [];
  client.on('change', (c) => seen.push(`${c.key}@${c.version}${c.type === 'delete' ? '-' : ''}`));
  return seen;
}
