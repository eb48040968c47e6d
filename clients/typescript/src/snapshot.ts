/**
 * The optional on-disk snapshot of the cache: what a service starts from while the
 * server is unreachable. Written atomically (a temporary file in the same directory,
 * fsync, rename, fsync of the directory), so a reader sees the old snapshot or the new
 * one, never half of one. It records the tenant and the prefixes it was taken for and
 * is ignored when either differs. Secret values are never in it (the cache has none).
 */
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';

import { SnapshotError } from './errors';
import type { WireEntry } from './wire';

export const SNAPSHOT_FORMAT = 'configwatch-client-snapshot/1';

/** What a snapshot holds. */
export interface SnapshotData {
  tenant: string;
  prefixes: string[];
  savedAt: Date;
  /** The tenant revision the cache was at. */
  revision: number;
  /** The newest resume token when the snapshot was taken ('' when none). */
  resumeToken: string;
  /** The store identity of the state ('' when unknown). */
  storeId: string;
  /** Live entries (secrets without value). */
  entries: WireEntry[];
}

export type SnapshotRead =
  | { kind: 'loaded'; data: SnapshotData }
  | { kind: 'absent' }
  | { kind: 'ignored'; reason: string };

interface FileEntry {
  key: string;
  version: number;
  value: string;
  secret: boolean;
  revision: number;
  updatedAt: string | null;
}

interface FileShape {
  format: string;
  tenant: string;
  prefixes: string[];
  savedAt: string;
  revision: number;
  resumeToken: string;
  /** Absent in files written before store identities (and when unknown). */
  storeId?: string;
  entries: FileEntry[];
}

/** Sorted, without duplicates: the form prefixes are compared in. */
export function normalizePrefixes(prefixes: readonly string[]): string[] {
  return [...new Set(prefixes)].sort();
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isCount(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

function parseEntry(v: unknown): WireEntry | undefined {
  if (!isRecord(v)) return undefined;
  const { key, version, value, secret, revision, updatedAt } = v;
  if (typeof key !== 'string' || !isCount(version) || typeof value !== 'string' || typeof secret !== 'boolean') {
    return undefined;
  }
  if (!isCount(revision) || (updatedAt !== null && typeof updatedAt !== 'string')) return undefined;
  const at = updatedAt === null ? undefined : new Date(updatedAt);
  return {
    key,
    version,
    value: secret ? '' : value,
    secret,
    deleted: false,
    revision,
    updatedAt: at !== undefined && Number.isFinite(at.getTime()) ? at : undefined,
  };
}

/**
 * Reads a snapshot for `tenant` and `prefixes`. Never throws: a missing file is
 * `absent`; an unreadable, malformed, or foreign (other tenant or prefixes) one is
 * `ignored` with the reason.
 */
export async function readSnapshot(file: string, tenant: string, prefixes: readonly string[]): Promise<SnapshotRead> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { kind: 'absent' };
    return { kind: 'ignored', reason: `cannot read: ${e instanceof Error ? e.message : String(e)}` };
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    return { kind: 'ignored', reason: 'not JSON' };
  }
  if (!isRecord(doc) || doc['format'] !== SNAPSHOT_FORMAT) {
    return { kind: 'ignored', reason: `not a ${SNAPSHOT_FORMAT} file` };
  }
  if (doc['tenant'] !== tenant) {
    return { kind: 'ignored', reason: `it belongs to tenant ${JSON.stringify(doc['tenant'])}, not ${JSON.stringify(tenant)}` };
  }
  const filePrefixes = doc['prefixes'];
  if (!Array.isArray(filePrefixes) || !filePrefixes.every((p) => typeof p === 'string')) {
    return { kind: 'ignored', reason: 'malformed prefixes' };
  }
  const want = normalizePrefixes(prefixes);
  const have = normalizePrefixes(filePrefixes as string[]);
  if (want.length !== have.length || want.some((p, i) => p !== have[i])) {
    return { kind: 'ignored', reason: `it was taken for prefixes ${JSON.stringify(have)}, not ${JSON.stringify(want)}` };
  }
  const savedAt = typeof doc['savedAt'] === 'string' ? new Date(doc['savedAt']) : new Date(NaN);
  const revision = doc['revision'];
  const resumeToken = doc['resumeToken'];
  const storeId = doc['storeId'] ?? '';
  const rawEntries = doc['entries'];
  if (
    !Number.isFinite(savedAt.getTime()) ||
    !isCount(revision) ||
    typeof resumeToken !== 'string' ||
    typeof storeId !== 'string' ||
    !Array.isArray(rawEntries)
  ) {
    return { kind: 'ignored', reason: 'malformed header' };
  }
  const entries: WireEntry[] = [];
  for (const raw of rawEntries) {
    const e = parseEntry(raw);
    if (e === undefined) return { kind: 'ignored', reason: 'malformed entry' };
    entries.push(e);
  }
  return { kind: 'loaded', data: { tenant, prefixes: have, savedAt, revision, resumeToken, storeId, entries } };
}

