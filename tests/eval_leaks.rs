//! `flowcast eval` cannot leak, proved the way an auditor would check it: corrupt what a
//! prediction must not see, and the prediction must not move.
//! - Other test cases: randomising the activities of half the test cases (and in `frozen`
//!   mode their times too) leaves every prediction traced for the other half bit-identical.
//! - A case's own future: corrupting its messages after prefix k leaves its predictions at
//!   prefixes up to k identical (in `online` mode too, which learns from test cases by design).
//! - `--select`: corrupting every test case moves neither the validation figures nor the choice.
//!
//! Each holds for every mode and every learning option (history 3, dwell, calendar, features,
//! a half-life). Two leaks that once broke them have their own tests: a test object's timeout
//! learned in `live` mode, and decay running while `frozen` test cases are replayed.

mod common;

use common::{flowcast, run_ok};
use flowcast::engine::message::{self, Message};
use flowcast::engine::Prediction;
use flowcast::eval::evaluate::{self, EvalConfig, Mode};
use flowcast::eval::log::{self, CsvColumns, Stream, CASE_END};
use flowcast::model::{Calendar, CompiledFlow};
use std::path::Path;

const HELPDESK: &str = "../shared/data/process_logs/helpdesk.csv";
const BPI: &str = "../shared/data/process_logs/bpi_12_w.csv";

