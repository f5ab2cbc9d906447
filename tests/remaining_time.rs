//! The median remaining time (`median_remaining_ms`, engine/remaining.rs): close to the true
//! median where the remaining-time distribution is known, better than the expectation for the
//! absolute error on a real log, and the same figures from run to run.

mod common;

use common::{compile, flowcast, msg, run_ok};
use flowcast::engine::key::ObjectKey;
use flowcast::engine::Engine;

const HELPDESK: &str = "../shared/data/process_logs/helpdesk.csv";

/// `a` lasts Exp(1 h), then half the objects end and half go to `b`, which lasts Exp(3 h).
const TWO_STEP: &str = r#"
flow r {
    key payload.id
    initial a
    state b
    terminal done
    on "a" -> a
    on "b" -> b
    on "done" -> done
    learn { half_life off  prior_weight 0 }
}
"#;
const MEAN_A_S: f64 = 3600.0;
const MEAN_B_S: f64 = 3.0 * 3600.0;

/// A deterministic uniform in (0, 1) (a 64-bit LCG, high bits).
struct Lcg(u64);

impl Lcg {
    fn unit(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn exp(&mut self, mean: f64) -> f64 {
        -mean * self.unit().ln()
    }
}

/// The x where a non-decreasing `cdf` reaches 1/2, by bisection.
fn median_of(cdf: impl Fn(f64) -> f64) -> f64 {
    let (mut lo, mut hi) = (0.0, 1e9);
    for _ in 0..200 {
        let mid = (lo + hi) / 2.0;
        if cdf(mid) >= 0.5 {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi
}

/// An engine that has seen `n` objects of `TWO_STEP`, and two more that just entered `a` and
/// `b` (`probe_a`, `probe_b`).
fn trained_two_step(n: usize) -> Engine {
    let mut e = Engine::new(compile(TWO_STEP));
    let mut rng = Lcg(7);
    let mut msgs = Vec::new();
    for i in 0..n {
        let key = format!("o{i}");
        let t0 = i as f64 * 60.0;
        let ta = t0 + rng.exp(MEAN_A_S);
        msgs.push(msg("a", &key, t0));
        if rng.unit() < 0.5 {
            msgs.push(msg("b", &key, ta));
            msgs.push(msg("done", &key, ta + rng.exp(MEAN_B_S)));
        } else {
            msgs.push(msg("done", &key, ta));
        }
    }
    msgs.sort_by_key(|x| x.time_ms);
    let end = msgs.last().and_then(|m| m.time_ms).unwrap() as f64 / 1000.0 - 1_767_225_600.0;
    msgs.push(msg("a", "probe_a", end + 1.0));
    msgs.push(msg("a", "probe_b", end + 1.0));
    msgs.push(msg("b", "probe_b", end + 1.0));
    let mut out = Vec::new();
    for m in &msgs {
        e.observe(m, &mut out);
    }
    e
}

#[test]
fn the_median_remaining_time_is_close_to_the_true_median_of_a_chain_with_exponential_dwells() {
    let mut e = trained_two_step(4000);
    // A learning model samples its walks from the model as it was up to a quarter of the
    // transitions ago (the long dwells of the last objects finish last): the method is judged
    // on the final model, as `eval` freezes it.
    e.freeze();
    let (ma, mb) = (MEAN_A_S, MEAN_B_S);
    // From `a`: Exp(ma), plus Exp(mb) for half the objects (a hypoexponential sum).
    let true_a = median_of(|x| {
        let one = 1.0 - (-x / ma).exp();
        let two = 1.0 - (mb * (-x / mb).exp() - ma * (-x / ma).exp()) / (mb - ma);
        0.5 * one + 0.5 * two
    }) * 1000.0;
    // From `b`: Exp(mb), median mb ln 2.
    let true_b = mb * std::f64::consts::LN_2 * 1000.0;
    let a = e.predict_object(0, &ObjectKey::parse("probe_a")).unwrap();
    let b = e.predict_object(0, &ObjectKey::parse("probe_b")).unwrap();
    assert_eq!((a.state.as_str(), b.state.as_str()), ("a", "b"));
    for (what, got, truth) in [
        ("a", a.median_remaining_ms, true_a),
        ("b", b.median_remaining_ms, true_b),
    ] {
        let rel = (got - truth).abs() / truth;
        assert!(
            rel < 0.06,
            "from {what}: median {got} ms, true {truth} ms ({:.1}% off)",
            rel * 100.0
        );
    }
    // The expectation is another figure (from `a`: 1 h + 1.5 h), well above the median (1.3 h).
    let true_mean_a = (ma + 0.5 * mb) * 1000.0;
    assert!(
        (a.expected_remaining_ms - true_mean_a).abs() / true_mean_a < 0.15,
        "{a:?}"
    );
    assert!(
        a.median_remaining_ms < 0.7 * a.expected_remaining_ms,
        "{a:?}"
    );
}

#[test]
fn an_object_that_has_waited_is_given_the_median_of_what_is_left() {
    // From `b` after 3 h: the exponential has no memory, so the median left is still mb ln 2
    // (within the histogram's resolution), where an estimate blind to the wait would say
    // mb ln 2 - 3 h.
    let mut e = trained_two_step(4000);
    let later = e.clock_ms() + 3 * 3_600_000;
    e.advance(later, &mut Vec::new());
    let b = e.predict_object(0, &ObjectKey::parse("probe_b")).unwrap();
    assert_eq!(b.time_in_state_ms, 3 * 3_600_000);
    let true_b = MEAN_B_S * std::f64::consts::LN_2 * 1000.0;
    let rel = (b.median_remaining_ms - true_b).abs() / true_b;
    assert!(rel < 0.1, "{b:?}: {:.1}% off", rel * 100.0);
}

fn eval_remaining(args: &[&str]) -> serde_json::Value {
    let out = run_ok(
        flowcast()
            .args(["eval", HELPDESK])
            .args(args)
            .args(["--output", "json"]),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0]["remaining_time"].clone()
}

#[test]
fn on_helpdesk_the_median_has_a_lower_absolute_error_than_the_expectation() {
    let r = eval_remaining(&[]);
    let (mean, median) = (
        r["mae_days"].as_f64().unwrap(),
        r["median_mae_days"].as_f64().unwrap(),
    );
    assert!(median < mean, "{r}");
}

#[test]
fn the_median_remaining_time_is_the_same_in_two_runs() {
    // Contexts and dwell on: the first step differs per object, the walks are cached per state.
    let args = ["--history", "2", "--dwell", "on"];
    let (first, second) = (eval_remaining(&args), eval_remaining(&args));
    assert!(first["median_mae_days"].as_f64().is_some(), "{first}");
    assert_eq!(first, second);
}
