// A server cut off from its sources, against a scripted stub server: the status's
// serverDisconnectedSince follows what every message says (the initial state and
// progress included), clears on a message without it, and clears when the watch
// moves to another address.
import assert from 'node:assert/strict';
import * as net from 'node:net';
import { test } from 'node:test';

import type * as grpc from '@grpc/grpc-js';

import { ConfigWatchClient } from '../src';
import { waitFor } from './helpers';
import { startStub, timestamp } from './stub';

test('the status says since when the server in use is cut off from its sources', async (t) => {
  const cutSince = new Date('2026-09-21T14:13:20.250Z');
  let open: grpc.ServerWritableStream<unknown, unknown> | undefined;
  const stub = await startStub({
    Watch: (call: grpc.ServerWritableStream<unknown, unknown>) => {
      open = call;
      call.write({
        kind: 'KIND_INITIAL',
        initial_mode: 'INITIAL_MODE_FULL',
        changes: [{ key: 'tenant_config_a', version: '1', value: '1', revision: '1' }],
        initial_complete: true,
        revision: '1',
        resume_token: 'token-1',
        store_id: 'S1',
        disconnected_since: timestamp(cutSince),
      });
    },
  });
  // The next address accepts connections and never answers: the client sits there
  // after moving, hearing nothing from it.
  const accepted: net.Socket[] = [];
  const silent = net.createServer((socket) => accepted.push(socket));
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
  const next = `http://127.0.0.1:${(silent.address() as net.AddressInfo).port}`;
  const client = new ConfigWatchClient({
    addresses: [stub.url, next],
    randomStart: false,
    tenant: 'acme',
    token: () => 'token',
    backoff: { initialMs: 50, maxMs: 500 },
  });
  t.after(async () => {
    await client.close();
    stub.close();
    silent.close();
    for (const socket of accepted) socket.destroy();
  });
  const progress = (revision: number, since: Date | undefined): void => {
    assert.ok(open);
    open.write({ kind: 'KIND_PROGRESS', revision: String(revision), resume_token: `token-${revision}`, disconnected_since: since ? timestamp(since) : null });
  };
  const until = (what: string, cond: () => boolean): Promise<void> =>
    waitFor(cond, 10_000, () => `${what}; status ${JSON.stringify(client.status())}`);

  await client.start();
  await client.ready({ timeoutMs: 10_000 });
  // Served by a cut-off instance from the first message on: the cache is current with
  // what the server holds, and the status says how old that may be.
  const status = client.status();
  assert.ok(status.connected && !status.stale, JSON.stringify(status));
  assert.equal(status.serverDisconnectedSince?.toISOString(), cutSince.toISOString());

  // The server reaches its sources again: a progress message without the field.
  progress(2, undefined);
  await until('the cut-off cleared', () => client.status().serverDisconnectedSince === undefined);
  assert.equal(client.status().revision, 2);

  // Cut off again, later; every message repeats it while it lasts.
  const again = new Date('2026-09-21T14:23:20.250Z');
  progress(3, again);
  await until('cut off again', () => client.status().serverDisconnectedSince?.getTime() === again.getTime());
  progress(4, again);
  await until('revision 4', () => client.status().revision === 4);
  assert.equal(client.status().serverDisconnectedSince?.getTime(), again.getTime());

  // The server ends the stream: the watch moves to the next address, of which nothing is known.
  assert.ok(open);
  open.end();
  await until('the move', () => client.address === next);
  assert.equal(client.status().serverDisconnectedSince, undefined);
  assert.equal(client.get('tenant_config_a')?.value, 1);
});
