//! The clock rules: one message from the future must not move time (its own time beyond the
//! horizon is not believed), and messages handled late (a recorded stream on the wall clock)
//! teach the dwell times they carry, not the delay of the bus.

mod common;

use common::*;
use flowcast::engine::output::Record;
use flowcast::engine::Engine;

const TIMEOUT_FLOW: &str = r#"flow t {
    key payload.id
    initial a
    terminal done
    artifact slow "Time Threshold Failure"
    on "a" -> a
    on "done" -> done
    timeout a after 10m -> slow
    learn { half_life off }
}
"#;

/// 2026-01-01T00:00:00Z, the time `msg` counts from.
const T0: i64 = 1_767_225_600_000;

fn outcomes(records: &[Record]) -> Vec<(String, String)> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Outcome(o) => Some((o.object.clone(), o.outcome.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_message_from_the_future_neither_fires_timers_early_nor_freezes_the_clock() {
    let mut e = Engine::new(compile(TIMEOUT_FLOW));
    // The caller's wall clock is T0; five minutes of skew are allowed.
    e.set_horizon(Some(T0 + 300_000));
    let mut out = Vec::new();
    e.observe(&msg("a", "victim", 0.0), &mut out);
    // An hour ahead, then the year 9999: neither is believed.
    e.observe(&msg("a", "other", 3600.0), &mut out);
    let far = flowcast::engine::message::from_value(serde_json::json!({
        "event_type": "a", "timestamp": "9999-12-31T23:59:59Z", "payload": {"id": "third"}
    }))
    .unwrap();
    e.observe(&far, &mut out);
    assert_eq!(e.stats.future, 2);
    assert_eq!(e.clock_ms(), T0, "the clock did not move");
    assert!(outcomes(&out).is_empty(), "{out:?}");
    // Time goes on: the victim times out at ten minutes, not before.
    e.advance(T0 + 599_000, &mut out);
    assert!(outcomes(&out).is_empty(), "{out:?}");
    e.advance(T0 + 600_000, &mut out);
    assert_eq!(
        outcomes(&out).first(),
        Some(&("victim".to_string(), "slow".to_string()))
    );
}

#[test]
fn without_a_horizon_a_message_from_the_future_moves_the_clock() {
    // The counter-check: the same stream with no bound is what fired timers early.
    let mut e = Engine::new(compile(TIMEOUT_FLOW));
    let mut out = Vec::new();
    e.observe(&msg("a", "victim", 0.0), &mut out);
    e.observe(&msg("a", "other", 3600.0), &mut out);
    assert_eq!(e.stats.future, 0);
    assert_eq!(
        outcomes(&out),
        vec![("victim".to_string(), "slow".to_string())]
    );
}

#[test]
fn a_clock_saved_ahead_is_pulled_back_and_timers_fire_again() {
    let mut e = Engine::new(compile(TIMEOUT_FLOW));
    let mut out = Vec::new();
    e.observe(&msg("a", "victim", 0.0), &mut out);
    let far = flowcast::engine::message::from_value(serde_json::json!({
        "event_type": "a", "timestamp": "9999-12-31T23:59:59Z", "payload": {"id": "third"}
    }))
    .unwrap();
    e.observe(&far, &mut out);
    let snap = e.snapshot();
    let mut restored = Engine::new(compile(TIMEOUT_FLOW));
    restored.restore(&snap);
    assert!(restored.clock_ms() > T0 + 1_000 * 86_400 * 365 * 7000);
    assert!(restored.pull_clock_back(T0 + 1_000).is_some());
    assert_eq!(restored.clock_ms(), T0 + 1_000);
    let mut out = Vec::new();
    restored.advance(T0 + 700_000, &mut out);
    // The object stamped 9999 is pulled back to now; both time out once their ten minutes pass.
    let got = outcomes(&out);
    assert!(
        got.contains(&("third".to_string(), "slow".to_string())),
        "{got:?}"
    );
}

/// The learned transitions (count and dwell histogram) of every flow, for comparison.
fn learned(e: &Engine) -> serde_json::Value {
    let mut v = serde_json::to_value(e.export_learned()).unwrap();
    // The model's own clock (when it last learned) differs by design; what it learned must not.
    strip(&mut v);
    v
}

fn strip(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.remove("epoch_ms");
            m.remove("now_ms");
            for x in m.values_mut() {
                strip(x);
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
        _ => {}
    }
}

#[test]
fn a_recorded_stream_handled_late_learns_the_dwell_times_it_carries() {
    // Objects spend 40 s to 5 min in `a`. Published at 40 messages a second on the wall clock,
    // months after they happened, every message is late.
    let mut stream = Vec::new();
    for i in 0..200 {
        let start = i as f64 * 30.0;
        stream.push(("a", format!("o{i}"), start));
        stream.push((
            "done",
            format!("o{i}"),
            start + 40.0 + (i % 7) as f64 * 40.0,
        ));
    }
    stream.sort_by(|a, b| a.2.total_cmp(&b.2));

    let mut replayed = Engine::new(compile(TIMEOUT_FLOW));
    let mut late = Engine::new(compile(TIMEOUT_FLOW));
    let mut out = Vec::new();
    let mut wall = T0 + 180 * 86_400_000;
    late.advance(wall, &mut out);
    for (ty, key, t) in &stream {
        replayed.observe(&msg(ty, key, *t), &mut out);
        wall += 25;
        late.advance(wall, &mut out);
        late.observe(&msg(ty, key, *t), &mut out);
    }
    assert_eq!(late.stats.late, stream.len() as u64);
    assert_eq!(late.stats.transitions, replayed.stats.transitions);
    assert_eq!(learned(&late), learned(&replayed));
}

/// Now, as RFC 3339, `offset_s` seconds away.
fn stamp(offset_s: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    flowcast::engine::time::format_rfc3339(now + offset_s * 1000)
}

#[test]
fn the_service_bounds_the_clock_and_corrects_a_snapshot_saved_ahead() {
    let nats = NatsServer::start(false);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("models")).unwrap();
    std::fs::write(dir.path().join("models/t.flow"), TIMEOUT_FLOW).unwrap();
    let state = dir.path().join("state");
    let config = format!(
        "models: {:?}\nstate_dir: {:?}\nsource: {{ kind: nats, subjects: [\"t.>\"] }}\nnats: {{ url: \"{}\" }}\n\
         clock: {{ mode: wall, lateness_ms: 1s, max_future_ms: 5m }}",
        dir.path().join("models").display().to_string(),
        state.display().to_string(),
        nats.url()
    );
    let svc = Service::start(dir.path(), &config);
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        format!(
            "{{\"event_type\":\"a\",\"timestamp\":\"{}\",\"payload\":{{\"id\":\"victim\"}}}}\n\
             {{\"event_type\":\"a\",\"timestamp\":\"{}\",\"payload\":{{\"id\":\"other\"}}}}\n",
            stamp(0),
            stamp(3600)
        ),
    )
    .unwrap();
    publish(&nats, &input, "t.x", false);
    svc.wait_until("the future message counted", || {
        svc.metric("flowcast_messages_future_total") == 1.0
    });
    let (status, body) = http(svc.http_port, "GET", "/api/objects/victim");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"state\":\"a\""), "{body}");
    svc.stop();

    // A snapshot whose clock says 9999 (as one written before the horizon existed would).
    let path = state.join("snapshot.json");
    let mut snap: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    snap["clock_ms"] = serde_json::json!(253_402_300_799_000i64);
    std::fs::write(&path, serde_json::to_vec(&snap).unwrap()).unwrap();
    let svc = Service::start(dir.path(), &config);
    assert!(
        svc.log().contains("ahead of this machine's"),
        "{}",
        svc.log()
    );
    let (_, body) = http(svc.http_port, "GET", "/api/objects/victim");
    assert!(body.contains("\"state\":\"a\""), "{body}");
    svc.stop();
}
