//! A NATS sink that publishes where the source reads makes flowcast read its own records back
//! (found by bench/soak.sh: every record came back as an unmatched message, so the counts no
//! longer matched what was published). Such a configuration is refused at start (exit 1, like
//! any configuration error), with the subjects named; a sink outside them is accepted.

mod common;

use common::*;

fn check_config(source_subjects: &str, sink: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flowcast.yaml");
    std::fs::write(
        &path,
        format!(
            "models: models\nsource: {{ kind: jetstream, stream: S, subjects: {source_subjects} }}\n\
             nats: {{ url: \"nats://127.0.0.1:4222\" }}\nsinks: [{sink}]\n"
        ),
    )
    .unwrap();
    flowcast()
        .args(["run", "--check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap()
}

#[test]
fn a_nats_sink_inside_the_source_subjects_is_refused() {
    for (subjects, sink) in [
        (r#"["soak.>"]"#, "{ kind: nats, prefix: soak.alerts }"),
        (r#"[">"]"#, "{ kind: nats }"),
        (r#"["flowcast.*.*"]"#, "{ kind: nats }"),
        (r#"["a.b", "flowcast.alerts.*"]"#, "{ kind: nats }"),
    ] {
        let out = check_config(subjects, sink);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{subjects} / {sink}: {err}");
        assert!(
            err.contains("reads its own records"),
            "{subjects} / {sink}: {err}"
        );
    }
}

#[test]
fn a_nats_sink_outside_the_source_subjects_is_accepted() {
    for (subjects, sink) in [
        (r#"["soak.>"]"#, "{ kind: nats }"),
        (r#"["flowcast.alerts"]"#, "{ kind: nats }"),
        (r#"["flowcast.*"]"#, "{ kind: nats }"),
        (r#"["flowcast.alerts.x.>"]"#, "{ kind: nats }"),
        (r#"["flowcast.other.>"]"#, "{ kind: nats }"),
    ] {
        let out = check_config(subjects, sink);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{subjects} / {sink}: {err}");
    }
}
