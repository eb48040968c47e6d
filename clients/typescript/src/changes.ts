/**
 * The async iterator of changes. Each iterator has its own queue holding at most one
 * change per key: a newer change for a key replaces the waiting one and moves to the
 * back, so a consumer that falls behind costs at most one change per key and always
 * sees the newest state of each key (never a skipped key, never an unbounded queue).
 */
import type { Change } from './cache';
import type { ConfigWatchError } from './errors';

export class ChangeQueue implements AsyncIterableIterator<Change> {
  private readonly waiting = new Map<string, Change>();
  private readers: Array<{ resolve: (r: IteratorResult<Change>) => void; reject: (e: unknown) => void }> = [];
  private ended = false;
  private failure: ConfigWatchError | undefined;

  constructor(
    private readonly filter: (c: Change) => boolean,
    private readonly onDone: (q: ChangeQueue) => void,
  ) {}

  /** Called by the client for every change. */
  push(change: Change): void {
    if (this.ended || !this.filter(change)) return;
    const reader = this.readers.shift();
    if (reader !== undefined) {
      reader.resolve({ value: change, done: false });
      return;
    }
    this.waiting.delete(change.key);
    this.waiting.set(change.key, change);
  }

  /** Ends the iteration once what is waiting has been taken; with an error, throws it then. */
  end(failure?: ConfigWatchError): void {
    if (this.ended) return;
    this.ended = true;
    this.failure = failure;
    const readers = this.readers;
    this.readers = [];
    for (const r of readers) this.settleEnded(r);
    this.onDone(this);
  }

  next(): Promise<IteratorResult<Change>> {
    const first = this.waiting.entries().next();
    if (!first.done) {
      const [key, change] = first.value;
      this.waiting.delete(key);
      return Promise.resolve({ value: change, done: false });
    }
    return new Promise((resolve, reject) => {
      if (this.ended) this.settleEnded({ resolve, reject });
      else this.readers.push({ resolve, reject });
    });
  }

  /** Stops the iteration (`break` in `for await` calls this). */
  return(): Promise<IteratorResult<Change>> {
    this.waiting.clear();
    this.failure = undefined;
    this.end();
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<Change> {
    return this;
  }

  private settleEnded(r: { resolve: (r: IteratorResult<Change>) => void; reject: (e: unknown) => void }): void {
    const failure = this.failure;
    if (failure !== undefined) {
      // Thrown once; the iteration is over after it.
      this.failure = undefined;
      r.reject(failure);
    } else {
      r.resolve({ value: undefined, done: true });
    }
  }
}
