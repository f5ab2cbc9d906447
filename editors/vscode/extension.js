// Starts `flowcast lsp` for .flow files. The server does the work: diagnostics (the same codes
// and words as `flowcast check`), formatting (`flowcast fmt`), definitions, references,
// rename, hover and completion.
const vscode = require("vscode");
const { LanguageClient } = require("vscode-languageclient/node");

let client;

function activate(context) {
  const command = vscode.workspace.getConfiguration("flowcast").get("path") || "flowcast";
  const server = { command, args: ["lsp"] };
  client = new LanguageClient(
    "flowcast",
    "flowcast",
    { run: server, debug: server },
    { documentSelector: [{ scheme: "file", language: "flowcast" }] }
  );
  context.subscriptions.push(client);
  return client.start();
}

function deactivate() {
  return client ? client.stop() : undefined;
}

module.exports = { activate, deactivate };
