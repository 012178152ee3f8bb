'use strict';
// The release path as a user meets it: `npm pack` the root package and this platform's binary
// package, install both tarballs into a fresh project offline with no cargo on PATH, and run two
// Socket.IO servers and an emitter from there, as CommonJS and as ESM. Without the platform
// package, require() must name the package to install.
const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { execFileSync, spawnSync } = require('node:child_process');
const { AMQP_URL, uniqueName } = require('./helpers');

const ROOT = path.join(__dirname, '..');
const NPM = process.platform === 'win32' ? 'npm.cmd' : 'npm';

// The binary `npm run build` made for this machine names the platform package it belongs in.
// SIO_NATIVE_BINARY picks another build of it (.ci/run passes the glibc 2.17 release build).
function builtBinary() {
  let file = process.env.SIO_NATIVE_BINARY && path.resolve(process.env.SIO_NATIVE_BINARY);
  if (!file) {
    const binaries = fs.readdirSync(ROOT).filter((name) => /^socket-io-amqp0-native\..+\.node$/.test(name));
    assert.equal(binaries.length, 1, `exactly one built addon in the checkout (npm run build): ${binaries}`);
    file = path.join(ROOT, binaries[0]);
  }
  const suffix = path.basename(file).split('.')[1];
  return { file, suffix, packageName: `socket.io-amqp0-native-${suffix}` };
}

// PATH without any folder that holds cargo, so nothing in the install could build from source.
function pathWithoutCargo() {
  const dirs = (process.env.PATH || '').split(path.delimiter).filter((dir) => dir && !fs.existsSync(path.join(dir, 'cargo')));
  return [path.dirname(process.execPath), ...dirs].join(path.delimiter);
}

function npm(args, cwd, env = process.env) {
  const result = spawnSync(NPM, args, { cwd, env, encoding: 'utf8', timeout: 120000 });
  if (result.status !== 0) throw new Error(`npm ${args.join(' ')} failed (${result.status}):\n${result.stdout}${result.stderr}`);
  return result.stdout;
}

function pack(dir, destination) {
  const [info] = JSON.parse(npm(['pack', '--json', '--pack-destination', destination], dir));
  return { tarball: path.join(destination, info.filename), files: info.files.map((f) => f.path) };
}

// The root package as the release publishes it: what `npm pack` takes from the checkout, with the
// optionalDependencies `napi pre-publish -t npm` writes at publish time (one per napi target,
// `<name>-<platformArchABI>` at the root's exact version). The checkout's package.json has none,
// so `npm ci` works before the platform packages exist on the registry.
async function stageReleaseRoot(stage) {
  const { parseTriple } = require('@napi-rs/cli');
  const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8'));
  const [{ files }] = JSON.parse(npm(['pack', '--dry-run', '--json'], ROOT));
  for (const { path: file } of files) {
    fs.mkdirSync(path.dirname(path.join(stage, file)), { recursive: true });
    fs.copyFileSync(path.join(ROOT, file), path.join(stage, file));
  }
  pkg.optionalDependencies = Object.fromEntries(
    pkg.napi.targets.map((target) => [`${pkg.name}-${parseTriple(target).platformArchABI}`, pkg.version]),
  );
  fs.writeFileSync(path.join(stage, 'package.json'), `${JSON.stringify(pkg, null, 2)}\n`);
  return pkg;
}

// A fresh project with the given tarballs installed offline, cargo absent. Socket.IO itself (and
// the client for the scenario) is linked from this checkout: the peers the adapter expects, one
// copy of each, without the registry.
function freshProject(dir, tarballs, env) {
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true }));
  npm(['install', '--offline', '--no-audit', '--no-fund', '--legacy-peer-deps', '--no-package-lock', ...tarballs], dir, env);
  for (const peer of ['socket.io', 'socket.io-client', 'socket.io-adapter', 'socket.io-parser']) {
    fs.symlinkSync(path.join(ROOT, 'node_modules', peer), path.join(dir, 'node_modules', peer), 'dir');
  }
  for (const file of ['scenario.js', 'scenario.mjs']) {
    fs.copyFileSync(path.join(__dirname, 'fixtures', 'installed-app', file), path.join(dir, file));
  }
}

