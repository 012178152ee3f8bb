'use strict';
// Compiles the Rust addon with cargo and copies it where lib/native.js looks for it.
// Runs as the package's `install` script in a source checkout; a published package (no Cargo.toml)
// ships prebuilt per-platform binaries instead, so there it does nothing.
const fs = require('fs');
const path = require('path');
const { runCargo } = require('./cargo');
const { localFile } = require('../lib/binding-path');

const root = path.join(__dirname, '..');
const debug = process.argv.includes('--debug');

if (!fs.existsSync(path.join(root, 'Cargo.toml'))) process.exit(0);

const args = ['build', '--lib', ...(debug ? [] : ['--release'])];
console.log(`socket.io-amqp0-native: cargo ${args.join(' ')}`);
const status = runCargo(args);
if (status !== 0) process.exit(status);

const libName =
  { darwin: 'libsocket_io_amqp0_native.dylib', win32: 'socket_io_amqp0_native.dll' }[process.platform] ??
  'libsocket_io_amqp0_native.so';
const targetDir = process.env.CARGO_TARGET_DIR || path.join(root, 'target');
const built = path.join(targetDir, debug ? 'debug' : 'release', libName);
// Replace rather than overwrite: a running process may have the old file mapped.
fs.rmSync(localFile, { force: true });
fs.copyFileSync(built, localFile);
console.log(`socket.io-amqp0-native: built ${path.relative(root, localFile)}`);
