'use strict';
// index.d.ts stays in step with the JS API: a TypeScript file using it must compile.
const { it } = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { spawnSync } = require('node:child_process');

it('index.d.ts accepts the documented usage and rejects misuse', () => {
  const tsc = require.resolve('typescript/bin/tsc');
  const file = path.join(__dirname, 'fixtures', 'types-check.ts');
  const args = [tsc, '--noEmit', '--strict', '--module', 'node16', '--moduleResolution', 'node16', '--types', 'node', file];
  const result = spawnSync(process.execPath, args, { encoding: 'utf8', timeout: 60000 });
  assert.equal(result.status, 0, `tsc failed:\n${result.stdout}${result.stderr}`);
});
