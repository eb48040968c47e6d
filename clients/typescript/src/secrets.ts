/**
 * Secrets read from the server on demand with `Get`: the cache never holds their
 * values, and nothing read here is cached. Knows the connection, not the cache.
 */
import { authMetadata, type Connection } from './connection';
import { ConfigWatchError, DecodeError, ProtocolError, fromGrpcError } from './errors';
import type { TokenSource } from './options';
import type { GetResponse } from './wire';

/** What a secret read needs of the client. */
export interface SecretReader {
  connection: Connection;
  tenant: string;
  token: TokenSource;
  callTimeoutMs: number;
}

/**
 * The string a secret holds, or undefined when the key does not exist. Rejects with
 * a ServerError, a TokenSourceError, or a {@link DecodeError} when the value is not a
 * JSON string.
 */
export async function readSecret(reader: SecretReader, key: string): Promise<string | undefined> {
  const res = await getFromServer(reader, [key]);
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

async function getFromServer(reader: SecretReader, keys: string[]): Promise<GetResponse> {
  const call = async (): Promise<GetResponse> => {
    const metadata = await authMetadata(reader.token);
    return new Promise<GetResponse>((resolve, reject) => {
      reader.connection.rpc.Get(
        { keys, tenant: reader.tenant },
        metadata,
        { deadline: Date.now() + reader.callTimeoutMs },
        (err, res) => {
          if (err) reject(fromGrpcError(err));
          else if (res === undefined) reject(new ProtocolError('Get returned no response'));
          else resolve(res);
        },
      );
    });
  };
  try {
    return await call();
  } catch (e) {
    // A refused token: the token source gets one more chance.
    if (e instanceof ConfigWatchError && e.code === 'UNAUTHENTICATED') return call();
    throw e;
  }
}