/// The first `cases` cases of a CSV log (in file order), header kept.
fn log_slice(path: &str, cases: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let mut out = format!("{}\n", lines.next().unwrap());
    let mut seen: Vec<String> = Vec::new();
    for line in lines {
        let case = line.split(',').next().unwrap().to_string();
        if !seen.contains(&case) {
            if seen.len() == cases {
                break;
            }
            seen.push(case);
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// A slice of Helpdesk written to `dir`, read as `eval` reads it, with the flow `eval`
/// discovers for it.
fn helpdesk(dir: &Path, cases: usize) -> (CompiledFlow, Stream) {
    slice(dir, HELPDESK, cases)
}

fn slice(dir: &Path, log: &str, cases: usize) -> (CompiledFlow, Stream) {
    let path = dir.join("helpdesk_slice.csv");
    std::fs::write(&path, log_slice(log, cases)).unwrap();
    let cols = CsvColumns::default();
    let flow = flowcast::cli::eval_cmd::auto_flow(&path, &cols).unwrap();
    (flow, log::read_csv(&path, &cols).unwrap())
}

/// A small deterministic generator (xorshift), so that a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn activity(m: &Message) -> Option<&str> {
    m.event_type().filter(|e| *e != CASE_END)
}

/// `stream` with the activity of every message `pick(case, position in the case)` selects
/// replaced by a random activity of the log; times, case ends and everything else kept.
/// With `stretch`, the selected cases' times are also stretched tenfold from their start.
fn corrupt(stream: &Stream, stretch: bool, pick: impl Fn(usize, usize) -> bool) -> Stream {
    let mut activities: Vec<String> = stream
        .messages
        .iter()
        .filter_map(|m| activity(m).map(str::to_string))
        .collect();
    activities.sort();
    activities.dedup();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut out = stream.clone();
    let mut position = vec![0usize; stream.cases.len()];
    let mut start = vec![None::<i64>; stream.cases.len()];
    for (i, m) in stream.messages.iter().enumerate() {
        let c = stream.case_of[i] as usize;
        let t = m.time_ms.unwrap();
        let t0 = *start[c].get_or_insert(t);
        let t_new = if stretch && pick(c, 0) {
            t0 + (t - t0) * 10
        } else {
            t
        };
        out.messages[i].time_ms = Some(t_new);
        if activity(m).is_none() {
            continue;
        }
        let k = position[c];
        position[c] += 1;
        if !pick(c, k) {
            continue;
        }
        let case = &stream.cases[c];
        let a = &activities[rng.below(activities.len())];
        let mut new =
            message::from_value(serde_json::json!({"event_type": a, "payload": {"case": case}}))
                .unwrap();
        new.time_ms = Some(t_new);
        out.messages[i] = new;
    }
    out
}

/// The configurations every property is checked for: the first-order chain and each learning
/// option on top of it.
fn configurations(modes: &[Mode]) -> Vec<EvalConfig> {
    let base = flowcast::eval::suite::markov(1);
    let variants = [
        EvalConfig {
            history: 3,
            min_observations: 1.0,
            ..base.clone()
        },
        EvalConfig {
            dwell: true,
            ..base.clone()
        },
        EvalConfig {
            dwell: true,
            calendar: Calendar::Week,
            ..base.clone()
        },
        EvalConfig {
            features: true,
            ..base.clone()
        },
        EvalConfig {
            half_life_ms: Some(7 * 86_400_000),
            dwell: true,
            ..base.clone()
        },
        // The self-tuning model (the default): its weights are learned like its counts.
        EvalConfig {
            auto: true,
            ..base.clone()
        },
        EvalConfig {
            auto: true,
            dwell: true,
            half_life_ms: Some(7 * 86_400_000),
            ..base.clone()
        },
        base,
    ];
    modes
        .iter()
        .flat_map(|&mode| {
            variants
                .iter()
                .map(move |v| EvalConfig { mode, ..v.clone() })
        })
        .collect()
}

/// A prediction as far as it must not move. In `frozen` mode each test case is replayed shifted
/// to start where the one before ended, so its time stamp (`at`) is the protocol's, not the
/// case's; everything the model says must be the same.
fn comparable(cfg: &EvalConfig, p: &Prediction) -> Prediction {
    let mut p = p.clone();
    if cfg.mode == Mode::Frozen {
        p.at.clear();
    }
    p
}

/// Asserts that the predictions of the test cases `keep` selects are identical in two runs.
fn assert_same(
    cfg: &EvalConfig,
    a: &[Vec<Prediction>],
    b: &[Vec<Prediction>],
    keep: impl Fn(usize, usize) -> bool,
) {
    assert_eq!(a.len(), b.len());
    let mut compared = 0;
    for (j, (pa, pb)) in a.iter().zip(b).enumerate() {
        for (k, (x, y)) in pa.iter().zip(pb).enumerate() {
            if keep(j, k) {
                compared += 1;
                assert_eq!(
                    comparable(cfg, x),
                    comparable(cfg, y),
                    "{}: test case {j}, prediction {k}",
                    cfg.label()
                );
            }
        }
    }
    assert!(compared > 50, "{}: only {compared} compared", cfg.label());
}

#[test]
fn other_test_cases_cannot_move_a_test_cases_predictions() {
    let dir = tempfile::tempdir().unwrap();
    let (flow, stream) = helpdesk(dir.path(), 300);
    let n_train = 200;
    // Every other test case is corrupted; in `frozen` mode their times too (each test case is
    // replayed on its own there, after the ones before it).
    let other = |c: usize| c >= n_train && c.is_multiple_of(2);
    for cfg in configurations(&[Mode::Frozen, Mode::Live]) {
        let stretch = cfg.mode == Mode::Frozen;
        let corrupted = corrupt(&stream, stretch, |c, _| other(c));
        let a = evaluate::test_predictions(&flow, &stream, &cfg);
        let b = evaluate::test_predictions(&flow, &corrupted, &cfg);
        assert_same(&cfg, &a, &b, |j, _| !other(n_train + j));
    }
}

#[test]
fn frozen_predictions_do_not_depend_on_the_test_cases_replayed_before() {
    // With a half-life, decay must not run on while the test cases are replayed: the test
    // cases before one (here made ten times longer) must not change what it is told.
    let dir = tempfile::tempdir().unwrap();
    let (flow, stream) = helpdesk(dir.path(), 300);
    let n_train = 200;
    let first_half = |c: usize| (n_train..n_train + 50).contains(&c);
    let cfg = EvalConfig {
        half_life_ms: Some(7 * 86_400_000),
        ..flowcast::eval::suite::markov(1)
    };
    let mut stretched = corrupt(&stream, true, |c, _| first_half(c));
    // Times only: the activities stay as they were.
    for (i, m) in stream.messages.iter().enumerate() {
        let t = stretched.messages[i].time_ms;
        stretched.messages[i] = m.clone();
        stretched.messages[i].time_ms = t;
    }
    let a = evaluate::test_predictions(&flow, &stream, &cfg);
    let b = evaluate::test_predictions(&flow, &stretched, &cfg);
    assert_same(&cfg, &a, &b, |j, _| j >= 50);
}

#[test]
fn a_test_cases_own_future_cannot_move_its_earlier_predictions() {
    let dir = tempfile::tempdir().unwrap();
    let (flow, stream) = helpdesk(dir.path(), 300);
    let n_train = 200;
    let mut len = vec![0usize; stream.cases.len()];
    for (i, m) in stream.messages.iter().enumerate() {
        if activity(m).is_some() {
            len[stream.case_of[i] as usize] += 1;
        }
    }
    // The prediction at prefix k is made on the k-th message; messages k+1.. are corrupted.
    let cut = |c: usize| len[c].div_ceil(2).max(1);
    for cfg in configurations(&[Mode::Frozen, Mode::Live, Mode::Online]) {
        // `online` learns from the test cases by design: one case's future is corrupted, and
        // only its own predictions are compared. Elsewhere every test case's future at once.
        let chosen = |c: usize| c >= n_train && (cfg.mode != Mode::Online || c == n_train + 37);
        let corrupted = corrupt(&stream, false, |c, k| chosen(c) && k >= cut(c));
        let a = evaluate::test_predictions(&flow, &stream, &cfg);
        let b = evaluate::test_predictions(&flow, &corrupted, &cfg);
        let compared = |j: usize, k: usize| chosen(n_train + j) && k < cut(n_train + j);
        if cfg.mode == Mode::Online {
            let j = 37;
            assert!(cut(n_train + j) >= 2, "case {j} is too short to cut");
            assert_eq!(
                a[j][..cut(n_train + j)],
                b[j][..cut(n_train + j)],
                "{}",
                cfg.label()
            );
        } else {
            assert_same(&cfg, &a, &b, compared);
        }
    }
}

fn eval_json(log: &Path, args: &[&str]) -> serde_json::Value {
    let out = run_ok(
        flowcast()
            .arg("eval")
            .arg(log)
            .args(args)
            .args(["--output", "json"]),
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn select_chooses_the_same_on_validation_when_every_test_case_is_corrupted() {
    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("original.csv");
    let text = log_slice(HELPDESK, 600);
    std::fs::write(&original, &text).unwrap();
    // Every test case (the last third, in file order) gets other activities, in a different
    // order; the training cases are left alone.
    let mut cases: Vec<&str> = Vec::new();
    let mut rng = Rng(7);
    let activities: Vec<&str> = {
        let mut a: Vec<&str> = text
            .lines()
            .skip(1)
            .map(|l| l.split(',').nth(1).unwrap())
            .collect();
        a.sort();
        a.dedup();
        a
    };
    let mut corrupted = String::new();
    for (i, line) in text.lines().enumerate() {
        if i == 0 {
            corrupted.push_str(line);
            corrupted.push('\n');
            continue;
        }
        let f: Vec<&str> = line.split(',').collect();
        if !cases.contains(&f[0]) {
            cases.push(f[0]);
        }
        let activity = if cases.len() > 400 {
            activities[rng.below(activities.len())]
        } else {
            f[1]
        };
        corrupted.push_str(&format!("{},{},{}\n", f[0], activity, f[2]));
    }
    let corrupted_path = dir.path().join("corrupted.csv");
    std::fs::write(&corrupted_path, corrupted).unwrap();
    let grid = [
        "--history",
        "1,2,3",
        "--dwell",
        "off,on",
        "--mode",
        "frozen,live",
        "--half-life",
        "off,14d",
        "--select",
    ];
    let a = eval_json(&original, &grid);
    let b = eval_json(&corrupted_path, &grid);
    let rows = |v: &serde_json::Value| -> Vec<(String, serde_json::Value, bool)> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["label"].as_str().unwrap().to_string(),
                    r["validation"].clone(),
                    r["selected"].as_bool().unwrap(),
                )
            })
            .collect()
    };
    let (ra, rb) = (rows(&a), rows(&b));
    assert_eq!(ra.len(), 24);
    assert_eq!(ra, rb);
    // The corruption reached the test figures: the check is not vacuous.
    assert_ne!(a[0]["next_state"], b[0]["next_state"]);
}

