// Makes herald.js, the plain-script form of herald.mjs: the same code inside a function that
// sets `window.Herald` (or `globalThis.Herald`), without the module's `export` keywords.
//
//   node build.mjs           writes herald.js
//   node build.mjs --check   exits 1 if herald.js is not what herald.mjs gives (the tests run it)

import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const source = readFileSync(join(here, 'herald.mjs'), 'utf8');

/** The script form of the module's text. */
export function toScript(module) {
  let body = module.replace(/^export default Herald;\n/m, '');
  body = body.replace(/^export (class|function|const) /gm, '$1 ');
  if (/^\s*(export|import)\b/m.test(body)) {
    throw new Error('herald.mjs has an import or export build.mjs does not know how to rewrite');
  }
  // Not re-indented: the class's source text stays byte for byte the module's, which the
  // browser test checks (`window.Herald.toString()` against the module's).
  return (
    '// Generated from herald.mjs by build.mjs: edit herald.mjs, then run `node build.mjs`.\n' +
    '(function (root) {\n' +
    "'use strict';\n\n" +
    body.replace(/\n+$/, '\n') +
    '\nroot.Herald = Herald;\n' +
    "})(typeof window !== 'undefined' ? window : globalThis);\n"
  );
}

const target = join(here, 'herald.js');
const want = toScript(source);
if (process.argv.includes('--check')) {
  let have = '';
  try {
    have = readFileSync(target, 'utf8');
  } catch (e) {
    // missing: differs
  }
  if (have !== want) {
    console.error('herald.js is not the build of herald.mjs: run `node clients/js/build.mjs`');
    process.exit(1);
  }
  console.log('herald.js matches herald.mjs');
} else {
  writeFileSync(target, want);
  console.log('wrote herald.js');
}
