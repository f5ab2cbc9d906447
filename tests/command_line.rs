//! Issue 15, item 7: the command line as operators expect: shell completions and man pages
//! generated from the parser's own definition, an example systemd unit, and a README whose
//! command table renders whole.

mod common;

use common::flowcast;
use std::io::Read;
use std::process::Stdio;

#[test]
fn completions_for_each_shell_name_every_subcommand() {
    for shell in ["bash", "zsh", "fish"] {
        let out = flowcast().args(["completions", shell]).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{shell}");
        let script = String::from_utf8(out.stdout).unwrap();
        for sub in [
            "check",
            "test",
            "fmt",
            "replay",
            "run",
            "man",
            "completions",
        ] {
            assert!(script.contains(sub), "{shell} completion lacks `{sub}`");
        }
    }
    let out = flowcast().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn bash_completion_is_valid_bash() {
    let out = flowcast().args(["completions", "bash"]).output().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flowcast.bash");
    std::fs::write(&file, &out.stdout).unwrap();
    let check = std::process::Command::new("bash")
        .arg("-n")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

#[test]
fn a_reader_that_goes_away_is_not_a_panic() {
    let mut child = flowcast()
        .args(["completions", "zsh"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close the pipe at once: the writer meets a broken pipe.
    drop(child.stdout.take());
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    child.wait().unwrap();
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn the_man_page_is_roff_and_out_dir_writes_a_page_per_command() {
    let out = flowcast().arg("man").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(page.contains(".TH flowcast 1"), "{page}");
    assert!(page.contains("flowcast\\-fmt(1)"), "{page}");
    let dir = tempfile::tempdir().unwrap();
    let out = flowcast()
        .args(["man", "--out-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    for page in [
        "flowcast.1",
        "flowcast-check.1",
        "flowcast-test.1",
        "flowcast-fmt.1",
    ] {
        assert!(dir.path().join(page).exists(), "{page}");
    }
}

#[test]
fn the_readme_command_table_is_one_table_that_names_every_command() {
    let readme = std::fs::read_to_string("README.md").unwrap();
    let start = readme
        .find("| command | what it does |")
        .expect("the table");
    let table: Vec<&str> = readme[start..]
        .lines()
        .take_while(|l| l.starts_with('|'))
        .collect();
    for cmd in [
        "check",
        "test",
        "fmt",
        "graph",
        "model",
        "replay",
        "discover",
        "simulate",
        "eval",
        "run",
        "publish",
        "lsp",
        "completions",
        "man",
    ] {
        assert!(
            table
                .iter()
                .any(|l| l.starts_with(&format!("| `flowcast {cmd}"))),
            "`flowcast {cmd}` is not a row of the table (a blank line cuts a markdown table)"
        );
    }
}

#[test]
fn the_example_systemd_unit_runs_flowcast_with_hardening() {
    let unit = std::fs::read_to_string("examples/flowcast.service").unwrap();
    for line in [
        "ExecStart=/usr/local/bin/flowcast run --config /etc/flowcast/flowcast.yaml",
        "DynamicUser=yes",
        "StateDirectory=flowcast",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(unit.lines().any(|l| l == line), "missing `{line}`");
    }
    // If systemd's own checker is there, the unit passes it.
    if let Ok(out) = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(std::fs::canonicalize("examples/flowcast.service").unwrap())
        .output()
    {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !err.contains("Unknown key") && !err.contains("Unknown section"),
            "{err}"
        );
    }
}
