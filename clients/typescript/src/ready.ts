/**
 * The callers waiting in `ready()`: each wait with its optional timeout and abort
 * signal, settled all at once when the client syncs, fails or closes. Knows nothing
 * of what "ready" means; the client decides when to settle.
 */
import { TimeoutError, type ConfigWatchError } from './errors';

interface ReadyWaiter {
  resolve: () => void;
  reject: (e: ConfigWatchError) => void;
}

export class ReadyWaiters {
  private readonly waiters: ReadyWaiter[] = [];

  /**
   * Resolves at {@link resolveAll}, rejects at {@link rejectAll}, or with a
   * {@link TimeoutError} after `timeoutMs` (message from `timeoutMessage`) or when
   * `signal` aborts.
   */
  wait(options: { timeoutMs?: number; signal?: AbortSignal } | undefined, timeoutMessage: (ms: number) => string): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const onAbort = (): void => settle(new TimeoutError('ready() was aborted'));
      const settle = (error?: ConfigWatchError): void => {
        const i = this.waiters.indexOf(waiter);
        if (i >= 0) this.waiters.splice(i, 1);
        if (timer !== undefined) clearTimeout(timer);
        options?.signal?.removeEventListener('abort', onAbort);
        if (error) reject(error);
        else resolve();
      };
      const waiter: ReadyWaiter = { resolve: () => settle(), reject: (e) => settle(e) };
      this.waiters.push(waiter);
      if (options?.timeoutMs !== undefined) {
        const ms = options.timeoutMs;
        timer = setTimeout(() => settle(new TimeoutError(timeoutMessage(ms))), ms);
      }
      if (options?.signal) {
        if (options.signal.aborted) onAbort();
        else options.signal.addEventListener('abort', onAbort, { once: true });
      }
    });
  }

  resolveAll(): void {
    for (const w of [...this.waiters]) w.resolve();
  }

  rejectAll(error: ConfigWatchError): void {
    for (const w of [...this.waiters]) w.reject(error);
  }
}
