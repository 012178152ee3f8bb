'use strict';
// Loads the compiled addon through the loader the napi CLI generates (`binding.js`): the file a
// source checkout builds (`npm run build`), or the per-platform package npm installs from the
// optionalDependencies. When neither loads, the error names the package this platform needs.

function expectedPackage() {
  const { platform, arch } = process;
  if (platform === 'win32') return `socket.io-amqp0-native-win32-${arch}-msvc`;
  if (platform !== 'linux') return `socket.io-amqp0-native-${platform}-${arch}`;
  // As the generated loader does: no network look-ups in the report (they can stall for seconds).
  let glibc = true;
  if (typeof process.report?.getReport === 'function') {
    process.report.excludeNetwork = true;
    glibc = Boolean(process.report.getReport().header?.glibcVersionRuntime);
  }
  return `socket.io-amqp0-native-linux-${arch}-${glibc ? 'gnu' : 'musl'}`;
}

function load() {
  try {
    return require('../binding.js');
  } catch (cause) {
    const pkg = expectedPackage();
    const error = new Error(
      `socket.io-amqp0-native: no native binding for ${process.platform}-${process.arch}. Its prebuilt ` +
        `binary comes in the package "${pkg}", which npm installs with socket.io-amqp0-native as an ` +
        `optional dependency: install it (\`npm install ${pkg}\`), or reinstall without ` +
        '--no-optional / --omit=optional. In a source checkout, build it with `npm run build` (needs Rust).',
      { cause },
    );
    error.code = 'ERR_SOCKET_IO_AMQP0_NATIVE_BINDING';
    error.packageName = pkg;
    throw error;
  }
}

module.exports = load();
