'use strict';
// Where the compiled addon lives for this platform (napi-rs naming), shared by the loader and the
// build script so they cannot disagree.
const path = require('path');

function platformSuffix() {
  const { platform, arch } = process;
  if (platform !== 'linux') return `${platform}-${arch}`;
  const report = typeof process.report?.getReport === 'function' ? process.report.getReport() : null;
  const glibc = report?.header?.glibcVersionRuntime;
  return `${platform}-${arch}-${glibc ? 'gnu' : 'musl'}`;
}

const suffix = platformSuffix();

module.exports = {
  suffix,
  localFile: path.join(__dirname, '..', `socket-io-amqp0-native.${suffix}.node`),
  platformPackage: `socket.io-amqp0-native-${suffix}`,
};
