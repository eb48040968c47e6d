/**
 * A scripted stand-in for a configwatch server, a @grpc/grpc-js server on 127.0.0.1
 * port 0 loaded from the package's proto/: for what a real server does not show on
 * demand (an instance cut off from its sources). Each test gives the handlers it
 * needs; the others answer UNIMPLEMENTED.
 */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

import loaderOptions from '../src/loader-options.json';
import { PROTO_FILE, PROTO_ROOT, loaderOptionsFor } from '../src/wire';

/** A running stub; `close()` stops it at once. */
export interface Stub {
  url: string;
  close(): void;
}

/** Serves `handlers` (by method name: Get, Watch, Put, Delete) on 127.0.0.1 port 0. */
export async function startStub(handlers: Partial<grpc.UntypedServiceImplementation>): Promise<Stub> {
  const definition = protoLoader.loadSync(PROTO_FILE, { ...loaderOptionsFor(loaderOptions), includeDirs: [PROTO_ROOT] });
  const service = definition['configwatch.v1.ConfigService'] as grpc.ServiceDefinition;
  const unimplemented = (_: unknown, callback?: grpc.sendUnaryData<unknown>): void => {
    const error = { code: grpc.status.UNIMPLEMENTED, details: 'stub' };
    if (typeof callback === 'function') callback(error);
  };
  const server = new grpc.Server();
  server.addService(service, {
    Get: unimplemented,
    Watch: (call: grpc.ServerWritableStream<unknown, unknown>) => call.emit('error', { code: grpc.status.UNIMPLEMENTED, details: 'stub' }),
    Put: unimplemented,
    Delete: unimplemented,
    ...handlers,
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))),
  );
  return { url: `http://127.0.0.1:${port}`, close: () => server.forceShutdown() };
}

/** A timestamp as the API carries it. */
export function timestamp(date: Date): { seconds: string; nanos: number } {
  const ms = date.getTime();
  return { seconds: String(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1e6 };
}
