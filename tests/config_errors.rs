//! Errors in `flowcast.yaml` point at what is wrong: the line and column of the bad key or
//! value, also inside `source`, `sinks` and `clock` (whose `kind`/`mode` decides which settings
//! exist), and a duration given as a bare number says what a duration looks like.

mod common;

use common::flowcast;
use flowcast::service::config::{Clock, Config};

/// A realistic file: comments, then settings, with the line to vary at `{}`.
fn file(line: &str) -> String {
    format!(
        "# flowcast configuration\n\
         # (line 2)\n\
         \n\
         models: models\n\
         state_dir: /var/lib/flowcast\n\
         source:\n  \
           kind: jetstream\n  \
           stream: NOTIFICATIONS\n  \
           subjects: [\"notifications.>\"]\n\
         nats:\n  \
           url: nats://127.0.0.1:4222\n\
         sinks:\n  \
           - kind: stdout\n  \
           - kind: webhook\n    \
             url: http://127.0.0.1:9000/hook\n\
         clock:\n  \
           mode: wall\n\
         {line}\n"
    )
}

fn error(text: &str) -> String {
    Config::parse(text).expect_err("the configuration is refused")
}

/// The `line:column` an error starts with.
fn position(e: &str) -> (usize, usize) {
    let mut parts = e.splitn(3, ':');
    let line = parts.next().unwrap().trim().parse().unwrap_or(0);
    let col = parts.next().unwrap().trim().parse().unwrap_or(0);
    (line, col)
}

#[test]
fn the_base_file_is_valid() {
    let c = Config::parse(&file("batch_size: 256")).unwrap();
    assert_eq!(c.batch_size, 256);
}

#[test]
fn a_misspelt_key_inside_clock_is_reported_at_its_own_line() {
    // Line 17 is `  mode: wall`; the misspelt key comes right after it.
    let text = file("").replace("  mode: wall\n", "  mode: wall\n  latenes_ms: 5s\n");
    let e = error(&text);
    assert_eq!(position(&e), (18, 3), "{e}");
    assert!(e.contains("unknown field `latenes_ms`"), "{e}");
    assert!(
        e.contains("lateness_ms"),
        "names the settings there are: {e}"
    );
}

#[test]
fn a_bare_number_for_a_duration_is_reported_at_the_value_and_says_what_a_duration_is() {
    let e = error(&file("snapshot_interval_ms: 30"));
    assert_eq!(position(&e), (18, 23), "{e}");
    assert!(e.contains("`30` has no unit"), "{e}");
    assert!(e.contains("`30s`"), "{e}");
    let e = error(&file("").replace("stream: NOTIFICATIONS", "ack_wait_ms: 5"));
    assert_eq!(position(&e), (8, 16), "{e}");
    assert!(e.contains("`5` has no unit"), "{e}");
}

#[test]
fn an_unquoted_zero_means_never_for_idle_after() {
    for text in [
        "clock: { mode: event, idle_after_ms: 0 }\n",
        "clock:\n  mode: event\n  idle_after_ms: 0\n",
        "clock: { mode: event, idle_after_ms: \"0\" }\n",
    ] {
        let c = Config::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert!(
            matches!(
                c.clock,
                Clock::Event {
                    idle_after_ms: 0,
                    ..
                }
            ),
            "{text}"
        );
    }
    let c = Config::parse("clock: { mode: event }\n").unwrap();
    assert!(matches!(
        c.clock,
        Clock::Event {
            idle_after_ms: 10_000,
            max_future_ms: 300_000,
        }
    ));
    // Zero is not a lateness nor a snapshot interval.
    let e = error("snapshot_interval_ms: 0s\n");
    assert!(e.starts_with("1:23:"), "{e}");
    assert!(e.contains("not a positive duration"), "{e}");
}

#[test]
fn errors_inside_a_list_of_sinks_point_at_the_sink() {
    let e = error(&file("").replace("url: http://127.0.0.1:9000/hook", "uri: http://x"));
    assert_eq!(position(&e), (15, 5), "{e}");
    assert!(e.contains("unknown field `uri`"), "{e}");
    // A setting that exists, but not for this kind: the sink's own mapping.
    let e = error(&file("").replace("- kind: stdout", "- kind: stdout\n    prefix: x"));
    assert_eq!(position(&e).0, 13, "{e}");
    assert!(
        e.contains("`prefix` is not a setting of a `stdout` sink"),
        "{e}"
    );
    let e = error("sinks:\n  - kind: webhook\n");
    assert_eq!(position(&e).0, 2, "{e}");
    assert!(e.contains("needs a `url`"), "{e}");
    let e = error("sinks:\n  - kind: pager\n");
    assert_eq!(position(&e), (2, 11), "{e}");
    assert!(e.contains("unknown variant `pager`"), "{e}");
}

#[test]
fn a_setting_of_another_kind_of_source_is_named() {
    let e = error(&file("").replace("stream: NOTIFICATIONS", "stream: N\n  path: x.jsonl"));
    assert_eq!(position(&e).0, 7, "{e}");
    assert!(
        e.contains("`path` is not a setting of a `jetstream` source"),
        "{e}"
    );
    let e = error("source: { kind: jetstream }\n");
    assert_eq!(position(&e), (1, 9), "{e}");
    assert!(e.contains("needs a `stream`"), "{e}");
    let e = error("source:\n  stream: S\n");
    assert_eq!(position(&e).0, 2, "{e}");
    assert!(e.contains("missing field `kind`"), "{e}");
}

#[test]
fn the_error_texts_read_well() {
    let cases = [
        file("").replace("  mode: wall\n", "  mode: wall\n  latenes_ms: 5s\n"),
        file("snapshot_interval_ms: 30"),
        "clock: { mode: wall, lateness_ms: 0 }\n".to_string(),
        "clock: { mode: sundial }\n".to_string(),
        "clock: { mode: event, lateness_ms: 1s }\n".to_string(),
        "source: { kind: file }\n".to_string(),
        "sinks: [{ kind: alertmanager, url: http://a, generator: x }]\n".to_string(),
        "batch_size: lots\n".to_string(),
    ];
    let text: Vec<String> = cases.iter().map(|c| error(c)).collect();
    insta::assert_snapshot!(text.join("\n"));
}

#[test]
fn run_check_config_prints_the_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("flowcast.yaml");
    std::fs::write(&conf, file("snapshot_interval_ms: 30")).unwrap();
    let out = flowcast()
        .args(["run", "--check-config", "--config"])
        .arg(&conf)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("{}:18:23: ", conf.display())),
        "{err}"
    );
}

#[test]
fn the_bundled_example_configuration_parses() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/flowcast.yaml");
    let c = Config::load(&path).unwrap();
    assert_eq!(c.snapshot_interval_ms, 30_000);
    assert!(matches!(
        c.clock,
        Clock::Wall {
            lateness_ms: 2_000,
            max_future_ms: 300_000
        }
    ));
    // OpenStack's bus: RabbitMQ, read with flowcast's own queue (docs/openstack.md).
    let flowcast::service::config::Source::Amqp(a) = &c.source else {
        panic!("the example reads RabbitMQ: {:?}", c.source)
    };
    assert_eq!(a.prefetch, 20_000);
    assert_eq!(a.queue, "flowcast");
    assert!(a.exchanges.iter().any(|e| e == "nova"));
    assert_eq!(c.learning, flowcast::service::config::Learning::Live);
    assert_eq!(c.sinks.len(), 3);
}
