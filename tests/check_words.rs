//! Issue 15, item 6: the words `check` uses where a new user stumbled. Each case is a mistake
//! seen in practice; the test names the help that must now come with it.

mod common;

use common::flowcast;
use flowcast::model::compile_files;

/// The rendered diagnostics of one flow text.
fn check(src: &str) -> String {
    let comp = compile_files([("t.flow".to_string(), src.as_bytes().to_vec())]);
    comp.render()
}

#[test]
fn an_unclosed_inner_block_is_named_where_the_next_item_starts() {
    let out = check(
        "flow a {\n    key payload.id\n    initial s\n    terminal t\n    on \"x\" -> s\n    transitions {\n        s -> t 5\n    unlisted report\n}\n",
    );
    assert!(out.contains("found `unlisted`"), "{out}");
    assert!(
        out.contains("t.flow:6:17"),
        "the open brace is pointed at:\n{out}"
    );
    assert!(
        out.contains("this `transitions {` is still open"),
        "the open block is named:\n{out}"
    );
    assert!(
        out.contains("help: close `transitions {` with `}` before `unlisted`"),
        "{out}"
    );
}

#[test]
fn an_unquoted_event_type_before_an_arrow_suggests_quotes() {
    let out = check(
        "flow a {\n    key payload.id\n    initial s\n    on instance.resize.start -> s\n}\n",
    );
    assert!(
        out.contains(
            r#"help: an event type is matched by a string: `on "instance.resize.start" -> ...`"#
        ),
        "{out}"
    );
}

#[test]
fn a_number_and_a_unit_apart_suggest_the_duration_written_together() {
    let out = check(
        "flow a {\n    key payload.id\n    initial s\n    artifact x\n    on \"a\" -> s\n    timeout s after 30 min -> x\n}\n",
    );
    assert!(
        out.contains("help: write a duration without a space: `30m`"),
        "{out}"
    );
    let out = check(
        "flow a {\n    key payload.id\n    initial s\n    on \"a\" -> s\n    learn { expire 2 hours }\n}\n",
    );
    assert!(
        out.contains("help: write a duration without a space: `2h`"),
        "{out}"
    );
}

#[test]
fn a_misspelled_item_keyword_gets_a_did_you_mean() {
    let out = check("flow a {\n    keys payload.id\n    initial s\n    on \"a\" -> s\n}\n");
    assert!(out.contains("help: did you mean `key`?"), "{out}");
    // The caret covers the whole word.
    assert!(out.contains("  |     ^^^^\n"), "{out}");
    let out = check("flwo a {\n    key payload.id\n    initial s\n}\n");
    assert!(out.contains("help: did you mean `flow`?"), "{out}");
}

#[test]
fn the_gutter_lines_up_for_one_digit_line_numbers() {
    let out = check(
        "flow a {\n    key payload.id\n    initial s\n    terminal done\n    on \"a\" -> doen\n}\n",
    );
    // rustc's layout: the arrow, the bars and the `=` of help all line up with the gutter.
    let expected = "error[F006]: unknown state `doen`\n --> t.flow:5:15\n  |\n5 |     on \"a\" -> doen\n  |               ^^^^\n  = help: did you mean `done`?\n";
    assert!(out.starts_with(expected), "{out}");
}

#[test]
fn the_gutter_lines_up_for_two_digit_line_numbers() {
    let src = format!(
        "flow a {{\n    key payload.id\n    initial s\n    terminal done\n{}    on \"a\" -> doen\n}}\n",
        "    # padding\n".repeat(7)
    );
    let out = check(&src);
    assert!(out.contains("\n  --> t.flow:12:15\n   |\n12 |"), "{out}");
    assert!(out.contains("\n   = help:"), "{out}");
}

#[test]
fn json_check_of_clean_files_prints_a_summary_object() {
    let out = flowcast()
        .args(["check", "--format", "json", "models"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let last: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("a line")).unwrap();
    assert_eq!(last["type"], "summary");
    assert_eq!(last["errors"], 0);
    assert_eq!(last["warnings"], 0);
    let files = flowcast::model::collect_flow_files(&["models".into()])
        .unwrap()
        .len();
    assert_eq!(last["files"], files);
    assert!(last["flows"].as_u64().unwrap() >= files as u64, "{last}");
}

#[test]
fn json_check_lines_say_what_they_are() {
    let out = flowcast()
        .args([
            "check",
            "--format",
            "json",
            "tests/fixtures/check/F006_unknown_state.flow",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["type"], "diagnostic");
    assert_eq!(lines[0]["code"], "F006");
    assert_eq!(lines.last().unwrap()["type"], "summary");
    assert_eq!(lines.last().unwrap()["errors"], 1);
}
