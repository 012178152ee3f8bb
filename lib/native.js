'use strict';
// Loads the compiled addon through the loader the napi CLI generates (`binding.js`): the file a
// source checkout builds (`npm run build`), or the per-platform package npm installs from the
// optionalDependencies. When neither loads, the error names the package this platform needs.

// The platform package the generated loader looked for (it does the platform and libc detection;
// its failure lists each attempt as a `cause`), or null on a platform it has no package for.
function packageTried(loadError) {
  for (let error = loadError; error; error = error.cause) {
    const match = /Cannot find module '(socket\.io-amqp0-native-(?!wasm32)[^'/]+)'/.exec(error.message);
    if (match) return match[1];
  }
  return null;
}

function load() {
  try {
    return require('../binding.js');
  } catch (cause) {
    const pkg = packageTried(cause);
    const remedy = pkg
      ? `Its prebuilt binary comes in the package "${pkg}", which npm installs with ` +
        `socket.io-amqp0-native as an optional dependency: install it (\`npm install ${pkg}\`), or ` +
        'reinstall without --no-optional / --omit=optional.'
      : 'No prebuilt binary is published for this platform.';
    const error = new Error(
      `socket.io-amqp0-native: no native binding for ${process.platform}-${process.arch}. ${remedy} ` +
        'In a source checkout, build it with `npm run build` (needs Rust).',
      { cause },
    );
    error.code = 'ERR_SOCKET_IO_AMQP0_NATIVE_BINDING';
    error.packageName = pkg;
    throw error;
  }
}

module.exports = load();
