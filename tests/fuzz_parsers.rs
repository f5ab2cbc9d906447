//! A short, bounded fuzz of the four parsers users feed (flow files, JSON messages with the
//! projection, CSV logs, the YAML configuration), run with every `cargo test`. It checks the
//! same properties as the cargo-fuzz targets (`fuzz/checks.rs`), on arbitrary bytes and on
//! mutations of valid inputs (the kept corpus, `fuzz/corpus/<target>/`), with a fixed seed
//! (printed; `PROPTEST_RNG_SEED` overrides it). Every crash a fuzzer found is a test below.
//! The long run is cargo-fuzz's (BENCHMARKS.md).

mod common;

#[path = "../fuzz/checks.rs"]
mod checks;

use proptest::prelude::*;
use std::path::Path;

/// The kept corpus of a target: the valid inputs the mutations start from.
fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let inputs: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    assert!(!inputs.is_empty(), "{} is empty", dir.display());
    inputs
}

/// One edit of an input.
#[derive(Debug, Clone)]
enum Edit {
    /// Replace the byte at a position.
    Set(prop::sample::Index, u8),
    /// Insert a token of the target's dictionary.
    Token(prop::sample::Index, prop::sample::Index),
    /// Delete up to `len` bytes.
    Delete(prop::sample::Index, usize),
    /// Copy up to `len` bytes from one position to another.
    Copy(prop::sample::Index, usize, prop::sample::Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    let at = any::<prop::sample::Index>;
    prop_oneof![
        (at(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        (at(), at()).prop_map(|(i, t)| Edit::Token(i, t)),
        (at(), 1usize..64).prop_map(|(i, n)| Edit::Delete(i, n)),
        (at(), 1usize..256, at()).prop_map(|(i, n, j)| Edit::Copy(i, n, j)),
    ]
}

fn apply(mut data: Vec<u8>, edits: &[Edit], tokens: &[&str]) -> Vec<u8> {
    for e in edits {
        let pos = |i: &prop::sample::Index, data: &Vec<u8>| i.index(data.len() + 1);
        match e {
            Edit::Set(i, b) if !data.is_empty() => {
                let p = i.index(data.len());
                data[p] = *b;
            }
            Edit::Set(..) => {}
            Edit::Token(i, t) => {
                let p = pos(i, &data);
                let tok = tokens[t.index(tokens.len())].as_bytes();
                data.splice(p..p, tok.iter().copied());
            }
            Edit::Delete(i, n) => {
                let p = pos(i, &data);
                let end = (p + n).min(data.len());
                data.drain(p..end);
            }
            Edit::Copy(i, n, j) => {
                let p = pos(i, &data);
                let end = (p + n).min(data.len());
                let piece = data[p..end].to_vec();
                let q = pos(j, &data);
                data.splice(q..q, piece);
            }
        }
    }
    data
}

/// Inputs for a target: arbitrary bytes, arbitrary text of the target's tokens, or a kept
/// input with a few edits.
fn inputs(target: &str, tokens: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
    let seeds = corpus(target);
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..512),
        1 => prop::collection::vec(prop::sample::select(tokens), 0..64)
            .prop_map(|t| t.concat().into_bytes()),
        6 => (prop::sample::select(seeds), prop::collection::vec(edit(), 1..8))
            .prop_map(move |(seed, edits)| apply(seed, &edits, tokens)),
    ]
}

const FLOW_TOKENS: &[&str] = &[
    "flow f {",
    "}",
    "{",
    "->",
    "\"",
    "\\",
    "\\u{110000}",
    "\\u{",
    "initial ",
    "state ",
    "terminal ",
    "artifact ",
    "on ",
    "timeout ",
    " after ",
    "transitions {",
    "learn {",
    "alert {",
    "for ",
    "key ",
    "payload.",
    "[0]",
    "==",
    "=~",
    "glob",
    "in [",
    "]",
    "not ",
    "exists",
    "1e999",
    "-0",
    "0ms",
    "99999999999999999999d",
    "1.5",
    "#",
    "\n",
    " ",
    "unlisted ",
    "threshold ",
    "history ",
    "features on",
    "calendar week",
    "expire ",
];

const JSON_TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    "\"",
    "\\",
    "\\ud800",
    "\\u0000",
    "1e400",
    "-0",
    "null",
    "true",
    "\"timestamp\":",
    "\"oslo.message\":",
    "\"event_type\":",
    "\"message_id\":",
    "\"payload\":",
    "\"9999-12-31T23:59:59Z\"",
    "\"2020-02-31 00:00:00\"",
    "1e15",
    "-1",
    "\"oslo.version\": \"2.0\"",
    "\n",
    "\u{feff}",
    "\"instance_id\":",
    "\"volume_id\":",
];

