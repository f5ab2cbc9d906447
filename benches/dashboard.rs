//! The dashboard's questions at scale (divan): `cargo bench --bench dashboard`. The top-100 of
//! 1,000,000 objects in flight, as `GET /api/objects` asks it (every chunk of the scan, then
//! the rows of the 100), the longest the engine is held for it (one chunk), and an object's
//! timeline (a scan of the full journal). Figures in BENCHMARKS.md; nothing here asserts a
//! time.

use flowcast::engine::journal::{self, Journal};
use flowcast::engine::key::ObjectKey;
use flowcast::engine::message::from_value;
use flowcast::engine::query::{ObjectQuery, Scan, SCAN_CHUNK};
use flowcast::engine::Engine;
use flowcast::model::compile_files;
use std::sync::{Mutex, OnceLock};

fn main() {
    divan::main();
}

/// A million in a benchmark build; `cargo test --all-targets` runs each benchmark once in a
/// debug build, where building a million objects would take a minute for nothing measured.
const OBJECTS: usize = if cfg!(debug_assertions) {
    10_000
} else {
    1_000_000
};

/// The bundled patent flow with a million requests in flight, spread over its states.
fn engine() -> &'static Mutex<Engine> {
    static E: OnceLock<Mutex<Engine>> = OnceLock::new();
    E.get_or_init(|| {
        let src = std::fs::read("models/patent_disk_attach.flow").unwrap();
        let flows = compile_files([("patent.flow".to_string(), src)]).flows;
        let mut e = Engine::new(flows);
        // As in the service: the journal of steps that timelines are rebuilt from.
        e.journal = Some(Journal::new(journal::DEFAULT_ENTRIES));
        let mut out = Vec::new();
        let steps = [
            "disk.attach.request",
            "xyz.start",
            "xyz.x",
            "xyz.y",
            "xyz.z",
        ];
        for i in 0..OBJECTS {
            let key = format!("req-{i:07}");
            // Each object goes a different distance along the flow: x, then y or z.
            let n = 1 + i % 4;
            for (j, ev) in steps.iter().take(n).enumerate() {
                let ev = if j == 3 && i % 8 < 4 { "xyz.z" } else { ev };
                let m = serde_json::json!({
                    "event_type": ev,
                    "timestamp": 1_767_225_600.0 + i as f64 * 0.001 + j as f64 * 0.0001,
                    "payload": {"request_id": key},
                });
                e.observe(&from_value(m).unwrap(), &mut out);
            }
            out.clear();
        }
        assert_eq!(e.objects_in_flight(), OBJECTS);
        Mutex::new(e)
    })
}

fn query() -> ObjectQuery {
    ObjectQuery {
        limit: 100,
        ..ObjectQuery::default()
    }
}

/// The whole query: every chunk, then the 100 rows (four calls of 25, as the API asks).
#[divan::bench(sample_count = 20)]
fn top_100_of_1m_objects(b: divan::Bencher) {
    let e = engine();
    b.bench(|| {
        let mut e = e.lock().unwrap();
        let mut s = Scan::new(query());
        while !s.done() {
            e.scan_objects(&mut s, SCAN_CHUNK);
        }
        let rows: Vec<_> = s
            .picks()
            .iter()
            .filter_map(|(f, k)| e.object_row(f, k))
            .collect();
        assert_eq!(rows.len(), 100);
        rows
    });
}

/// The longest the engine is held by the query: one chunk of the scan.
#[divan::bench(sample_count = 50)]
fn one_scan_chunk(b: divan::Bencher) {
    let e = engine();
    b.bench(|| {
        let mut e = e.lock().unwrap();
        let mut s = Scan::new(query());
        e.scan_objects(&mut s, SCAN_CHUNK);
        s.scanned
    });
}

/// The 25 rows one call computes (predictions of alerting objects at Y).
#[divan::bench(sample_count = 50)]
fn rows_for_25_objects(b: divan::Bencher) {
    let e = engine();
    let picks = {
        let mut e = e.lock().unwrap();
        let mut s = Scan::new(query());
        while !s.done() {
            e.scan_objects(&mut s, SCAN_CHUNK);
        }
        s.picks()
    };
    b.bench(|| {
        let mut e = e.lock().unwrap();
        picks
            .iter()
            .take(25)
            .filter_map(|(f, k)| e.object_row(f, k))
            .count()
    });
}

/// One object's timeline: a scan of the whole journal (full: 65,536 steps).
#[divan::bench(sample_count = 50)]
fn timeline_of_one_object(b: divan::Bencher) {
    let e = engine();
    let key = ObjectKey::parse(&format!("req-{:07}", OBJECTS - 1));
    b.bench(|| {
        let e = e.lock().unwrap();
        let t = e.timeline(0, &key);
        assert!(!t.steps.is_empty());
        t.steps.len()
    });
}

/// What the journal costs the intake: one state update (match, move, learn, predict, alert
/// check, and with the journal its entry) without and with it.
#[divan::bench(args = [false, true])]
fn state_update_journal(b: divan::Bencher, journal_on: bool) {
    let src = std::fs::read("models/patent_disk_attach.flow").unwrap();
    let flows = compile_files([("patent.flow".to_string(), src)]).flows;
    let mut e = Engine::new(flows);
    if journal_on {
        e.journal = Some(Journal::new(journal::DEFAULT_ENTRIES));
    }
    let steps = [
        "disk.attach.request",
        "xyz.start",
        "xyz.x",
        "xyz.z",
        "xyz.complete",
    ];
    let msgs: Vec<_> = (0..5000)
        .map(|i| {
            from_value(serde_json::json!({
                "event_type": steps[i % 5],
                "timestamp": 1_767_225_600.0 + i as f64 * 0.01,
                "payload": {"request_id": format!("r{}", i / 5)},
            }))
            .unwrap()
        })
        .collect();
    let mut out = Vec::new();
    let mut i = 0;
    b.bench_local(|| {
        e.observe(&msgs[i % msgs.len()], &mut out);
        out.clear();
        i += 1;
    });
}
