'use strict';
// Runs cargo with rustup's bin folder on PATH (it often is not, e.g. in CI shells).
// Usable as a module (runCargo) or a command: `node scripts/cargo.js test --lib`.
const { spawnSync } = require('child_process');
const os = require('os');
const path = require('path');

function runCargo(args) {
  const env = { ...process.env };
  env.PATH = [path.join(os.homedir(), '.cargo', 'bin'), env.PATH].join(path.delimiter);
  const result = spawnSync('cargo', args, { cwd: path.join(__dirname, '..'), env, stdio: 'inherit' });
  if (result.error) {
    console.error(`socket.io-amqp0-native: could not run cargo (${result.error.message}); install Rust from rustup.rs`);
    return 1;
  }
  return result.status ?? 1;
}

if (require.main === module) process.exit(runCargo(process.argv.slice(2)));

module.exports = { runCargo };
