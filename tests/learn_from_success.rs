//! `learn { from success }` (issue 12, item 3): an object's steps are learned only when it ends
//! in a success, so failures do not teach the model that failures are normal.

mod common;

use common::{compile, msg};
use flowcast::engine::output::Record;
use flowcast::engine::Engine;

/// Objects start in `a`; most go through `b` to `ok`, some take `x` and fail.
fn flow(learn: &str) -> String {
    format!(
        r#"flow p {{
    key payload.id
    initial a
    state b, x
    terminal ok
    artifact failed
    on "a" -> a
    on "b" -> b
    on "x" -> x
    on "ok" -> ok
    on "f" -> failed
    learn {{ half_life off {learn} }}
    anomaly {{ min_probability 0.05 }}
}}
"#
    )
}

/// 600 objects, one in five failing through x, each finishing before the next starts.
fn stream() -> Vec<flowcast::engine::message::Message> {
    let mut out = Vec::new();
    for i in 0..600 {
        let t = i as f64 * 10.0;
        let id = format!("o{i}");
        out.push(msg("a", &id, t));
        if i % 5 == 4 {
            out.push(msg("x", &id, t + 1.0));
            out.push(msg("f", &id, t + 2.0));
        } else {
            out.push(msg("b", &id, t + 1.0));
            out.push(msg("ok", &id, t + 2.0));
        }
    }
    out
}

fn run(learn: &str) -> (Engine, Vec<Record>) {
    let mut e = Engine::new(compile(&flow(learn)));
    let mut out = Vec::new();
    for m in stream() {
        e.observe(&m, &mut out);
    }
    (e, out)
}

fn count(e: &Engine, from: &str, to: &str) -> f64 {
    let learned = &e.export_learned()["p"];
    learned
        .transitions
        .iter()
        .find(|t| t.from == from && t.to == to)
        .map_or(0.0, |t| t.count)
}

fn anomalies(out: &[Record]) -> Vec<String> {
    out.iter()
        .filter_map(|r| match r {
            Record::Anomaly(a) => Some(a.object.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn only_objects_that_end_in_a_success_teach() {
    let (all, _) = run("");
    assert_eq!(count(&all, "a", "x"), 120.0);
    assert_eq!(count(&all, "x", "failed"), 120.0);
    let (success, _) = run("from success");
    assert_eq!(count(&success, "a", "x"), 0.0);
    assert_eq!(count(&success, "x", "failed"), 0.0);
    assert_eq!(count(&success, "a", "b"), 480.0);
    assert_eq!(count(&success, "b", "ok"), 480.0);
    // Nothing is left held once every object has ended.
    let snap = success.snapshot();
    assert!(snap.flows["p"].objects.is_empty());
}

#[test]
fn a_failing_path_stays_surprising_when_failures_do_not_teach() {
    let (_, out) = run("");
    let learned_from_all = anomalies(&out);
    let (_, out) = run("from success");
    let from_success = anomalies(&out);
    let failing: Vec<String> = (0..600)
        .filter(|i| i % 5 == 4)
        .map(|i| format!("o{i}"))
        .collect();
    // Every failing object takes a step no success ever took: flagged, each once. (The very
    // first object is flagged too: nothing at all was known when it moved.)
    assert_eq!(from_success[0], "o0");
    assert_eq!(from_success[1..], failing[..]);
    // Learning from everything, a failure one object in five is soon ordinary.
    assert!(
        learned_from_all.len() < failing.len() / 4,
        "{} anomalies learning from all",
        learned_from_all.len()
    );
}

#[test]
fn an_object_that_holds_too_many_steps_teaches_nothing() {
    let mut e = Engine::new(compile(&flow("from success")));
    let mut out = Vec::new();
    // 100 a <-> b loops: more than an object may hold; then a success.
    for k in 0..200 {
        let ty = if k % 2 == 0 { "a" } else { "b" };
        e.observe(&msg(ty, "long", k as f64), &mut out);
    }
    e.observe(&msg("ok", "long", 300.0), &mut out);
    // A short object still teaches.
    for (k, ty) in ["a", "b", "ok"].iter().enumerate() {
        e.observe(&msg(ty, "short", 400.0 + k as f64), &mut out);
    }
    assert_eq!(count(&e, "a", "b"), 1.0);
    assert_eq!(count(&e, "b", "ok"), 1.0);
    assert_eq!(count(&e, "b", "a"), 0.0);
}

#[test]
fn a_reload_keeps_what_objects_hold() {
    let msgs = stream();
    let src = flow("from success");
    let mut straight = Engine::new(compile(&src));
    let mut out = Vec::new();
    for m in &msgs {
        straight.observe(m, &mut out);
    }
    // The same, reloaded after every 101 messages, objects in flight holding their steps.
    let mut e = Engine::new(compile(&src));
    for (i, m) in msgs.iter().enumerate() {
        if i % 101 == 100 {
            e.reload(compile(&src));
        }
        e.observe(m, &mut out);
    }
    assert_eq!(e.export_learned(), straight.export_learned());
    // Reloaded as `from all`, what was held is learned at once.
    let mut e = Engine::new(compile(&src));
    // 100 objects ended (80 successes), and o100 has moved from a to b.
    for m in &msgs[..302] {
        e.observe(m, &mut out);
    }
    assert_eq!(count(&e, "a", "b"), 80.0);
    e.reload(compile(&flow("")));
    assert_eq!(count(&e, "a", "b"), 81.0, "o100's step, held until now");
}
