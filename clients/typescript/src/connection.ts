/**
 * The connection to the server: the grpc-js client of the ConfigService with its
 * credentials and channel options (keepalives, reconnect backoff, a subchannel pool
 * of its own), its renewal after a silent stream, and the `authorization` metadata
 * from the token source. Knows nothing of the cache or the watch protocol.
 */
import * as grpc from '@grpc/grpc-js';

import type { BackoffPolicy } from './backoff';
import { ProtocolError, TokenSourceError } from './errors';
import type { TokenSource } from './options';
import { serviceConstructor, type ConfigServiceClient } from './wire';

export class Connection {
  /** Replaced by {@link renew} when the server went silent. */
  rpc: ConfigServiceClient;
  private readonly newRpc: () => ConfigServiceClient;
  /** When `rpc` was made. */
  private rpcSince = Date.now();

  /**
   * Makes the client; the channel connects at the first call.
   *
   * @throws {ProtocolError} when the package's proto/ directory is missing (a broken install).
   */
  constructor(
    target: string,
    tls: boolean,
    backoff: BackoffPolicy,
    credentials?: grpc.ChannelCredentials,
    extraChannelOptions?: grpc.ChannelOptions,
  ) {
    let Service;
    try {
      Service = serviceConstructor();
    } catch (e) {
      throw new ProtocolError(`cannot load the API definition shipped with @configwatch/client (reinstall it): ${String(e)}`);
    }
    const channelCredentials = credentials ?? (tls ? grpc.credentials.createSsl() : grpc.credentials.createInsecure());
    const channelOptions: grpc.ChannelOptions = {
      'grpc.initial_reconnect_backoff_ms': Math.max(1, Math.round(backoff.initialMs)),
      'grpc.max_reconnect_backoff_ms': Math.max(1, Math.round(backoff.maxMs)),
      'grpc.keepalive_time_ms': 30_000,
      'grpc.keepalive_timeout_ms': 10_000,
      // A connection of this client's own (not shared through grpc-js's global pool),
      // so that renew() really gets a new one.
      'grpc.use_local_subchannel_pool': 1,
      ...extraChannelOptions,
    };
    const ServiceClient = Service;
    this.newRpc = () => new ServiceClient(target, channelCredentials, channelOptions);
    this.rpc = this.newRpc();
  }

  /** Replaces the channel (and its connection) with a new one. */
  renew(): void {
    const old = this.rpc;
    this.rpc = this.newRpc();
    this.rpcSince = Date.now();
    old.close();
  }

  /** How long since anything came from the server on the current channel, in ms. */
  silentFor(lastMessageAt: Date | undefined): number {
    return Date.now() - Math.max(lastMessageAt?.getTime() ?? 0, this.rpcSince);
  }

  /** Closes the current channel (at `close()` of the client). */
  close(): void {
    this.rpc.close();
  }
}

/** `authorization` metadata with a token from `source`. */
export async function authMetadata(source: TokenSource): Promise<grpc.Metadata> {
  const md = new grpc.Metadata();
  md.set('authorization', `Bearer ${await token(source)}`);
  return md;
}

async function token(source: TokenSource): Promise<string> {
  let token: unknown;
  try {
    token = await source();
  } catch (e) {
    throw new TokenSourceError(`the token source failed: ${e instanceof Error ? e.message : String(e)}`, e);
  }
  if (typeof token !== 'string' || token === '') {
    throw new TokenSourceError(
      `the token source returned ${typeof token === 'string' ? 'an empty string' : typeof token}, not a token`,
    );
  }
  return token;
}
