/**
 * The only module that knows the protobuf messages. It loads the API definition
 * shipped in this package (proto/, copied from the repository's proto/ at build time)
 * with the loader options the types in generated/ were generated with, and converts
 * wire entries into the cache's {@link WireEntry}.
 */
import * as path from 'node:path';

import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

import { ProtocolError } from './errors';
import type { ProtoGrpcType } from './generated/config';
import type { ConfigServiceClient } from './generated/configwatch/v1/ConfigService';
import type { Entry__Output } from './generated/configwatch/v1/Entry';
import type { Timestamp__Output } from './generated/google/protobuf/Timestamp';
import type { WatchResponse__Output } from './generated/configwatch/v1/WatchResponse';
import loaderOptions from './loader-options.json';

export type { ConfigServiceClient } from './generated/configwatch/v1/ConfigService';
export type { WatchRequest } from './generated/configwatch/v1/WatchRequest';
export type { WatchResponse__Output as WatchResponse } from './generated/configwatch/v1/WatchResponse';
export type { GetResponse__Output as GetResponse } from './generated/configwatch/v1/GetResponse';

/** The directory holding configwatch/v1/config.proto inside this package. */
export const PROTO_ROOT = path.join(__dirname, '..', '..', 'proto');
/** The API definition, relative to {@link PROTO_ROOT}. */
export const PROTO_FILE = path.join('configwatch', 'v1', 'config.proto');

export type ServiceConstructor = new (
  address: string,
  credentials: grpc.ChannelCredentials,
  options?: grpc.ChannelOptions,
) => ConfigServiceClient;

let loaded: ServiceConstructor | undefined;

/**
 * The options of src/loader-options.json (shared with the type generator) as the
 * loader takes them: "String" and "Number" name the conversion functions.
 */
export function loaderOptionsFor(json: Record<string, unknown>): protoLoader.Options {
  const out: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(json)) {
    if (value === 'String') out[name] = String;
    else if (value === 'Number') out[name] = Number;
    else if (typeof value === 'boolean') out[name] = value;
    else throw new Error(`loader option ${name}: unsupported value ${JSON.stringify(value)}`);
  }
  return out as protoLoader.Options;
}

/** The ConfigService client class. Throws (once, at first use) if proto/ is missing. */
export function serviceConstructor(): ServiceConstructor {
  if (loaded === undefined) {
    const definition = protoLoader.loadSync(PROTO_FILE, { ...loaderOptionsFor(loaderOptions), includeDirs: [PROTO_ROOT] });
    const pkg = grpc.loadPackageDefinition(definition) as unknown as ProtoGrpcType;
    loaded = pkg.configwatch.v1.ConfigService;
  }
  return loaded;
}

/** An entry as the cache sees it: versions as numbers, time as a Date. */
export interface WireEntry {
  key: string;
  version: number;
  /** JSON text; empty for tombstones and for secrets. */
  value: string;
  secret: boolean;
  deleted: boolean;
  revision: number;
  updatedAt: Date | undefined;
}

export type Kind = WatchResponse__Output['kind'];
export type InitialMode = WatchResponse__Output['initial_mode'];

/** Parses a uint64 the loader gave as a decimal string. */
export function toNumber(what: string, text: string): number {
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < 0) {
    throw new ProtocolError(`${what} ${JSON.stringify(text)} is not an integer this client can hold`);
  }
  return n;
}

/** Converts a wire entry; throws {@link ProtocolError} on a version beyond 2^53. */
export function fromWire(e: Entry__Output): WireEntry {
  const updatedAt = timeOf(e.updated_at);
  return {
    key: e.key,
    version: toNumber(`version of ${e.key}`, e.version),
    value: e.value,
    secret: e.secret,
    deleted: e.deleted,
    revision: toNumber(`revision of ${e.key}`, e.revision),
    updatedAt,
  };
}

/** A timestamp of the API as a Date (to the millisecond); undefined when absent or out of range. */
export function timeOf(t: Timestamp__Output | null | undefined): Date | undefined {
  if (!t) return undefined;
  const ms = Number(t.seconds) * 1000 + Math.floor(t.nanos / 1e6);
  const date = new Date(ms);
  return Number.isFinite(date.getTime()) ? date : undefined;
}