/** Writes a snapshot atomically. Rejects with {@link SnapshotError}. */
export async function writeSnapshot(file: string, data: SnapshotData): Promise<void> {
  const doc: FileShape = {
    format: SNAPSHOT_FORMAT,
    tenant: data.tenant,
    prefixes: normalizePrefixes(data.prefixes),
    savedAt: data.savedAt.toISOString(),
    revision: data.revision,
    resumeToken: data.resumeToken,
    ...(data.storeId !== '' ? { storeId: data.storeId } : {}),
    entries: data.entries.map((e) => ({
      key: e.key,
      version: e.version,
      value: e.secret ? '' : e.value,
      secret: e.secret,
      revision: e.revision,
      updatedAt: e.updatedAt?.toISOString() ?? null,
    })),
  };
  const dir = path.dirname(file);
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  try {
    await fs.mkdir(dir, { recursive: true });
    const handle = await fs.open(tmp, 'wx', 0o600);
    try {
      await handle.writeFile(JSON.stringify(doc), 'utf8');
      await handle.sync();
    } finally {
      await handle.close();
    }
    await fs.rename(tmp, file);
  } catch (e) {
    await fs.rm(tmp, { force: true }).catch(() => undefined);
    throw new SnapshotError(file, `cannot write snapshot: ${e instanceof Error ? e.message : String(e)}`, e);
  }
  // Make the rename itself durable. Not every platform can open a directory.
  try {
    const d = await fs.open(dir, 'r');
    try {
      await d.sync();
    } finally {
      await d.close();
    }
  } catch {
    // best effort
  }
}

/**
 * Writes snapshots in the background: at most one write at a time, coalescing
 * requests that arrive during a write or within `debounceMs` of the first one.
 */
export class SnapshotWriter {
  private timer: NodeJS.Timeout | undefined;
  private writing: Promise<void> | undefined;
  private dirty = false;

  constructor(
    readonly file: string,
    private readonly debounceMs: number,
    private readonly collect: () => SnapshotData,
    private readonly onResult: (error: SnapshotError | undefined, savedAt: Date) => void,
  ) {}

  /** Asks for a write soon. */
  schedule(): void {
    this.dirty = true;
    if (this.timer !== undefined || this.writing !== undefined) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.writeNow();
    }, this.debounceMs);
  }

  /** Writes now if anything is pending, and waits for every write to finish. */
  async flush(): Promise<void> {
    if (this.timer !== undefined) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    while (this.writing !== undefined || this.dirty) {
      if (this.writing === undefined) this.writeNow();
      await this.writing;
    }
  }

  private writeNow(): void {
    if (this.writing !== undefined || !this.dirty) return;
    this.dirty = false;
    const data = this.collect();
    this.writing = writeSnapshot(this.file, data).then(
      () => this.onResult(undefined, data.savedAt),
      (e: unknown) => this.onResult(e instanceof SnapshotError ? e : new SnapshotError(this.file, String(e), e), data.savedAt),
    );
    void this.writing.finally(() => {
      this.writing = undefined;
      if (this.dirty && this.timer === undefined) this.schedule();
    });
  }
}
