// Build step: copies the API definition from the repository's proto/ into this
// package (so a published package carries it), then generates the TypeScript message
// and service types from that copy with proto-loader-gen-types, using the same
// loader options the library uses at run time (src/loader-options.json).
//
// Outside the repository (an unpacked tarball) there is no ../../proto; the copy
// shipped in the package is used as is.
import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const pkg = join(dirname(fileURLToPath(import.meta.url)), '..');
const rel = join('configwatch', 'v1', 'config.proto');
const repoProto = join(pkg, '..', '..', 'proto', rel);
const copy = join(pkg, 'proto', rel);

if (existsSync(repoProto)) {
  const same = existsSync(copy) && readFileSync(copy).equals(readFileSync(repoProto));
  if (!same) {
    mkdirSync(dirname(copy), { recursive: true });
    copyFileSync(repoProto, copy);
    console.log(`copied ${repoProto} -> ${copy}`);
  }
} else if (!existsSync(copy)) {
  console.error(`no proto: neither ${repoProto} nor ${copy} exists`);
  process.exit(1);
}

const options = JSON.parse(readFileSync(join(pkg, 'src', 'loader-options.json'), 'utf8'));
const flags = [];
for (const [name, value] of Object.entries(options)) {
  if (value === true) flags.push(`--${name}`);
  else if (typeof value === 'string') flags.push(`--${name}=${value}`);
  else {
    console.error(`loader option ${name}: unsupported value ${JSON.stringify(value)}`);
    process.exit(1);
  }
}

const out = join(pkg, 'src', 'generated');
rmSync(out, { recursive: true, force: true });
const require = createRequire(import.meta.url);
const gen = join(dirname(require.resolve('@grpc/proto-loader/package.json')), 'build', 'bin', 'proto-loader-gen-types.js');
execFileSync(
  process.execPath,
  [gen, ...flags, '--grpcLib=@grpc/grpc-js', `--includeDirs=${join(pkg, 'proto')}`, `--outDir=${out}`, rel],
  { stdio: 'inherit', cwd: join(pkg, 'proto') },
);
