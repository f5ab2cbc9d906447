//! Issue 15, item 2: `flowcast fmt` gives one canonical layout, keeps every comment, is
//! idempotent, and never changes what a file means: `fmt(fmt(x)) == fmt(x)` and
//! `compile(fmt(x)) == compile(x)` over the bundled models, every fixture, and generated flows.

mod common;

use common::flowcast;
use flowcast::model::compile_files;
use flowcast::syntax::format;
use proptest::prelude::*;

/// What a compilation means, without where things were written: the flows (origins and rule
/// lines cleared) and the codes of the diagnostics.
fn meaning(text: &str) -> String {
    let mut c = compile_files([("f.flow".to_string(), text.as_bytes().to_vec())]);
    for f in &mut c.flows {
        f.origin.clear();
        for r in &mut f.rules {
            r.line = 0;
        }
    }
    let codes: Vec<&str> = c.diagnostics.iter().map(|(_, d)| d.code.as_str()).collect();
    format!("{:?}\n{codes:?}", c.flows)
}

/// The comments of a text, in order (what fmt must keep).
fn comments(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let mut in_str = false;
            let b = l.as_bytes();
            let mut i = 0;
            while i < b.len() {
                match b[i] {
                    b'\\' if in_str => i += 1,
                    b'"' => in_str = !in_str,
                    b'#' if !in_str => return Some(l[i..].trim_end().to_string()),
                    b'/' if !in_str && b.get(i + 1) == Some(&b'/') => {
                        return Some(l[i..].trim_end().to_string())
                    }
                    _ => {}
                }
                i += 1;
            }
            None
        })
        .collect()
}

fn assert_fmt_keeps_meaning(name: &str, text: &str) {
    if meaning(text).contains("F002") {
        // Not a flow file at all (binary, too large): `fmt` refuses it as `check` does.
        return;
    }
    let Ok(once) = format(text) else {
        // A file that does not parse is refused, never rewritten.
        assert!(flowcast::syntax::parse(0, text).is_err(), "{name}");
        return;
    };
    let twice = format(&once)
        .unwrap_or_else(|d| panic!("{name}: fmt output does not parse: {d:?}\n{once}"));
    assert_eq!(twice, once, "{name}: not idempotent");
    assert_eq!(
        meaning(&once),
        meaning(text),
        "{name}: the meaning changed:\n{once}"
    );
    assert_eq!(
        comments(&once),
        comments(text),
        "{name}: comments lost or reordered:\n{once}"
    );
}

#[test]
fn bundled_models_are_formatted_and_fmt_check_says_so() {
    let out = flowcast()
        .args(["fmt", "--check", "models"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn fmt_keeps_the_meaning_of_every_model_fixture_and_doc_flow() {
    let mut files =
        flowcast::model::collect_flow_files(&["models".into(), "tests/fixtures".into()]).unwrap();
    files.sort();
    assert!(files.len() > 30);
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        assert_fmt_keeps_meaning(&f.display().to_string(), &text);
    }
    for doc in ["README.md", "grammar/README.md"] {
        let text = std::fs::read_to_string(doc).unwrap();
        for (i, block) in text
            .split("```flow\n")
            .skip(1)
            .filter_map(|b| b.split("```").next())
            .enumerate()
        {
            assert_fmt_keeps_meaning(&format!("{doc} block {i}"), block);
        }
    }
}

#[test]
fn fmt_check_lists_unformatted_files_and_fmt_rewrites_them() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.flow");
    let messy = "# the flow\nflow a{key payload.id  # key\ninitial s\non \"x\"->s}\n";
    std::fs::write(&file, messy).unwrap();
    let out = flowcast()
        .args(["fmt", "--check"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("a.flow"));
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        messy,
        "--check changes nothing"
    );
    let out = flowcast().arg("fmt").arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "# the flow\nflow a {\n    key payload.id  # key\n    initial s\n    on \"x\" -> s\n}\n"
    );
    let out = flowcast()
        .args(["fmt", "--check"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn fmt_refuses_a_file_with_a_syntax_error_and_leaves_it_alone() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.flow");
    std::fs::write(&file, "flow a { keys payload.id }").unwrap();
    let out = flowcast().arg("fmt").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("error[F001]"));
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "flow a { keys payload.id }"
    );
}

#[test]
fn fmt_refuses_a_binary_file_as_check_does() {
    let out = flowcast()
        .args(["fmt", "--check", "tests/fixtures/check/F002_binary.flow"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("error[F002]"));
}

#[test]
fn fmt_of_stdin_writes_stdout() {
    use std::io::Write;
    let mut child = flowcast()
        .args(["fmt", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"flow a{initial s}")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "flow a {\n    initial s\n}\n"
    );
}

// ---- generated flows

fn name() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["s0", "s1", "s2", "done", "failed", "hung"]).prop_map(String::from)
}

fn string_lit() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        r#""x.start""#,
        r#""x.*""#,
        r#""a \"quoted\" b""#,
        r#""tab\there""#,
        r#""back\\slash""#,
        r#""é ü""#,
        r##""# not a comment""##,
        r#""// nor this""#,
    ])
    .prop_map(String::from)
}

fn path() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "payload.id",
        "payload.\"nova_object.data\".uuid",
        "payload.list[0].x",
        "event_type",
        "payload.state",
        "priority",
        "\"odd key\".x",
    ])
    .prop_map(String::from)
}

fn literal() -> impl Strategy<Value = String> {
    prop_oneof![
        string_lit(),
        prop::sample::select(vec![
            "1", "0.30", "-2.5e3", "1e999", "true", "false", "null", "007"
        ])
        .prop_map(String::from),
    ]
}