/// A log where only test cases hang: training cases go a -> b -> c within two minutes, test
/// cases stop at b, and their timeout (15 min) fires as the next training case arrives.
fn hanging_log(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let flow = dir.join("hang.flow");
    std::fs::write(
        &flow,
        r#"flow hang {
    key payload.case
    initial a
    state b
    terminal c
    artifact stuck
    on "a" -> a
    on "b" -> b
    on "c" -> c
    unlisted learn
    timeout b after 15m -> stuck
    learn { history 1  prior_weight 0  half_life off  min_observations 0 }
    alert { threshold 0.10  resolve 0.05 }
}
"#,
    )
    .unwrap();
    let mut csv = String::from("CaseID,ActivityID,CompleteTimestamp\n");
    let at = |minutes: usize| {
        format!(
            "2024-01-{:02} {:02}:{:02}:00",
            1 + minutes / 1440,
            minutes / 60 % 24,
            minutes % 60
        )
    };
    // 200 training cases, then 100 test cases; in time, every third case is a test case.
    for i in 0..300 {
        let (slot, test) = if i < 200 {
            (3 * (i / 2) + i % 2, false)
        } else {
            (3 * (i - 200) + 2, true)
        };
        let t = slot * 10;
        csv.push_str(&format!("{i},a,{}\n{i},b,{}\n", at(t), at(t + 1)));
        if !test {
            csv.push_str(&format!("{i},c,{}\n", at(t + 2)));
        }
    }
    let log = dir.join("hang.csv");
    std::fs::write(&log, csv).unwrap();
    (flow, log)
}

