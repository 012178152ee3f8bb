'use strict';
// Compiles the Rust addon with cargo and copies it where lib/native.js looks for it.
// Runs as the package's `install` script in a source checkout; a published package (no Cargo.toml)
// ships prebuilt per-platform binaries instead, so there it does nothing.
const { spawnSync } = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');

const root = path.join(__dirname, '..');
const debug = process.argv.includes('--debug');

if (!fs.existsSync(path.join(root, 'Cargo.toml'))) process.exit(0);

const env = { ...process.env };
env.PATH = [path.join(os.homedir(), '.cargo', 'bin'), env.PATH].join(path.delimiter);
const args = ['build', '--lib', ...(debug ? [] : ['--release'])];
console.log(`socket.io-amqp0-native: cargo ${args.join(' ')}`);
const result = spawnSync('cargo', args, { cwd: root, env, stdio: 'inherit' });
if (result.error) {
  console.error(`socket.io-amqp0-native: could not run cargo (${result.error.message}); install Rust from rustup.rs`);
  process.exit(1);
}
if (result.status !== 0) process.exit(result.status ?? 1);

const libName = {
  darwin: 'libsocket_io_amqp0_native.dylib',
  win32: 'socket_io_amqp0_native.dll',
}[process.platform] ?? 'libsocket_io_amqp0_native.so';
const targetDir = process.env.CARGO_TARGET_DIR || path.join(root, 'target');
const built = path.join(targetDir, debug ? 'debug' : 'release', libName);
const dest = require('../lib/binding-path').localFile;
// Replace rather than overwrite: a running process may have the old file mapped.
fs.rmSync(dest, { force: true });
fs.copyFileSync(built, dest);
console.log(`socket.io-amqp0-native: built ${path.relative(root, dest)}`);
