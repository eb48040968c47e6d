/**
 * A ConfigWatchClient driven over stdin/stdout: the TypeScript side of the Rust
 * convergence test (clients/rust/tests/convergence/). Not a test by itself
 * (`npm test` runs dist/test/*.test.js only); `npm run build` compiles it to
 * dist/test/convergence-client.js.
 *
 *   node dist/test/convergence-client.js --address URL [--address URL]... --tenant T
 *        --token-file FILE [--prefix P]... [--idle-timeout-ms N] [--backoff-initial-ms N]
 *        [--backoff-max-ms N] [--random-start true|false]
 *
 * `--address` repeated gives the client several servers (in that order); it starts on
 * the first unless `--random-start true`.
 *
 * The token file is read again every time the client asks for a token, so whoever
 * drives this process refreshes the token by replacing the file (write a temporary
 * file, then rename it over).
 *
 * Protocol: one JSON object per line in both directions.
 * - stdout, once the client is started: `{"type":"started"}`.
 * - stdin `{"id":N,"cmd":"dump"}` -> stdout `{"id":N,"type":"dump", ...}` with
 *   - `status`: `{state, address, connected, revision, entries, lastError,
 *     lastMessageAt, serverDisconnectedSince}` (`address`: the one in use;
 *     `lastMessageAt` and `serverDisconnectedSince`, since when the server in use
 *     says it is cut off from its sources: ms since the epoch, or null);
 *   - `entries`: key -> `{version, value}` for each live key (`{version, secret:true}`
 *     for secrets, `{version, decodeError}` for a value that is not JSON);
 *   - `last`: key -> the last change event for it, `{type, version, value?, secret}`;
 *   - `violations`: change events that contradict the ones before them (a version
 *     going backwards, a set that does not raise the version, a `previousVersion`
 *     that is not the version last seen live, a delete of a key not live);
 *   - `counts`: changes, syncs by mode, disconnects, error events, address changes (`moves`).
 * - stdin `{"id":N,"cmd":"read","key":K}` -> `readSecret(K)`, answers
 *   `{"id":N,"type":"read","value":V}` (null when the key does not exist).
 * - stdin `{"id":N,"cmd":"close"}` -> closes the client, answers
 *   `{"id":N,"type":"closed"}` and exits 0. End of stdin also closes and exits.
 * - a request that fails: `{"id":N,"type":"error","message":...}`.
 * Diagnostics go to stderr.
 */
import { promises as fs } from 'node:fs';
import * as readline from 'node:readline';

import { ConfigWatchClient, type Change } from '../src';

interface Args {
  addresses: string[];
  randomStart: boolean;
  tenant: string;
  tokenFile: string;
  prefixes: string[];
  idleTimeoutMs: number | undefined;
  backoffInitialMs: number;
  backoffMaxMs: number;
}

function usage(message: string): never {
  process.stderr.write(`convergence-client: ${message}\n`);
  process.exit(64);
}

function parseArgs(argv: readonly string[]): Args {
  const out: Partial<Args> & { prefixes: string[]; addresses: string[] } = {
    addresses: [],
    prefixes: [],
    backoffInitialMs: 50,
    backoffMaxMs: 500,
  };
  const number = (flag: string, v: string): number => {
    const n = Number(v);
    if (!Number.isFinite(n) || n <= 0) usage(`${flag} wants a positive number, not ${JSON.stringify(v)}`);
    return n;
  };
  for (let i = 0; i < argv.length; i += 2) {
    const flag = argv[i];
    const value = argv[i + 1];
    if (value === undefined) usage(`${String(flag)} needs a value`);
    switch (flag) {
      case '--address':
        out.addresses.push(value);
        break;
      case '--random-start':
        if (value !== 'true' && value !== 'false') usage(`--random-start wants true or false, not ${JSON.stringify(value)}`);
        out.randomStart = value === 'true';
        break;
      case '--tenant':
        out.tenant = value;
        break;
      case '--token-file':
        out.tokenFile = value;
        break;
      case '--prefix':
        out.prefixes.push(value);
        break;
      case '--idle-timeout-ms':
        out.idleTimeoutMs = number(flag, value);
        break;
      case '--backoff-initial-ms':
        out.backoffInitialMs = number(flag, value);
        break;
      case '--backoff-max-ms':
        out.backoffMaxMs = number(flag, value);
        break;
      default:
        usage(`unknown argument ${String(flag)}`);
    }
  }
  if (out.addresses.length === 0 || out.tenant === undefined || out.tokenFile === undefined) {
    usage('--address, --tenant and --token-file are required');
  }
  return {
    addresses: out.addresses,
    randomStart: out.randomStart ?? false,
    tenant: out.tenant,
    tokenFile: out.tokenFile,
    prefixes: out.prefixes,
    idleTimeoutMs: out.idleTimeoutMs,
    backoffInitialMs: out.backoffInitialMs ?? 50,
    backoffMaxMs: out.backoffMaxMs ?? 500,
  };
}

interface LastChange {
  type: 'set' | 'delete';
  version: number;
  value?: unknown;
  secret: boolean;
}

