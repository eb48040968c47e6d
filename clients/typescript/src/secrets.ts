/**
 * Secrets read from the server on demand with `Get`: the cache never holds their
 * values, and nothing read here is cached. A read starts on the server the watch
 * uses and moves on through the client's addresses when one cannot be reached or its
 * connection fails the call, as the watch does, without moving the watch. Knows the
 * connections, not the cache.
 */
import * as grpc from '@grpc/grpc-js';

import { authMetadata, type Connection } from './connection';
import { ConfigWatchError, DecodeError, ProtocolError, ServerError, TimeoutError, fromGrpcError } from './errors';
import type { ServerAddress, TokenSource } from './options';
import type { GetResponse } from './wire';

/** Calls a read makes at most, over the addresses in turn (more when the list is longer). */
const READ_ATTEMPTS = 4;

/** What a secret read needs of the client. */
export interface SecretReader {
  /** The addresses, in the watch's order. */
  servers: readonly ServerAddress[];
  /** The index in `servers` of the address the watch uses, and its connection. */
  current: number;
  connection: Connection;
  /** A connection to another address (closed after the read). */
  connectTo(server: ServerAddress): Connection;
  tenant: string;
  token: TokenSource;
  callTimeoutMs: number;
}

/**
 * The string a secret holds, or undefined when the key does not exist. Rejects with
 * a ServerError (when every address failed, UNAVAILABLE naming each address tried),
 * a TokenSourceError, a TimeoutError, or a {@link DecodeError} when the value is not
 * a JSON string.
 */
export async function readSecret(reader: SecretReader, key: string): Promise<string | undefined> {
  const res = await getAnywhere(reader, [key]);
  const entry = res.entries.find((e) => e.key === key);
  if (entry === undefined) return undefined;
  let value: unknown;
  try {
    value = JSON.parse(entry.value);
  } catch (e) {
    throw new DecodeError(key, 'the value is not JSON', e);
  }
  if (typeof value !== 'string') throw new DecodeError(key, 'the value is not a JSON string');
  return value;
}

/**
 * `Get` on the address the watch uses, then on the next ones while an address's
 * connection fails the call; all within one `callTimeoutMs`.
 */
async function getAnywhere(reader: SecretReader, keys: string[]): Promise<GetResponse> {
  const deadline = Date.now() + reader.callTimeoutMs;
  const count = Math.max(1, reader.servers.length);
  const tried: string[] = [];
  let last: ConfigWatchError | undefined;
  for (let attempt = 0; attempt < Math.max(READ_ATTEMPTS, count); attempt++) {
    if (attempt > 0 && Date.now() >= deadline) {
      throw new TimeoutError(`reading ${keys.join(', ')} took over ${reader.callTimeoutMs} ms (tried: ${tried.join('; ')})`);
    }
    const index = (reader.current + attempt) % count;
    const server = reader.servers[index];
    if (server === undefined) break;
    const own = index !== reader.current;
    const connection = own ? reader.connectTo(server) : reader.connection;
    try {
      return await getRefreshing(connection, reader, keys, deadline);
    } catch (e) {
      const error = e instanceof ConfigWatchError ? e : fromGrpcError(e);
      if (!connectionFailed(error)) throw error;
      tried.push(`${server.address}: ${error.message}`);
      last = error;
    } finally {
      if (own) connection.close();
    }
  }
  const code = last instanceof ServerError ? last.grpcCode : grpc.status.UNAVAILABLE;
  throw new ServerError(code, `no server could be read (tried: ${tried.join('; ')})`, { cause: last });
}

/** Whether a call failed because its connection went away rather than by the server's answer. */
function connectionFailed(e: ConfigWatchError): boolean {
  return e instanceof ServerError && (e.grpcCode === grpc.status.UNAVAILABLE || e.grpcCode === grpc.status.CANCELLED);
}

/** `Get` on `connection`; a refused token gets one fresh one. */
async function getRefreshing(connection: Connection, reader: SecretReader, keys: string[], deadline: number): Promise<GetResponse> {
  try {
    return await getOnce(connection, reader, keys, deadline);
  } catch (e) {
    if (e instanceof ConfigWatchError && e.code === 'UNAUTHENTICATED') return getOnce(connection, reader, keys, deadline);
    throw e;
  }
}

async function getOnce(connection: Connection, reader: SecretReader, keys: string[], deadline: number): Promise<GetResponse> {
  const metadata = await authMetadata(reader.token);
  return new Promise<GetResponse>((resolve, reject) => {
    try {
      connection.rpc.Get({ keys, tenant: reader.tenant }, metadata, { deadline }, (err, res) => {
        if (err) reject(fromGrpcError(err));
        else if (res === undefined) reject(new ProtocolError('Get returned no response'));
        else resolve(res);
      });
    } catch (e) {
      // The call could not start: its channel was closed meanwhile (the watch moved
      // to another address). Nothing was sent: a connection's failure, not the server's.
      reject(new ServerError(grpc.status.UNAVAILABLE, `the call could not start: ${e instanceof Error ? e.message : String(e)}`, { cause: e }));
    }
  });
}
