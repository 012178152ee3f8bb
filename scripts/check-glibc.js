'use strict';
// `node scripts/check-glibc.js <file.node> [max]`: prints the highest GLIBC_ symbol version the
// binary needs (readelf, from binutils) and fails if it is above `max` (default 2.17, what the
// release build targets so the binary loads on old distributions).
const { execFileSync } = require('node:child_process');

const [file, max = '2.17'] = process.argv.slice(2);
if (!file) {
  console.error('usage: node scripts/check-glibc.js <file.node> [max glibc version]');
  process.exit(2);
}
const parse = (version) => version.split('.').map(Number);
const compare = (a, b) => {
  const [x, y] = [parse(a), parse(b)];
  for (let i = 0; i < Math.max(x.length, y.length); i++) if ((x[i] ?? 0) !== (y[i] ?? 0)) return (x[i] ?? 0) - (y[i] ?? 0);
  return 0;
};
const versions = [...execFileSync('readelf', ['-V', '--wide', file], { encoding: 'utf8' }).matchAll(/GLIBC_([0-9.]+)/g)].map((m) => m[1]);
if (versions.length === 0) {
  console.error(`${file}: no GLIBC_ symbol versions found (not a glibc binary?)`);
  process.exit(1);
}
const highest = versions.sort(compare).at(-1);
console.log(`${file}: highest GLIBC_ symbol version needed: ${highest} (allowed: ${max})`);
if (compare(highest, max) > 0) process.exit(1);