fn atom() -> impl Strategy<Value = String> {
    prop_oneof![
        string_lit(),
        (
            path(),
            prop::sample::select(vec!["==", "!=", "<", ">=", "<=", ">"]),
            literal()
        )
            .prop_map(|(p, o, l)| format!("{p} {o} {l}")),
        (
            path(),
            prop::collection::vec(literal(), 1..6),
            any::<bool>()
        )
            .prop_map(|(p, l, n)| format!(
                "{p} {}in [{}]",
                if n { "not " } else { "" },
                l.join(", ")
            )),
        (path(), any::<bool>())
            .prop_map(|(p, n)| format!("{p} {}exists", if n { "not " } else { "" })),
        (path(), string_lit()).prop_map(|(p, s)| format!("{p} =~ {s}")),
        (path(), string_lit()).prop_map(|(p, s)| format!("{p} not glob {s}")),
    ]
}

fn expr() -> impl Strategy<Value = String> {
    atom().prop_recursive(4, 24, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 2..4).prop_map(|v| v.join(" and ")),
            prop::collection::vec(inner.clone(), 2..4).prop_map(|v| v.join(" or ")),
            inner.clone().prop_map(|e| format!("({e})")),
            inner.clone().prop_map(|e| format!("not {e}")),
            inner.prop_map(|e| format!("not ({e})")),
        ]
    })
}

/// Space between tokens: blanks, newlines, and now and then a comment.
fn gap() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        " ",
        " ",
        "\n    ",
        "\n\n    ",
        "  # a comment\n    ",
        "\n    // another\n    ",
        "\t",
    ])
    .prop_map(String::from)
}

fn item() -> impl Strategy<Value = String> {
    prop_oneof![
        (name(), prop::option::of(string_lit())).prop_map(|(n, l)| format!("state {n} {}", l.unwrap_or_default())),
        (expr(), name()).prop_map(|(e, n)| format!("on {e} -> {n}")),
        prop::collection::vec((name(), name(), prop::sample::select(vec!["5", "0.5", "10", "1h"])), 0..4)
            .prop_map(|ts| format!(
                "transitions {{ {} }}",
                ts.iter().map(|(a, b, c)| format!("{a} -> {b} {c}")).collect::<Vec<_>>().join("\n")
            )),
        (name(), prop::sample::select(vec!["90s", "5m", "1h30m", "250ms", "-5m", "0s"]), name())
            .prop_map(|(a, d, b)| format!("timeout {a} after {d} -> {b}")),
        prop::sample::select(vec![
            "learn { half_life 3d prior_weight 1.0 model auto }",
            "alert { threshold 0.30 resolve 0.2 for failed { severity critical } severity warning }",
            "anomaly off",
            "anomaly { window 5 }",
            "unlisted report",
            "description \"a \\\"flow\\\"\"",
            "match payload.kind == \"x\"",
            "key payload.id | payload.\"nova_object.data\".uuid",
        ])
        .prop_map(String::from),
    ]
}

fn flow_text() -> impl Strategy<Value = String> {
    (prop::collection::vec((item(), gap()), 1..12), gap()).prop_map(|(items, g)| {
        let mut s = String::from("# generated\nflow g {\n    initial s0\n    ");
        for (it, gap) in items {
            s.push_str(&it);
            s.push_str(&gap);
        }
        s.push_str(&g);
        s.push_str("}\n");
        s
    })
}

proptest! {
    #![proptest_config(common::proptest_config(256))]

    #[test]
    fn generated_flows_keep_their_meaning_and_comments(text in flow_text()) {
        // The generator writes only what parses: every case exercises the formatter.
        prop_assert!(format(&text).is_ok(), "{}", text);
        assert_fmt_keeps_meaning("generated", &text);
    }
}

/// Token soup: the words, symbols and non-ASCII characters of flow files in random order.
fn soup() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec![
            "flow",
            "a",
            "{",
            "}",
            "on",
            "->",
            "-",
            ">",
            "\"x.y\"",
            "instance.resize.start",
            "transitions",
            "learn",
            "alert",
            "for",
            "state",
            "initial",
            "keys",
            "key",
            "30",
            "min",
            "5m",
            " ",
            "\n",
            "# c\n",
            "// d\n",
            "→",
            "“",
            "é",
            "(",
            ")",
            "[",
            "]",
            ",",
            "==",
            "=",
            "and",
            "not",
            "in",
            "timeout",
            "after",
            "\"",
            "\\",
            "0.5",
            "payload.x",
        ]),
        0..40,
    )
    .prop_map(|v| v.join(" "))
}

proptest! {
    #![proptest_config(common::proptest_config(512))]

    /// No input makes check's hints or fmt panic (the words around an error are read from
    /// the text, where a multi-byte character must not be cut).
    #[test]
    fn no_input_panics_check_or_fmt(text in prop_oneof![soup(), any::<String>()]) {
        let _ = compile_files([("f.flow".to_string(), text.as_bytes().to_vec())]);
        if let Ok(once) = format(&text) {
            prop_assert_eq!(format(&once).ok(), Some(once.clone()));
        }
    }
}

#[test]
fn a_non_ascii_character_before_an_arrow_is_no_panic() {
    for text in [
        "flow a { initial s on x→ -> s }",
        "flow a { on “x” -> s }",
        "flow a { transitions é{ keys }",
    ] {
        let _ = compile_files([("f.flow".to_string(), text.as_bytes().to_vec())]);
    }
}
