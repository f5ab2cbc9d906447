//! Issue 15, item 4: the editor support in `editors/vscode/`. The TextMate grammar tokenizes
//! every bundled model (`models/`, `examples/`), every fixture that parses and every `flow`
//! example of the READMEs without an unknown token, as VS Code itself tokenizes them:
//! `editors/vscode/test/tokenize.js` runs vscode-textmate on vscode-oniguruma (VS Code's own
//! tokenizer and regular expression engine, pinned in `editors/vscode/test/package-lock.json`,
//! installed by `scripts/test.sh` under `target/editor-grammar/`).
//!
//! Node and the two modules are required: without them the tests fail and say how to get
//! them, they do not skip.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const GRAMMAR: &str = "editors/vscode/syntaxes/flowcast.tmLanguage.json";

/// The folder holding vscode-textmate and vscode-oniguruma (`FLOWCAST_GRAMMAR_MODULES`,
/// default `target/editor-grammar/node_modules`).
fn modules() -> PathBuf {
    let p = std::env::var_os("FLOWCAST_GRAMMAR_MODULES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/editor-grammar/node_modules")
        });
    assert!(
        p.join("vscode-textmate").exists() && p.join("vscode-oniguruma").exists(),
        "vscode-textmate and vscode-oniguruma are not in {}: run `bash scripts/test.sh`, which \
         installs them with `npm ci` from editors/vscode/test/package-lock.json",
        p.display()
    );
    p
}

/// Runs the tokenizer on `files` with `grammar`: its exit status and one JSON object per file.
fn tokenize(grammar: &Path, files: &[PathBuf], list: bool) -> (i32, Vec<Value>) {
    let mut cmd = Command::new("node");
    cmd.arg("editors/vscode/test/tokenize.js")
        .arg("--modules")
        .arg(modules())
        .arg("--grammar")
        .arg(grammar);
    if list {
        cmd.arg("--tokens");
    }
    let out = cmd.args(files).output().unwrap_or_else(|e| {
        panic!("node could not be run ({e}): install Node.js (v18 or later) to test the grammar")
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    let code = out.status.code().unwrap_or(-1);
    assert!(
        code == 0 || code == 1,
        "tokenize.js failed ({code}): {stderr}"
    );
    let results: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), files.len(), "{stderr}");
    (code, results)
}

/// Every `.flow` file of `models/` and `examples/`, every fixture that parses, and the
/// ```` ```flow ```` blocks of the READMEs (written out under `dir`).
fn corpus(dir: &Path) -> Vec<PathBuf> {
    let mut files = flowcast::model::collect_flow_files(&["models".into(), "examples".into()])
        .unwrap()
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "flow"))
        .collect::<Vec<_>>();
    assert!(files.len() >= 4, "{files:?}");
    for f in flowcast::model::collect_flow_files(&["tests/fixtures".into()]).unwrap() {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        if flowcast::syntax::parse(0, &text).is_ok() {
            files.push(f);
        }
    }
    for readme in ["README.md", "grammar/README.md", "editors/vscode/README.md"] {
        let text = std::fs::read_to_string(readme).unwrap();
        for (n, block) in text.split("```flow\n").skip(1).enumerate() {
            let code = block.split("```").next().unwrap();
            let f = dir.join(format!("{}-{n}.flow", readme.replace('/', "-")));
            std::fs::write(&f, code).unwrap();
            files.push(f);
        }
    }
    files
}

#[test]
fn the_grammar_tokenizes_every_model_fixture_and_example_without_an_unknown_token() {
    let dir = tempfile::tempdir().unwrap();
    let files = corpus(dir.path());
    let (code, results) = tokenize(Path::new(GRAMMAR), &files, false);
    let unknown: Vec<String> =
        results
            .iter()
            .flat_map(|r| {
                r["unknown"].as_array().unwrap().iter().map(move |u| {
                    format!("{}:{}:{}: {}", r["file"], u["line"], u["column"], u["text"])
                })
            })
            .collect();
    assert!(
        unknown.is_empty(),
        "unknown tokens:\n{}",
        unknown.join("\n")
    );
    assert_eq!(code, 0);
    // It read them all: the four models and the many fixtures, token by token.
    assert!(results.len() >= 30, "{}", results.len());
    let tokens: u64 = results.iter().map(|r| r["tokens"].as_u64().unwrap()).sum();
    assert!(tokens > 2_000, "{tokens}");
}

