'use strict';
// Runs cargo, or the napi CLI that runs cargo, with rustup's bin folder on PATH (it often is not,
// e.g. in CI shells). `node scripts/cargo.js test --lib` runs cargo; `node scripts/cargo.js --napi
// build ...` runs `napi build ...` from this checkout's devDependencies.
const { spawnSync } = require('node:child_process');
const os = require('node:os');
const path = require('node:path');

const root = path.join(__dirname, '..');

function run(command, args) {
  const env = { ...process.env };
  env.PATH = [path.join(os.homedir(), '.cargo', 'bin'), env.PATH].join(path.delimiter);
  const result = spawnSync(command, args, { cwd: root, env, stdio: 'inherit' });
  if (result.error) {
    console.error(`socket.io-amqp0-native: could not run ${command} (${result.error.message})`);
    return 1;
  }
  return result.status ?? 1;
}

if (require.main === module) {
  const args = process.argv.slice(2);
  const status =
    args[0] === '--napi'
      ? run(process.execPath, [path.join(root, 'node_modules', '@napi-rs', 'cli', 'dist', 'cli.js'), ...args.slice(1)])
      : run('cargo', args);
  process.exit(status);
}
