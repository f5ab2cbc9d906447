//! Helpers shared by the integration tests: the real binary, nothing mocked.
#![allow(dead_code)]

use std::process::Command;

/// The `flowcast` binary built by cargo for this test run, run from the crate root.
pub fn flowcast() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_flowcast"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c.env("RUST_LOG", "warn");
    c
}

/// Compiles flow source text, panicking with the rendered diagnostics on an error.
pub fn compile(src: &str) -> Vec<flowcast::model::CompiledFlow> {
    let c = flowcast::model::compile_files([("test.flow".to_string(), src.as_bytes().to_vec())]);
    assert!(!c.has_errors(), "{}", c.render());
    c.flows
}

/// A message at `t` seconds after 2026-01-01T00:00:00Z.
pub fn msg(event_type: &str, key: &str, t: f64) -> flowcast::engine::message::Message {
    let v = serde_json::json!({
        "event_type": event_type,
        "timestamp": 1_767_225_600.0 + t,
        "payload": {"id": key},
    });
    flowcast::engine::message::from_value(v).unwrap()
}
