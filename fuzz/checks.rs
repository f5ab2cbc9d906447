//! The properties the fuzzers check, one function per parser users feed. Shared by the
//! cargo-fuzz targets (`fuzz/fuzz_targets/`) and the bounded proptest run in `cargo test`
//! (`tests/fuzz_parsers.rs`), so that both check the same thing. Each function must never
//! panic on any input; where there is more to say than "no panic", it asserts it.
#![allow(dead_code)]

use flowcast::engine::message::{decode, decode_projected};
use flowcast::engine::projection::Projection;
use flowcast::engine::Engine;
use flowcast::eval::discover::{self, RenderOptions};
use flowcast::eval::log::{for_each_row, CsvColumns};
use flowcast::model::CompiledFlow;
use flowcast::service::config::Config;
use std::sync::OnceLock;

/// The bundled flows, which the JSON check decodes messages for.
pub const MODELS: [&str; 4] = [
    include_str!("../models/nova_instance_create.flow"),
    include_str!("../models/nova_volume_attach.flow"),
    include_str!("../models/patent_disk_attach.flow"),
    include_str!("../models/legacy_compute_instance.flow"),
];

fn bundled() -> &'static [CompiledFlow] {
    static FLOWS: OnceLock<Vec<CompiledFlow>> = OnceLock::new();
    FLOWS.get_or_init(|| {
        let comp = flowcast::model::compile_files(
            MODELS
                .iter()
                .enumerate()
                .map(|(i, m)| (format!("m{i}.flow"), m.as_bytes().to_vec())),
        );
        assert!(!comp.has_errors(), "{}", comp.render());
        comp.flows
    })
}

/// Flow files: syntax and compile never panic, the diagnostics render, and a flow that
/// compiles can be run (an engine built, its projection derived).
pub fn flow(data: &[u8]) {
    let comp = flowcast::model::compile_files([("fuzz.flow".to_string(), data.to_vec())]);
    let _ = comp.render();
    if !comp.has_errors() && !comp.flows.is_empty() {
        let _ = Projection::for_flows(&comp.flows);
        let _ = Engine::new(comp.flows);
    }
}

/// JSON messages, one per line: decoding through the bundled flows' projection agrees with
/// decoding the whole message. What the whole decode accepts, the projection accepts; the
/// time and id are the same; and an engine fed the projected messages gives the same records
/// and counters as one fed the whole messages.
pub fn json(data: &[u8]) {
    let flows = bundled();
    let projection = Projection::for_flows(flows);
    let mut whole = Engine::new(flows.to_vec());
    let mut projected = Engine::new(flows.to_vec());
    let (mut out_whole, mut out_projected) = (Vec::new(), Vec::new());
    for line in data.split(|b| *b == b'\n') {
        let full = decode(line);
        let part = decode_projected(line, &projection);
        match (&full, &part) {
            (Ok(f), Ok(p)) => {
                assert_eq!(
                    f.time_ms,
                    p.time_ms,
                    "time of {:?}",
                    String::from_utf8_lossy(line)
                );
                assert_eq!(f.message_id, p.message_id);
                whole.observe(f, &mut out_whole);
                projected.observe(p, &mut out_projected);
            }
            (Ok(_), Err(e)) => panic!(
                "the projection refuses what the whole decode accepts: {e}: {:?}",
                String::from_utf8_lossy(line)
            ),
            // A message refused whole but read through the projection differs only in a part
            // no flow reads (which the projection skips without reading it all); it is not
            // compared.
            (Err(_), _) => {}
        }
    }
    assert_eq!(out_whole, out_projected);
    assert_eq!(whole.stats, projected.stats);
}

/// CSV process logs: reading never panics; a log `discover` reads gives a flow that passes
/// `check`; and on text without quotes, the byte scanner and the general reader agree on the
/// events.
pub fn csv(data: &[u8]) {
    let cols = CsvColumns::default();
    let rows = std::str::from_utf8(data)
        .ok()
        .map(|text| for_each_row(text, &cols, |_| {}));
    for count_repeats in [true, false] {
        let Ok(dfg) = discover::dfg_from_csv(data, &cols, count_repeats) else {
            continue;
        };
        if dfg.events == 0 {
            continue;
        }
        for (priors, timeouts) in [(true, true), (false, false)] {
            let text = discover::render(
                &dfg,
                &RenderOptions {
                    flow_name: "fuzz".into(),
                    source: "fuzz.csv".into(),
                    key: "payload.case".into(),
                    activity_field: "event_type".into(),
                    failures: Vec::new(),
                    priors,
                    timeouts,
                    count_repeats,
                },
            );
            let comp = flowcast::model::compile_files([("d.flow".to_string(), text.into_bytes())]);
            assert!(!comp.has_errors(), "{}", comp.render());
        }
        if count_repeats && !data.contains(&b'"') {
            if let Some(Ok(rows)) = &rows {
                assert_eq!(dfg.events as usize, *rows, "the two CSV readers disagree");
            }
        }
    }
}

/// The YAML configuration: parsing never panics, and an error's position, when it has one,
/// is inside the text.
pub fn yaml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Err(e) = Config::parse(text) else {
        return;
    };
    let mut parts = e.splitn(3, ':');
    let (Some(line), Some(col)) = (parts.next(), parts.next()) else {
        return;
    };
    if let (Ok(line), Ok(_col)) = (line.parse::<usize>(), col.parse::<usize>()) {
        // Lines as YAML counts them: `\r\n`, `\r`, `\n` and the Unicode breaks end a line
        // (a lone `\r` too, found by the yaml fuzz target), and libyaml marks the end of the
        // stream one line past a last line without its line end.
        let lines = text
            .replace("\r\n", "\n")
            .split(['\r', '\n', '\u{85}', '\u{2028}', '\u{2029}'])
            .count();
        assert!(
            line >= 1 && line <= lines + 1,
            "{e} (the text has {lines} lines)"
        );
    }
}