/** Every change event, checked against the ones before it for the same key. */
class Recorder {
  readonly last = new Map<string, LastChange>();
  readonly violations: string[] = [];
  changes = 0;

  record(c: Change): void {
    this.changes++;
    const before = this.last.get(c.key);
    const liveVersion = before?.type === 'set' ? before.version : undefined;
    const problems: string[] = [];
    if (c.previousVersion !== liveVersion) {
      problems.push(`previousVersion ${String(c.previousVersion)}, but the version last seen live is ${String(liveVersion)}`);
    }
    if (before !== undefined && c.type === 'set' && c.version <= before.version) {
      problems.push(`a set at version ${c.version} after a ${before.type} at version ${before.version}`);
    }
    if (before !== undefined && c.type === 'delete' && c.version < before.version) {
      problems.push(`a delete at version ${c.version} after a ${before.type} at version ${before.version}`);
    }
    if (c.type === 'delete' && liveVersion === undefined) {
      problems.push('a delete of a key that was not live');
    }
    for (const p of problems) {
      // Keep the first ones: they are the interesting ones, and the list stays small.
      if (this.violations.length < 50) this.violations.push(`${c.key} (${c.cause}): ${p}`);
    }
    const entry: LastChange = { type: c.type, version: c.version, secret: c.secret };
    if (c.type === 'set' && !c.secret) entry.value = c.value;
    this.last.set(c.key, entry);
  }
}

function send(message: object): void {
  process.stdout.write(`${JSON.stringify(message)}\n`);
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const client = new ConfigWatchClient({
    addresses: args.addresses,
    randomStart: args.randomStart,
    tenant: args.tenant,
    prefixes: args.prefixes.length > 0 ? args.prefixes : undefined,
    token: async () => (await fs.readFile(args.tokenFile, 'utf8')).trim(),
    backoff: { initialMs: args.backoffInitialMs, maxMs: args.backoffMaxMs },
    idleTimeoutMs: args.idleTimeoutMs,
  });
  const recorder = new Recorder();
  const syncs: Record<string, number> = { full: 0, diff: 0, resumed: 0 };
  let disconnects = 0;
  let errors = 0;
  let moves = 0;
  client.on('change', (c) => recorder.record(c));
  client.on('connected', (i) => {
    syncs[i.mode] = (syncs[i.mode] ?? 0) + 1;
  });
  client.on('disconnected', () => disconnects++);
  client.on('addressChanged', (i) => {
    moves++;
    process.stderr.write(`convergence-client: moved from ${i.previous} to ${i.current}: ${i.error.message}\n`);
  });
  client.on('error', (e) => {
    errors++;
    process.stderr.write(`convergence-client: error event ${e.code}: ${e.message}\n`);
  });
  await client.start();
  send({ type: 'started' });

  const dump = (): object => {
    const entries: Record<string, object> = {};
    for (const key of client.keys()) {
      const info = client.info(key);
      if (info === undefined) continue;
      if (info.secret) entries[key] = { version: info.version, secret: true };
      else if (info.decodeError !== undefined) entries[key] = { version: info.version, decodeError: info.decodeError };
      else entries[key] = { version: info.version, value: client.get(key)?.value };
    }
    const s = client.status();
    return {
      status: {
        state: s.state,
        address: s.address,
        connected: s.connected,
        revision: s.revision,
        entries: s.entries,
        lastError: s.lastError ? `${s.lastError.code}: ${s.lastError.message}` : null,
        lastMessageAt: s.lastMessageAt?.getTime() ?? null,
        serverDisconnectedSince: s.serverDisconnectedSince?.getTime() ?? null,
      },
      entries,
      last: Object.fromEntries(recorder.last),
      violations: recorder.violations,
      counts: { changes: recorder.changes, syncs, disconnects, errors, moves },
    };
  };

  let closing: Promise<void> | undefined;
  const closeAndExit = (id?: unknown): Promise<void> => {
    closing ??= client.close().then(() => {
      if (id !== undefined) send({ id, type: 'closed' });
      process.exit(0);
    });
    return closing;
  };

  const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  lines.on('line', (line) => {
    if (line.trim() === '') return;
    let id: unknown;
    try {
      const request = JSON.parse(line) as { id?: unknown; cmd?: unknown; key?: unknown };
      id = request.id;
      switch (request.cmd) {
        case 'dump':
          send({ id, type: 'dump', ...dump() });
          return;
        case 'read':
          client.readSecret(String(request.key)).then(
            (value) => send({ id, type: 'read', value: value ?? null }),
            (e: unknown) => send({ id, type: 'error', message: e instanceof Error ? e.message : String(e) }),
          );
          return;
        case 'close':
          void closeAndExit(id);
          return;
        default:
          send({ id, type: 'error', message: `unknown command ${JSON.stringify(request.cmd)}` });
      }
    } catch (e) {
      send({ id, type: 'error', message: e instanceof Error ? e.message : String(e) });
    }
  });
  lines.on('close', () => void closeAndExit());
}

main().catch((e: unknown) => {
  process.stderr.write(`convergence-client: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exit(1);
});
