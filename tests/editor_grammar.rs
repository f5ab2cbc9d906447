//! Issue 15, item 4: the editor support in `editors/vscode/`. The TextMate grammar tokenizes
//! every bundled model and every fixture that parses without an unknown token: a tokenizer
//! that follows TextMate's rule (at each position the pattern whose match starts first wins,
//! ties to the earlier pattern) runs the grammar's own regular expressions.

use regex::Regex;
use serde_json::Value;

struct Pattern {
    scope: String,
    re: Regex,
}

fn grammar() -> Vec<Pattern> {
    let g: Value = serde_json::from_str(
        &std::fs::read_to_string("editors/vscode/syntaxes/flowcast.tmLanguage.json").unwrap(),
    )
    .unwrap();
    assert_eq!(g["scopeName"], "source.flowcast");
    g["patterns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let name = p["include"].as_str().unwrap().trim_start_matches('#');
            let rule = &g["repository"][name];
            Pattern {
                scope: rule["name"].as_str().unwrap().to_string(),
                re: Regex::new(&format!("(?m){}", rule["match"].as_str().unwrap())).unwrap(),
            }
        })
        .collect()
}

/// The tokens of one line as (text, scope); an error names the first character no pattern
/// covers.
fn tokenize<'l, 'g>(
    grammar: &'g [Pattern],
    line: &'l str,
) -> Result<Vec<(&'l str, &'g str)>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < line.len() {
        let rest = &line[at..];
        let skip = rest.len() - rest.trim_start().len();
        if skip > 0 {
            at += skip;
            continue;
        }
        let best = grammar
            .iter()
            .filter_map(|p| p.re.find_at(line, at).map(|m| (m, p)))
            .filter(|(m, _)| !m.is_empty())
            .min_by_key(|(m, _)| m.start());
        match best {
            Some((m, p)) if m.start() == at => {
                out.push((m.as_str(), p.scope.as_str()));
                at = m.end();
            }
            _ => {
                return Err(format!(
                    "unknown token at column {}: {:?}",
                    at + 1,
                    rest.chars().next().unwrap()
                ))
            }
        }
    }
    Ok(out)
}

#[test]
fn the_grammar_tokenizes_every_model_and_fixture_without_an_unknown_token() {
    let g = grammar();
    let files =
        flowcast::model::collect_flow_files(&["models".into(), "tests/fixtures".into()]).unwrap();
    let mut checked = 0;
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        if flowcast::syntax::parse(0, &text).is_err() {
            continue;
        }
        for (n, line) in text.lines().enumerate() {
            if let Err(e) = tokenize(&g, line) {
                panic!("{}:{}: {e}\n{line}", f.display(), n + 1);
            }
        }
        checked += 1;
    }
    assert!(checked >= 25, "{checked}");
}

#[test]
fn the_grammar_gives_each_kind_of_token_its_scope() {
    let g = grammar();
    let line = r#"    on "x.start" and payload."a.b"[0] >= 1.5e3 -> s  # why"#;
    let tokens = tokenize(&g, line).unwrap();
    let scope_of = |t: &str| tokens.iter().find(|(x, _)| *x == t).map(|(_, s)| *s);
    assert_eq!(scope_of("on"), Some("keyword.control.flowcast"));
    assert_eq!(
        scope_of("\"x.start\""),
        Some("string.quoted.double.flowcast")
    );
    assert_eq!(scope_of("and"), Some("keyword.operator.word.flowcast"));
    assert_eq!(scope_of(">="), Some("keyword.operator.flowcast"));
    assert_eq!(scope_of("1.5e3"), Some("constant.numeric.flowcast"));
    assert_eq!(scope_of("->"), Some("keyword.operator.flowcast"));
    assert_eq!(scope_of("# why"), Some("comment.line.flowcast"));
    let tokens = tokenize(&g, "timeout x after 1h30m -> y").unwrap();
    assert!(
        tokens.contains(&("1h30m", "constant.numeric.duration.flowcast")),
        "{tokens:?}"
    );
    // A character the language has no use for is an unknown token.
    assert!(tokenize(&g, "on x ~ y").is_err());
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