describe('the packed packages, installed as a user would', { timeout: 300000 }, () => {
  let work;
  let binary;
  let root;
  let platform;
  let released;
  const env = { ...process.env, PATH: pathWithoutCargo(), npm_config_update_notifier: 'false' };

  before(async () => {
    binary = builtBinary();
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'sio-native-install-'));
    released = await stageReleaseRoot(path.join(work, 'root'));
    root = pack(path.join(work, 'root'), work);
    // What `napi artifacts` does in the release workflow: the binary goes into its npm/ folder.
    const platformDir = path.join(work, 'platform');
    fs.cpSync(path.join(ROOT, 'npm', binary.suffix), platformDir, { recursive: true });
    fs.copyFileSync(binary.file, path.join(platformDir, path.basename(binary.file)));
    platform = pack(platformDir, work);
  });
  after(() => {
    if (work) fs.rmSync(work, { recursive: true, force: true });
  });

  it('the root package ships the loader, lib, typings and docs: no binary, no Rust source, no tests', () => {
    for (const expected of [
      'index.js',
      'index.mjs',
      'index.d.ts',
      'binding.js',
      'lib/native.js',
      'package.json',
      'README.md',
      'LICENSE',
      'CHANGELOG.md',
    ]) {
      assert.ok(root.files.includes(expected), `${expected} is in the package`);
    }
    const stray = root.files.filter((f) => /\.node$|\.rs$|^src\/|^__test__\/|^npm\/|^Cargo|^scripts\/|^bench\/|^demo\//.test(f));
    assert.deepEqual(stray, [], 'nothing that belongs elsewhere');
    assert.deepEqual(platform.files.sort(), [path.basename(binary.file), 'README.md', 'package.json'].sort());
  });

  it('the released root package lists every platform package at its version; no install script', () => {
    const folders = fs.readdirSync(path.join(ROOT, 'npm')).filter((name) => fs.statSync(path.join(ROOT, 'npm', name)).isDirectory());
    assert.equal(folders.length, released.napi.targets.length, 'one npm/ folder per napi target');
    const published = Object.fromEntries(
      folders.map((name) => {
        const sub = JSON.parse(fs.readFileSync(path.join(ROOT, 'npm', name, 'package.json'), 'utf8'));
        assert.equal(sub.version, released.version, `${name} is at the root's version (napi version)`);
        return [sub.name, sub.version];
      }),
    );
    assert.deepEqual(Object.keys(released.optionalDependencies).sort(), Object.keys(published).sort(), 'each target has its npm/ package');
    for (const hook of ['preinstall', 'install', 'postinstall']) assert.equal(released.scripts[hook], undefined, `no ${hook} script`);
    const loader = fs.readFileSync(path.join(ROOT, 'binding.js'), 'utf8');
    assert.ok(loader.includes(`expected ${released.version} but got`), 'binding.js was generated for this version (npm run build)');
  });

  it('installs offline without cargo, then two servers and an emitter work from there (CommonJS and ESM)', () => {
    assert.equal(spawnSync('cargo', ['--version'], { env }).error?.code, 'ENOENT', 'cargo is out of reach for this test');
    const app = path.join(work, 'app');
    freshProject(app, [root.tarball, platform.tarball], env);
    const installed = path.join(app, 'node_modules', 'socket.io-amqp0-native');
    assert.deepEqual(
      fs.readdirSync(installed).filter((f) => f.endsWith('.node')),
      [],
      'the root package carries no binary',
    );
    assert.ok(
      fs.existsSync(path.join(app, 'node_modules', binary.packageName, path.basename(binary.file))),
      'the binary came from its package',
    );
    for (const [script, format] of [
      ['scenario.js', 'commonjs'],
      ['scenario.mjs', 'esm'],
    ]) {
      const out = execFileSync(process.execPath, [script, AMQP_URL, uniqueName(`installed-${format}`)], {
        cwd: app,
        env,
        encoding: 'utf8',
        timeout: 60000,
      });
      const result = JSON.parse(out.trim().split('\n').pop());
      assert.equal(result.fromServer, format, `${format}: a broadcast crossed from one server to the other`);
      assert.equal(result.fromEmitter, format, `${format}: the emitter's broadcast arrived`);
      assert.equal(result.servedBy, 2, `${format}: each server counts the other`);
      assert.ok(fs.realpathSync(result.adapter).startsWith(fs.realpathSync(installed)), `${format}: the installed copy ran`);
    }
  });

  it('without the platform package, require() fails with an error that names the package to install', () => {
    const app = path.join(work, 'no-binary');
    freshProject(app, [root.tarball], env);
    const result = spawnSync(process.execPath, ['-e', "require('socket.io-amqp0-native')"], {
      cwd: app,
      env,
      encoding: 'utf8',
      timeout: 30000,
    });
    assert.notEqual(result.status, 0, 'require() throws');
    assert.match(result.stderr, new RegExp(`npm install ${binary.packageName.replace(/\./g, '\\.')}`), result.stderr);
    assert.match(result.stderr, /ERR_SOCKET_IO_AMQP0_NATIVE_BINDING/);
  });
});
