'use strict';
// Loads the compiled addon: the file `npm install` builds in a source checkout, or the
// per-platform package (napi-rs convention, see npm/) in a published install.
const { suffix, localFile, platformPackage } = require('./binding-path');

function load() {
  const errors = [];
  for (const candidate of [localFile, platformPackage]) {
    try {
      return require(candidate);
    } catch (err) {
      errors.push(`${candidate}: ${err.message}`);
    }
  }
  throw new Error(
    `socket.io-amqp0-native: no native binding for ${suffix}. In a source checkout run ` +
      `\`npm install\` (or \`npm run build\`) to compile it with cargo.\n  ${errors.join('\n  ')}`,
  );
}

module.exports = load();