#[test]
fn a_grammar_missing_a_rule_leaves_unknown_tokens_and_fails() {
    // The same check with the operators' rule taken out of the grammar: every `->` of the
    // models is then unknown, and the tokenizer says where.
    let dir = tempfile::tempdir().unwrap();
    let mut g: Value = serde_json::from_str(&std::fs::read_to_string(GRAMMAR).unwrap()).unwrap();
    g["patterns"]
        .as_array_mut()
        .unwrap()
        .retain(|p| p["include"] != "#operator");
    let broken = dir.path().join("broken.tmLanguage.json");
    std::fs::write(&broken, g.to_string()).unwrap();
    let model = PathBuf::from("models/nova_volume_attach.flow");
    let (code, results) = tokenize(&broken, std::slice::from_ref(&model), false);
    assert_eq!(code, 1, "{results:?}");
    let unknown = results[0]["unknown"].as_array().unwrap();
    let arrows = std::fs::read_to_string(&model)
        .unwrap()
        .matches("->")
        .count();
    assert!(arrows > 0);
    assert!(
        unknown.iter().filter(|u| u["text"] == "->").count() == arrows,
        "{unknown:?}"
    );
    // The whole grammar tokenizes the same file cleanly.
    assert_eq!(tokenize(Path::new(GRAMMAR), &[model], false).0, 0);
}

#[test]
fn the_grammar_gives_each_kind_of_token_its_scope() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("scopes.flow");
    std::fs::write(
        &f,
        "    on \"x.start\" and payload.\"a.b\"[0] >= 1.5e3 -> s  # why\n\
         timeout x after 1h30m -> y\n\
         on x ~ y\n",
    )
    .unwrap();
    let (code, results) = tokenize(Path::new(GRAMMAR), std::slice::from_ref(&f), true);
    let list = results[0]["list"].as_array().unwrap();
    let scope_of = |line: u64, t: &str| {
        list.iter()
            .find(|x| x[0] == line && x[1] == t)
            .map(|x| x[2].as_str().unwrap().to_string())
    };
    assert_eq!(
        scope_of(1, "on").as_deref(),
        Some("keyword.control.flowcast")
    );
    assert_eq!(
        scope_of(1, "\"x.start\"").as_deref(),
        Some("string.quoted.double.flowcast")
    );
    assert_eq!(
        scope_of(1, "and").as_deref(),
        Some("keyword.operator.word.flowcast")
    );
    assert_eq!(
        scope_of(1, ">=").as_deref(),
        Some("keyword.operator.flowcast")
    );
    assert_eq!(
        scope_of(1, "1.5e3").as_deref(),
        Some("constant.numeric.flowcast")
    );
    assert_eq!(
        scope_of(1, "->").as_deref(),
        Some("keyword.operator.flowcast")
    );
    assert_eq!(
        scope_of(1, "# why").as_deref(),
        Some("comment.line.flowcast")
    );
    assert_eq!(
        scope_of(2, "1h30m").as_deref(),
        Some("constant.numeric.duration.flowcast")
    );
    // A character the language has no use for is an unknown token, and only that.
    assert_eq!(code, 1);
    assert_eq!(
        results[0]["unknown"],
        serde_json::json!([{"line": 3, "column": 6, "text": "~"}])
    );
}

#[test]
fn the_extension_starts_the_language_server_for_flow_files() {
    let pkg: Value =
        serde_json::from_str(&std::fs::read_to_string("editors/vscode/package.json").unwrap())
            .unwrap();
    assert_eq!(pkg["contributes"]["languages"][0]["extensions"][0], ".flow");
    assert_eq!(
        pkg["contributes"]["grammars"][0]["scopeName"],
        "source.flowcast"
    );
    let main = std::fs::read_to_string("editors/vscode/extension.js").unwrap();
    assert!(main.contains(r#"args: ["lsp"]"#), "{main}");
    let conf: Value = serde_json::from_str(
        &std::fs::read_to_string("editors/vscode/language-configuration.json").unwrap(),
    )
    .unwrap();
    assert_eq!(conf["comments"]["lineComment"], "#");
}