const CSV_TOKENS: &[&str] = &[
    "CaseID,ActivityID,CompleteTimestamp\n",
    "\"",
    ",",
    "\n",
    "\r\n",
    "\r",
    "\"\"",
    "2011-11-05 1:05:01",
    "2020-02-29T10:00:00Z",
    "2020-02-31 00:00:00",
    "+99:99",
    "1,",
    "a,",
    "\u{feff}",
    " ",
    "9999-12-31 23:59:59",
    "1970-01-01 00:00:00",
];

const YAML_TOKENS: &[&str] = &[
    ":",
    "\n",
    "\n  ",
    "- ",
    "{",
    "}",
    "[",
    "]",
    ",",
    "&a ",
    "*a",
    "!!binary ",
    "<<: *a",
    "kind: ",
    "mode: ",
    "0",
    "30",
    "30s",
    "~",
    "'",
    "\"",
    "#",
    "source:",
    "sinks:",
    "clock:",
    "nats:",
    "http:",
    "jetstream",
    "webhook",
    "event",
    "wall",
    "idle_after_ms: ",
    "lateness_ms: ",
    "snapshot_interval_ms: ",
    "batch_size: ",
    "? ",
    "---\n",
    "...\n",
    "\t",
];

proptest! {
    #![proptest_config(common::proptest_config(256))]

    #[test]
    fn flow_files(data in inputs("flow", FLOW_TOKENS)) {
        checks::flow(&data);
    }

    #[test]
    fn json_messages_through_the_projection(data in inputs("json", JSON_TOKENS)) {
        checks::json(&data);
    }

    #[test]
    fn csv_logs(data in inputs("csv", CSV_TOKENS)) {
        checks::csv(&data);
    }

    #[test]
    fn yaml_configuration(data in inputs("yaml", YAML_TOKENS)) {
        checks::yaml(&data);
    }
}

#[test]
fn the_kept_corpus_passes() {
    for (target, check) in [
        ("flow", checks::flow as fn(&[u8])),
        ("json", checks::json),
        ("csv", checks::csv),
        ("yaml", checks::yaml),
    ] {
        for input in corpus(target) {
            check(&input);
        }
    }
}

/// Every input a fuzzer crashed on, kept in `fuzz/regressions/<target>/` as it was found.
/// - json/crash-baff1253...: a stacktach `compute.instance.update` whose `instance_id` has the
///   UUID's 36 bytes and four dashes in place and a fifth one (`...-beb1-3b90-6685257`): the
///   key parser read past the end (index out of bounds), which stopped the service on one
///   message (cargo-fuzz, json target, within 5 minutes).
#[test]
fn the_crashes_the_fuzzers_found_stay_fixed() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut seen = 0;
    for (target, check) in [
        ("flow", checks::flow as fn(&[u8])),
        ("json", checks::json),
        ("csv", checks::csv),
        ("yaml", checks::yaml),
    ] {
        let Ok(entries) = std::fs::read_dir(dir.join(target)) else {
            continue;
        };
        for e in entries {
            check(&std::fs::read(e.unwrap().path()).unwrap());
            seen += 1;
        }
    }
    assert!(seen >= 1, "the regressions are in {}", dir.display());
}

/// The json crash through the binary: `replay` reads the message, counts it, and exits 0.
#[test]
fn replay_survives_the_uuid_like_key_with_a_fifth_dash() {
    let input = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions/json/crash-baff12536ea407833b2d4e541c0e7a8bdeb71e87");
    common::run_ok(
        common::flowcast()
            .args(["replay", "--models", "models"])
            .arg(&input),
    );
}
