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
