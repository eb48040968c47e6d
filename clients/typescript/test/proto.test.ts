import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';

import * as protoLoader from '@grpc/proto-loader';

import { PROTO_FILE, PROTO_ROOT, loaderOptionsFor } from '../src/wire';
import loaderOptions from '../src/loader-options.json';
const PKG_ROOT = path.resolve(__dirname, '..', '..');

test("the package's copy of the proto is the repository's proto/", () => {
  const repo = path.resolve(PKG_ROOT, '..', '..', 'proto', PROTO_FILE);
  const copy = path.join(PROTO_ROOT, PROTO_FILE);
  assert.equal(path.resolve(copy), path.resolve(PKG_ROOT, 'proto', PROTO_FILE));
  assert.ok(
    readFileSync(copy).equals(readFileSync(repo)),
    `${copy} differs from ${repo}: run \`npm run build\` (it copies the proto and regenerates the types)`,
  );
});

test('messages decode the way the generated types say (loader options in sync)', () => {
  const definition = protoLoader.loadSync(PROTO_FILE, { ...loaderOptionsFor(loaderOptions), includeDirs: [PROTO_ROOT] });
  const service = definition['configwatch.v1.ConfigService'] as protoLoader.ServiceDefinition | undefined;
  assert.ok(service, 'configwatch.v1.ConfigService is defined');
  const watch = service['Watch'];
  const get = service['Get'];
  assert.ok(watch && get);
  assert.equal(watch.responseStream, true);
  assert.equal(get.responseStream, false);

  const bytes = watch.responseSerialize({
    kind: 'KIND_DELTA',
    changes: [{ key: 'tenant_config_a', version: '18446744073709551615', value: '1', secret: true }],
    revision: 7,
    resume_token: 'tok',
  });
  const msg = watch.responseDeserialize(bytes) as Record<string, unknown>;
  // uint64 as decimal strings, enums as names, defaults filled in, snake_case names:
  // what generated/configwatch/v1/WatchResponse.ts declares for WatchResponse__Output.
  assert.deepEqual(msg, {
    kind: 'KIND_DELTA',
    initial_mode: 'INITIAL_MODE_UNSPECIFIED',
    changes: [
      {
        key: 'tenant_config_a',
        version: '18446744073709551615',
        value: '1',
        updated_at: null,
        secret: true,
        deleted: false,
        revision: '0',
      },
    ],
    initial_complete: false,
    revision: '7',
    resume_token: 'tok',
    store_id: '',
    disconnected_since: null,
  });
  const req = watch.requestDeserialize(
    watch.requestSerialize({ prefixes: ['p_'], tenant: 't', resume_token: '', known_versions: { k: '3' } }),
  ) as Record<string, unknown>;
  assert.deepEqual(req, {
    prefixes: ['p_'],
    tenant: 't',
    resume_token: '',
    known_versions: { k: '3' },
    known_digest: Buffer.alloc(0),
    known_store_id: '',
    service: '',
  });
  // The store identity, both ways.
  const identified = watch.responseDeserialize(
    watch.responseSerialize({ kind: 'KIND_INITIAL', initial_complete: true, store_id: '01JDSTORE' }),
  ) as Record<string, unknown>;
  assert.equal(identified.store_id, '01JDSTORE');
  const known = watch.requestDeserialize(watch.requestSerialize({ known_store_id: '01JDSTORE' })) as Record<string, unknown>;
  assert.equal(known.known_store_id, '01JDSTORE');
  // Since when the server is cut off, as a timestamp with seconds as a decimal string.
  const cutOff = watch.responseDeserialize(
    watch.responseSerialize({ kind: 'KIND_PROGRESS', disconnected_since: { seconds: '1790000000', nanos: 250_000_000 } }),
  ) as Record<string, unknown>;
  assert.deepEqual(cutOff.disconnected_since, { seconds: '1790000000', nanos: 250_000_000 });
  // The digest travels as the raw 16 bytes.
  const digest = Buffer.from('1189b337f183118e15d6dc71f6d0d83c', 'hex');
  const withDigest = watch.requestDeserialize(
    watch.requestSerialize({ prefixes: [], tenant: '', resume_token: 'tok', known_versions: {}, known_digest: digest }),
  ) as Record<string, unknown>;
  assert.deepEqual(withDigest.known_digest, digest);
});
