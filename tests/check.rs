//! `flowcast check` and the compiler's diagnostics: one fixture per error or warning, rendered
//! and snapshotted; the bundled models compile clean; hostile files get a diagnostic, not a panic.

mod common;

use common::flowcast;
use flowcast::diagnostic::render_human;
use flowcast::model::compile_files;
use std::path::Path;

fn render(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    let name = path.file_name().unwrap().to_string_lossy().to_string();
    let comp = compile_files([(name, bytes)]);
    let mut out = String::new();
    for (f, d) in &comp.diagnostics {
        out.push_str(&render_human(&comp.sources, *f, d));
        out.push('\n');
    }
    out
}

#[test]
fn every_fixture_renders_its_diagnostic() {
    insta::glob!("fixtures/check/*.flow", |path| {
        let out = render(path);
        // The fixture's name starts with the code it demonstrates: that code must be reported.
        let code = path.file_name().unwrap().to_string_lossy()[..4].to_string();
        assert!(
            out.contains(&format!("[{code}]")),
            "{} should report {code}:\n{out}",
            path.display()
        );
        insta::assert_snapshot!(out);
    });
}

#[test]
fn bundled_models_and_examples_compile_clean() {
    let mut dirs = vec!["models".to_string()];
    // examples/ holds event streams, and flows of its own where an example needs one.
    dirs.extend(
        flowcast::model::collect_flow_files(&["examples".into()])
            .unwrap()
            .iter()
            .map(|p| p.display().to_string()),
    );
    for dir in &dirs {
        let out = flowcast()
            .args(["check", "--deny-warnings", dir])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{dir}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn exit_codes_follow_the_documented_contract() {
    let fx = "tests/fixtures/check";
    let code = |args: &[&str]| flowcast().args(args).output().unwrap().status.code();
    assert_eq!(code(&["check", "models"]), Some(0));
    assert_eq!(
        code(&["check", &format!("{fx}/F006_unknown_state.flow")]),
        Some(1)
    );
    // Warnings alone pass, unless denied.
    assert_eq!(
        code(&["check", &format!("{fx}/W105_unused_state.flow")]),
        Some(0)
    );
    assert_eq!(
        code(&[
            "check",
            "--deny-warnings",
            &format!("{fx}/W105_unused_state.flow")
        ]),
        Some(1)
    );
    assert_eq!(code(&["check", "does/not/exist.flow"]), Some(2));
    assert_eq!(code(&["check", "--no-such-flag", "models"]), Some(2));
}

#[test]
fn a_directory_reports_every_problem_of_every_file() {
    let out = flowcast()
        .args(["check", "tests/fixtures/check"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    for entry in std::fs::read_dir("tests/fixtures/check").unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().to_string();
        if name.ends_with(".flow") {
            assert!(
                stderr.contains(&format!("[{}]", &name[..4])),
                "missing {name}"
            );
        }
    }
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn json_format_gives_positions_and_codes() {
    let out = flowcast()
        .args([
            "check",
            "--format",
            "json",
            "tests/fixtures/check/F006_unknown_state.flow",
        ])
        .output()
        .unwrap();
    let line = String::from_utf8(out.stdout).unwrap();
    let v: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert_eq!(v["code"], "F006");
    assert_eq!(v["severity"], "error");
    assert_eq!(v["line"], 6);
    assert_eq!(v["column"], 24);
    assert_eq!(v["help"], "did you mean `done`?");
}

#[test]
fn hostile_files_get_a_diagnostic_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.flow");
    std::fs::write(&big, "#".repeat(10 << 20)).unwrap();
    let deep = dir.path().join("deep.flow");
    std::fs::write(
        &deep,
        format!(
            "flow a {{ key k initial s on {}\"x\"{} -> s }}",
            "(".repeat(10_000),
            ")".repeat(10_000)
        ),
    )
    .unwrap();
    let nots = dir.path().join("nots.flow");
    std::fs::write(
        &nots,
        format!(
            "flow a {{ key k initial s on {}\"x\" -> s }}",
            "not ".repeat(10_000)
        ),
    )
    .unwrap();
    for (file, code) in [(&big, Some("F002")), (&deep, Some("F003")), (&nots, None)] {
        let out = flowcast().arg("check").arg(file).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(!stderr.contains("overflow"), "{stderr}");
        match code {
            Some(c) => {
                assert_eq!(out.status.code(), Some(1), "{stderr}");
                assert!(stderr.contains(c), "{stderr}");
            }
            None => assert_eq!(out.status.code(), Some(0), "{stderr}"),
        }
    }
}

#[test]
fn the_flows_shown_in_the_docs_compile() {
    for doc in ["README.md", "grammar/README.md"] {
        let text = std::fs::read_to_string(doc).unwrap();
        let blocks: Vec<&str> = text
            .split("```flow\n")
            .skip(1)
            .filter_map(|b| b.split("```").next())
            .filter(|b| b.trim_start().starts_with("flow ") || b.trim_start().starts_with('#'))
            .filter(|b| b.contains("flow ") && b.contains('{'))
            .collect();
        assert!(!blocks.is_empty(), "{doc} shows no complete flow");
        for b in blocks {
            let comp = compile_files([(doc.to_string(), b.as_bytes().to_vec())]);
            assert!(!comp.has_errors(), "{doc}:\n{}", comp.render());
        }
    }
}
