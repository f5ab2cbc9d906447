#!/usr/bin/env node
// Tokenizes .flow files with the TextMate grammar exactly as VS Code does: its own tokenizer
// (vscode-textmate) on its own regular expression engine (vscode-oniguruma, Oniguruma compiled
// to WebAssembly). tests/editor_grammar.rs runs it; scripts/test.sh installs the two modules
// (pinned in package-lock.json beside this file) under target/.
//
//   node tokenize.js --modules DIR --grammar FILE [--tokens] FILE.flow...
//
// Prints one JSON line per file: {"file", "lines", "tokens", "unknown": [{"line", "column",
// "text"}]}, where an unknown token is a run of characters no rule of the grammar matched
// (scopes: only the grammar's own `source.flowcast`) that is not whitespace. With --tokens,
// each file's line also lists every token as [line, text, innermost scope].
// Exit status: 0 no unknown token, 1 some, 2 the modules or the grammar could not be loaded.
"use strict";

const fs = require("fs");
const path = require("path");

function usage(msg) {
  process.stderr.write(`tokenize.js: ${msg}\n`);
  process.exit(2);
}

const args = process.argv.slice(2);
let modules = null;
let grammarPath = null;
let listTokens = false;
const files = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--modules") modules = args[++i];
  else if (args[i] === "--grammar") grammarPath = args[++i];
  else if (args[i] === "--tokens") listTokens = true;
  else files.push(args[i]);
}
if (!modules || !grammarPath) usage("--modules DIR and --grammar FILE are required");

let vsctm, onig;
try {
  vsctm = require(path.resolve(modules, "vscode-textmate"));
  onig = require(path.resolve(modules, "vscode-oniguruma"));
} catch (e) {
  usage(`vscode-textmate and vscode-oniguruma are not in ${modules} (run scripts/test.sh): ${e.message}`);
}

async function main() {
  const wasm = fs.readFileSync(path.resolve(modules, "vscode-oniguruma/release/onig.wasm"));
  await onig.loadWASM(wasm.buffer.slice(wasm.byteOffset, wasm.byteOffset + wasm.byteLength));
  const text = fs.readFileSync(grammarPath, "utf8");
  const scopeName = JSON.parse(text).scopeName;
  const registry = new vsctm.Registry({
    onigLib: Promise.resolve({
      createOnigScanner: (patterns) => new onig.OnigScanner(patterns),
      createOnigString: (s) => new onig.OnigString(s),
    }),
    loadGrammar: async (name) =>
      name === scopeName ? vsctm.parseRawGrammar(text, grammarPath) : null,
  });
  const grammar = await registry.loadGrammar(scopeName);
  if (!grammar) usage(`${grammarPath} did not load as ${scopeName}`);
  let anyUnknown = false;
  for (const file of files) {
    const lines = fs.readFileSync(file, "utf8").split(/\r?\n/);
    let stack = vsctm.INITIAL;
    const unknown = [];
    const tokens = [];
    let count = 0;
    lines.forEach((line, n) => {
      const r = grammar.tokenizeLine(line, stack);
      stack = r.ruleStack;
      for (const t of r.tokens) {
        const tokText = line.substring(t.startIndex, t.endIndex);
        if (tokText.trim() === "") continue;
        count++;
        const scope = t.scopes[t.scopes.length - 1];
        if (listTokens) tokens.push([n + 1, tokText, scope]);
        if (t.scopes.length === 1) {
          const lead = tokText.length - tokText.trimStart().length;
          unknown.push({ line: n + 1, column: t.startIndex + lead + 1, text: tokText.trim() });
        }
      }
    });
    if (unknown.length > 0) anyUnknown = true;
    const out = { file, lines: lines.length, tokens: count, unknown };
    if (listTokens) out.list = tokens;
    process.stdout.write(JSON.stringify(out) + "\n");
  }
  process.exit(anyUnknown ? 1 : 0);
}

main().catch((e) => usage(e.stack || String(e)));