#[test]
fn live_mode_never_learns_a_test_objects_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (flow, log) = hanging_log(dir.path());
    let alerted = |mode: &str| {
        let r = &eval_json(
            &log,
            &[
                "--flow",
                flow.to_str().unwrap(),
                "--dwell",
                "off",
                "--mode",
                mode,
            ],
        )[0];
        r["outcome"]["alerted_cases"].as_u64().unwrap()
    };
    // Online learns from the test cases by design: their timeouts teach it that b hangs.
    assert!(alerted("online") > 50);
    // Nothing in training ever hangs: a model that learned from training alone never alerts.
    assert_eq!(alerted("frozen"), 0);
    assert_eq!(alerted("live"), 0);
}

/// Whether every test case's predictions are the same when the other half of the test cases
/// (odd or even, by position) have random activities: then the figure `eval` reports is the
/// figure of predictions that never saw another test case.
fn survives_corrupting_the_other_half(
    flow: &CompiledFlow,
    stream: &Stream,
    cfg: &EvalConfig,
) -> bool {
    let a = evaluate::test_predictions(flow, stream, cfg);
    let n_train = stream.cases.len() - a.len();
    [0, 1].iter().all(|&half| {
        let corrupted = corrupt(stream, false, |c, _| c >= n_train && c % 2 == half);
        let b = evaluate::test_predictions(flow, &corrupted, cfg);
        (0..a.len())
            .filter(|j| (n_train + j) % 2 != half)
            .all(|j| a[j] == b[j])
    })
}

#[test]
fn the_helpdesk_goal_configuration_predicts_each_test_case_without_the_others() {
    // tests/evaluation.rs checks that this configuration (chosen on validation) reaches 0.74;
    // that figure would hold under a leak too (`online` gets 0.7797 as well). Here: it is made
    // of predictions that no other test case can move, and the check does see a leak.
    let dir = tempfile::tempdir().unwrap();
    let (flow, stream) = helpdesk(dir.path(), usize::MAX);
    let live = EvalConfig {
        half_life_ms: Some(30 * 86_400_000),
        dwell: true,
        min_observations: 10.0,
        mode: Mode::Live,
        ..flowcast::eval::suite::markov(1)
    };
    assert!(survives_corrupting_the_other_half(&flow, &stream, &live));
    let online = EvalConfig {
        mode: Mode::Online,
        ..live
    };
    assert!(!survives_corrupting_the_other_half(&flow, &stream, &online));
}

#[test]
fn the_bpi_goal_configuration_predicts_each_test_case_without_the_others() {
    // The feature model chosen on validation for BPI'12 W (tests/evaluation.rs checks 0.80),
    // on its first 4,500 cases to stay quick.
    let dir = tempfile::tempdir().unwrap();
    let (flow, stream) = slice(dir.path(), BPI, 4500);
    let cfg = EvalConfig {
        dwell: true,
        features: true,
        min_observations: 10.0,
        ..flowcast::eval::suite::markov(1)
    };
    assert!(survives_corrupting_the_other_half(&flow, &stream, &cfg));
}

#[test]
fn the_default_self_tuning_model_predicts_each_test_case_without_the_others() {
    // The default (`model auto`) reaches 0.80 on BPI'12 W (EVALUATION.md); its member weights
    // are learned from the training cases only: on the first 4,500 cases, no test case moves
    // another's predictions.
    let dir = tempfile::tempdir().unwrap();
    let (flow, stream) = slice(dir.path(), BPI, 4500);
    let cfg = EvalConfig {
        auto: true,
        ..flowcast::eval::suite::markov(1)
    };
    assert!(survives_corrupting_the_other_half(&flow, &stream, &cfg));
    let online = EvalConfig {
        mode: Mode::Online,
        ..cfg
    };
    assert!(!survives_corrupting_the_other_half(&flow, &stream, &online));
}
