//! Surprise and the `anomaly` record (issue 12): objects whose path the flow's own model finds
//! improbable are flagged at the step that is, once per object, and calibrated thresholds keep
//! the false-alarm rate near the one asked for.

mod common;

use common::{compile, msg, BRANCHES};
use flowcast::engine::message::Message;
use flowcast::engine::output::{Anomaly, Record};
use flowcast::engine::Engine;

/// A small deterministic generator (the tests must give the same stream every time).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The messages of one object of `BRANCHES`, starting at `t` seconds.
fn job(id: &str, t: f64, failing: bool, rng: &mut Lcg) -> Vec<Message> {
    let middle = if failing {
        "rare"
    } else if rng.next() < 0.1 {
        "retry"
    } else {
        "ok"
    };
    ["start", "check", middle, "done"]
        .iter()
        .enumerate()
        .map(|(i, e)| msg(e, id, t + i as f64))
        .collect()
}

fn anomalies(out: &[Record]) -> Vec<&Anomaly> {
    out.iter()
        .filter_map(|r| match r {
            Record::Anomaly(a) => Some(a),
            _ => None,
        })
        .collect()
}

fn feed(e: &mut Engine, msgs: &[Message]) -> Vec<Record> {
    let mut out = Vec::new();
    for m in msgs {
        e.observe(m, &mut out);
    }
    out
}

/// 1,500 normal objects one after another (4,500 learned steps: past the 1,000 the
/// calibration waits for), then learning off: what comes next is judged against the normal
/// period only (a failure learned would teach the model that failures are normal).
fn trained(src: &str, rng: &mut Lcg) -> Engine {
    let mut e = Engine::new(compile(src));
    let mut msgs = Vec::new();
    for i in 0..1500 {
        msgs.extend(job(&format!("n{i}"), i as f64 * 10.0, false, rng));
    }
    feed(&mut e, &msgs);
    e.learn = false;
    e
}

#[test]
fn objects_taking_a_rare_branch_get_one_anomaly_each_at_the_branch() {
    let mut rng = Lcg(7);
    let mut e = trained(BRANCHES, &mut rng);
    let mut msgs = Vec::new();
    for i in 0..400 {
        let failing = i % 20 == 7;
        let id = if failing {
            format!("f{i}")
        } else {
            format!("t{i}")
        };
        msgs.extend(job(&id, 20_000.0 + i as f64 * 10.0, failing, &mut rng));
    }
    let out = feed(&mut e, &msgs);
    let found = anomalies(&out);
    let flagged: Vec<&str> = found.iter().map(|a| a.object.as_str()).collect();
    let failing: Vec<String> = (0..400)
        .filter(|i| i % 20 == 7)
        .map(|i| format!("f{i}"))
        .collect();
    assert_eq!(flagged, failing);
    for a in &found {
        assert_eq!((a.from.as_str(), a.state.as_str()), ("check", "rare"));
        assert_eq!(a.path, ["start", "check", "rare"]);
        assert!(a.probability < 0.01, "{a:?}");
        assert!(a.calibrated);
        assert_eq!(a.expected[0].0, "ok");
        assert_eq!(a.unusual_steps, 1);
    }
    // Each is resolved when its object ends, and only those.
    let resolved: Vec<&str> = out
        .iter()
        .filter_map(|r| match r {
            Record::AnomalyResolved(a) => Some(a.object.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(resolved, flagged);
    assert_eq!(e.stats.anomalies, failing.len() as u64);
}

#[test]
fn explicit_thresholds_replace_the_calibrated_ones() {
    // `top 1`: every retry (the second most likely branch) is unusual too.
    let src = BRANCHES.replace(
        "learn { half_life off }",
        "learn { half_life off }\n    anomaly { top 1 }",
    );
    let mut rng = Lcg(11);
    let mut e = Engine::new(compile(&src));
    let mut msgs = Vec::new();
    for i in 0..300 {
        msgs.extend(job(&format!("n{i}"), i as f64 * 10.0, false, &mut rng));
    }
    let out = feed(&mut e, &msgs);
    let retries = msgs
        .iter()
        .filter(|m| m.event_type() == Some("retry"))
        .count();
    let found = anomalies(&out);
    // The first objects are flagged while the model knows nothing; after that, only retries.
    let late: Vec<_> = found
        .iter()
        .filter(|a| a.object[1..].parse::<u32>().unwrap() >= 50)
        .collect();
    assert!(late
        .iter()
        .all(|a| a.state == "retry" && a.threshold == "top"));
    assert!(
        late.len() + 10 >= retries * 250 / 300,
        "{} of {retries}",
        late.len()
    );
}

#[test]
fn anomaly_off_scores_nothing() {
    // `anomaly off` followed by another item (a word after `off` must not be read as part of it).
    let src = BRANCHES.replace(
        "learn { half_life off }",
        "anomaly off\n    learn { half_life off }",
    );
    let mut rng = Lcg(7);
    let mut e = trained(&src, &mut rng);
    let out = feed(&mut e, &job("f1", 50_000.0, true, &mut rng));
    assert!(anomalies(&out).is_empty());
    assert_eq!(e.stats.scored_steps, 0);
    let peak = out.iter().find_map(|r| match r {
        Record::Outcome(o) => Some(o.surprise_peak),
        _ => None,
    });
    assert_eq!(peak, Some(None));
}

/// One step per object: from `hub` to one of 30 ends with probabilities falling by 0.8 each,
/// so that step surprises spread over many values and the quantile matters.
fn hub_flow() -> String {
    let ends: Vec<String> = (0..30).map(|i| format!("e{i}")).collect();
    let rules: String = ends
        .iter()
        .map(|e| format!("    on \"{e}\" -> {e}\n"))
        .collect();
    format!(
        "flow hub {{\n    key payload.id\n    initial hub\n    terminal {}\n    on \"hub\" -> hub\n{rules}    learn {{ half_life off  model fixed }}\n    anomaly {{ false_alarm_rate 0.01 }}\n}}\n",
        ends.join(", ")
    )
}

fn hub_objects(prefix: &str, n: usize, t0: f64, rng: &mut Lcg) -> Vec<Message> {
    let mut msgs = Vec::new();
    for i in 0..n {
        // Geometric with ratio 0.8, truncated at 30.
        let mut k = 0;
        while k < 29 && rng.next() < 0.8 {
            k += 1;
        }
        let id = format!("{prefix}{i}");
        let t = t0 + i as f64;
        msgs.push(msg("hub", &id, t));
        msgs.push(msg(&format!("e{k}"), &id, t + 0.5));
    }
    msgs
}

#[test]
fn calibrated_thresholds_keep_the_false_alarm_rate_near_the_target_on_fresh_data() {
    let mut rng = Lcg(3);
    let mut e = Engine::new(compile(&hub_flow()));
    feed(&mut e, &hub_objects("train", 20_000, 0.0, &mut rng));
    e.freeze();
    let fresh = 20_000;
    let out = feed(&mut e, &hub_objects("fresh", fresh, 100_000.0, &mut rng));
    let rate = anomalies(&out).len() as f64 / fresh as f64;
    assert!((0.005..=0.02).contains(&rate), "false alarms {rate}");
}

#[test]
fn anomalies_survive_snapshot_and_reload_without_repeating() {
    let mut rng = Lcg(5);
    let mut e = trained(BRANCHES, &mut rng);
    // An object that goes astray and is still in flight when the engine stops.
    let astray = job("f1", 30_000.0, true, &mut rng);
    let out = feed(&mut e, &astray[..3]);
    assert_eq!(anomalies(&out).len(), 1);
    let snap = e.snapshot();
    let text = serde_json::to_string(&snap).unwrap();
    let snap = serde_json::from_str(&text).unwrap();
    let mut back = Engine::new(compile(BRANCHES));
    back.restore(&snap);
    back.learn = false;
    // The calibration came back: a new object that strays is flagged at once.
    let out = feed(&mut back, &job("f2", 29_000.0, true, &mut rng));
    assert_eq!(anomalies(&out).len(), 1);
    // The first strays again (back to `rare`): unusual, but not announced twice; its end resolves it.
    let mut more = vec![msg("check", "f1", 30_010.0), msg("rare", "f1", 30_011.0)];
    more.push(msg("done", "f1", 30_012.0));
    let out = feed(&mut back, &more);
    assert!(anomalies(&out).is_empty(), "{out:?}");
    let resolved = out.iter().find_map(|r| match r {
        Record::AnomalyResolved(a) => Some(a),
        _ => None,
    });
    assert!(resolved.is_some_and(|a| a.unusual_steps >= 2), "{out:?}");
}

/// DeepLog's HDFS sessions (../shared/data/hdfs), on a slice so that a debug build runs it in
/// seconds: the first 1,500 normal sessions (1,000 train, 500 test) and 3,000 abnormal ones.
/// The full run is in EVALUATION.md ("Surprise").
#[test]
fn hdfs_sessions_are_told_apart_with_precision_and_recall_above_097() {
    use flowcast::eval::detect::{detect, parse_sessions, DetectConfig};
    let read = |f: &str| std::fs::read_to_string(format!("../shared/data/hdfs/{f}")).unwrap();
    let normal = parse_sessions(&read("hdfs_train"));
    let abnormal = parse_sessions(&read("hdfs_test_abnormal"));
    let r = detect(&normal[..1500], &abnormal[..3000], DetectConfig::default());
    assert_eq!(
        (
            r.train_sessions,
            r.normal_test_sessions,
            r.abnormal_sessions
        ),
        (1000, 500, 3000)
    );
    let engine = &r.methods[0];
    assert_eq!(engine.method, "flowcast anomaly");
    assert!(
        engine.precision >= 0.97 && engine.recall >= 0.97,
        "{engine:?}"
    );
    assert!(engine.roc_auc.unwrap() > 0.95, "{engine:?}");
    // The baselines run on the same split: an unseen transition misses many of them.
    let pairs = &r.methods[1];
    assert_eq!(pairs.method, "unseen transition");
    assert!(pairs.recall < engine.recall, "{pairs:?}");
    assert_eq!(r.methods[2].method, "unseen 5-gram");
}

#[test]
fn the_step_probability_is_the_one_the_full_distribution_gives() {
    use flowcast::engine::markov::{FlowModel, Past};
    let flow = compile(BRANCHES).remove(0);
    let id = |n: &str| flow.state_id(n).unwrap();
    let mut m = FlowModel::new(&flow);
    let mut rng = Lcg(9);
    for i in 0..300 {
        let middle = if rng.next() < 0.3 { "retry" } else { "ok" };
        let path = [id("start"), id("check"), id(middle), id("done")];
        for k in 1..path.len() {
            let history = &path[..k - 1];
            let past = Past {
                history: &history[history.len().saturating_sub(3)..],
                ..Past::NONE
            };
            m.set_now(i * 10_000 + k as i64 * 1000);
            m.observe(past, path[k - 1], path[k], 1000);
        }
    }
    m.solution();
    let sol = m.cached().unwrap().clone();
    let (mut dist, mut scratch) = (Vec::new(), Vec::new());
    let history = [id("start")];
    let past = Past {
        history: &history,
        ..Past::NONE
    };
    m.next_distribution(&sol, past, id("check"), &mut dist);
    for to in ["ok", "retry", "rare", "done"] {
        let full = dist
            .iter()
            .find(|(s, _)| *s == id(to))
            .map_or(0.0, |&(_, p)| p);
        let p = m.probability_of(&sol, past, id("check"), id(to), &mut scratch);
        assert!((p - full).abs() < 1e-12, "{to}: {p} vs {full}");
    }
    assert!(
        dist.iter().any(|(s, p)| *s == id("retry") && *p > 0.2),
        "{dist:?}"
    );
}

#[test]
fn an_unknown_event_for_a_tracked_object_is_an_anomaly_when_asked_for() {
    let src = BRANCHES.replace(
        "learn { half_life off }",
        "learn { half_life off }\n    anomaly { unknown_events on }",
    );
    for (flow, asked) in [(src.as_str(), true), (BRANCHES, false)] {
        let mut e = Engine::new(compile(flow));
        let msgs = [
            msg("start", "a", 0.0),
            msg("check", "a", 1.0),
            msg("job.weird", "a", 2.0),
            msg("job.weird", "a", 3.0),
            msg("job.weird", "nobody", 4.0),
            msg("ok", "a", 5.0),
            msg("done", "a", 6.0),
        ];
        let out = feed(&mut e, &msgs);
        let found = anomalies(&out);
        assert_eq!(e.stats.unmatched, 3);
        if !asked {
            assert!(found.is_empty(), "{found:?}");
            continue;
        }
        // Once for the object in flight (not again, not for an object it does not track).
        assert_eq!(found.len(), 1, "{found:?}");
        let a = found[0];
        assert_eq!((a.object.as_str(), a.state.as_str()), ("a", "check"));
        assert_eq!(a.threshold, "unknown_event");
        assert_eq!(a.probability, 0.0);
        assert_eq!(a.cause.event_type.as_deref(), Some("job.weird"));
        let resolved = out.iter().find_map(|r| match r {
            Record::AnomalyResolved(a) => Some(a),
            _ => None,
        });
        assert!(resolved.is_some_and(|r| r.unusual_steps >= 2), "{out:?}");
    }
}

/// A nova notification about instance `id` at `t` seconds (`task_state` for `instance.update`).
fn nova(event: &str, id: &str, task_state: Option<&str>, t: f64) -> Message {
    let v = serde_json::json!({
        "event_type": event,
        "timestamp": 1_767_225_600.0 + t,
        "payload": {"nova_object.data": {"uuid": id, "state": "building", "task_state": task_state}},
    });
    flowcast::engine::message::from_value(v).unwrap()
}

/// The build walk nova's own functional tests assert (`../shared/data/nova/flows.json`:
/// scheduling, create.start, networking, block_device_mapping, spawning, create.end), or with
/// `skip` a step left out: a path those tests never show.
fn nova_build(id: &str, t: f64, skip: Option<&str>) -> Vec<Message> {
    let steps = [
        ("instance.update", Some("scheduling")),
        ("instance.create.start", None),
        ("instance.update", Some("networking")),
        ("instance.update", Some("block_device_mapping")),
        ("instance.update", Some("spawning")),
        ("instance.create.end", None),
    ];
    steps
        .iter()
        .filter(|(_, ts)| skip.is_none() || *ts != skip)
        .enumerate()
        .map(|(i, (e, ts))| nova(e, id, *ts, t + i as f64 * 20.0))
        .collect()
}

#[test]
fn bundled_nova_flow_flags_builds_that_skip_a_step_nova_always_takes() {
    let src = std::fs::read_to_string("models/nova_instance_create.flow").unwrap();
    let mut e = Engine::new(compile(&src));
    let mut msgs = Vec::new();
    for i in 0..500 {
        msgs.extend(nova_build(&format!("n{i}"), i as f64 * 200.0, None));
    }
    feed(&mut e, &msgs);
    e.learn = false;
    let mut msgs = Vec::new();
    let mut astray = Vec::new();
    for i in 0..100 {
        let skip = match i % 25 {
            3 => Some("networking"),
            17 => Some("block_device_mapping"),
            _ => None,
        };
        let id = format!("t{i}");
        if skip.is_some() {
            astray.push(id.clone());
        }
        msgs.extend(nova_build(&id, 100_000.0 + i as f64 * 200.0, skip));
    }
    let out = feed(&mut e, &msgs);
    let flagged: Vec<String> = anomalies(&out).iter().map(|a| a.object.clone()).collect();
    assert_eq!(flagged, astray);
    assert!(anomalies(&out)
        .iter()
        .all(|a| a.threshold == "never_predicted" && a.probability == 0.0));
}

#[test]
fn the_service_sends_an_anomaly_to_alertmanager_as_flowcast_path_unlikely_and_ends_it() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir(&models).unwrap();
    // A priori counts, and a fixed threshold: no learning period before the first verdict.
    let flow = BRANCHES.replace(
        "learn { half_life off }",
        "transitions { start -> check 100  check -> ok 90  check -> retry 10  ok -> done 100  retry -> done 100 }\n    learn { half_life off }\n    anomaly { min_probability 0.01 }",
    );
    std::fs::write(models.join("job.flow"), flow).unwrap();
    let am = common::Capture::start(0);
    let config = format!(
        "models: {models:?}\nsource: {{ kind: file, path: \"-\" }}\nclock: {{ mode: event, idle_after_ms: \"0\" }}\nsinks:\n  - kind: alertmanager\n    url: {}\n",
        am.url()
    );
    let (svc, mut stdin) = common::start_with_stdin(dir.path(), &config);
    let mut rng = Lcg(1);
    let mut lines = String::new();
    let mut msgs = job("n1", 0.0, false, &mut rng);
    msgs.extend(job("f1", 100.0, true, &mut rng));
    for m in &msgs {
        lines.push_str(&serde_json::to_string(&m.value).unwrap());
        lines.push('\n');
    }
    stdin.write_all(lines.as_bytes()).unwrap();
    stdin.flush().unwrap();
    svc.wait_messages(msgs.len());
    svc.wait_until("alertmanager deliveries", || am.received().len() == 2);
    assert_eq!(svc.metric("flowcast_anomalies_total"), 1.0);
    drop(stdin);
    svc.stop();
    let got = am.received();
    let (fire, end) = (&got[0].1[0], &got[1].1[0]);
    assert_eq!(fire["labels"]["alertname"], "FlowcastPathUnlikely");
    assert_eq!(fire["labels"]["object"], "f1");
    assert!(fire.get("endsAt").is_none());
    assert_eq!(end["labels"], fire["labels"]);
    assert!(end.get("endsAt").is_some());
}

#[test]
fn detection_takes_any_event_text_without_panicking() {
    use flowcast::eval::detect::{detect, parse_sessions, DetectConfig};
    // Backslashes, quotes, globs and control characters are event names like any other.
    let normal: String = (0..60)
        .map(|i| format!("a\\u0001 \"b\" \u{1} * c{}\n", i % 2))
        .collect();
    let abnormal = "a\\u0001 [x] *\n\u{1} \\\n";
    let r = detect(
        &parse_sessions(&normal),
        &parse_sessions(abnormal),
        DetectConfig::default(),
    );
    assert_eq!((r.train_sessions, r.abnormal_sessions), (40, 2));
    // Both abnormal sessions hold events never seen: the unseen-transition baseline flags them.
    assert_eq!(r.methods[1].true_positives, 2);
    assert_eq!(r.methods[1].false_positives, 0);
}

/// An episode ends after `window` normal steps in a row (hysteresis), with `path_normal`; a
/// later unusual step opens another; unusual steps inside an episode open none.
#[test]
fn an_episode_ends_after_a_window_of_normal_steps_and_a_later_unusual_step_opens_another() {
    let src = r#"flow loop {
    key payload.id
    initial a
    state b, x
    terminal done
    on "a" -> a
    on "b" -> b
    on "x" -> x
    on "done" -> done
    learn { half_life off }
    anomaly { min_probability 0.05  window 3 }
}
"#;
    let mut e = Engine::new(compile(src));
    let mut t = 0.0;
    let mut train = Vec::new();
    for i in 0..200 {
        for ev in ["a", "b", "a", "b", "a", "b", "done"] {
            train.push(msg(ev, &format!("n{i}"), t));
            t += 1.0;
        }
    }
    feed(&mut e, &train);
    // b -> x and x -> a, both never seen (one episode), three normal steps (it ends), b -> x
    // again (a second one), x -> done never seen (the same episode), then the end.
    let path = ["a", "b", "x", "a", "b", "a", "b", "x", "done"];
    let msgs: Vec<Message> = path
        .iter()
        .enumerate()
        .map(|(k, ev)| msg(ev, "t", t + k as f64))
        .collect();
    // Straight, and restored from a snapshot taken two normal steps into the first episode's
    // end: the count of normal steps comes back with it.
    let snap = serde_json::to_string(&e.snapshot()).unwrap();
    let straight = feed(&mut e, &msgs);
    let mut back = Engine::new(compile(src));
    back.restore(&serde_json::from_str(&snap).unwrap());
    let mut resumed = feed(&mut back, &msgs[..6]);
    let text = serde_json::to_string(&back.snapshot()).unwrap();
    assert!(text.contains(r#""normal_steps":2"#), "{text}");
    let mut again = Engine::new(compile(src));
    again.restore(&serde_json::from_str(&text).unwrap());
    resumed.extend(feed(&mut again, &msgs[6..]));
    for out in [straight, resumed] {
        check_episodes(&out);
    }
}

fn check_episodes(out: &[Record]) {
    let seen: Vec<(String, String, String)> = out
        .iter()
        .filter_map(|r| match r {
            Record::Anomaly(a) if a.object == "t" => {
                Some(("anomaly".into(), a.from.clone(), a.state.clone()))
            }
            Record::AnomalyResolved(r) if r.object == "t" => {
                Some(("resolved".into(), r.reason.clone(), r.state.clone()))
            }
            _ => None,
        })
        .collect();
    let want: Vec<(String, String, String)> = [
        ("anomaly", "b", "x"),
        ("resolved", "path_normal", "b"),
        ("anomaly", "b", "x"),
        ("resolved", "completed", "done"),
    ]
    .iter()
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    .collect();
    assert_eq!(seen, want);
    // Counted once per episode.
    let unusual: Vec<u32> = out
        .iter()
        .filter_map(|r| match r {
            Record::AnomalyResolved(r) if r.object == "t" => Some(r.unusual_steps),
            _ => None,
        })
        .collect();
    assert_eq!(unusual, [2, 4]);
}

/// A message of a type the flow's rules name, whose fields no rule matches (nova's
/// `instance.update` with a task state the flow does not list), is known to the flow: it moves
/// nothing and is no unknown event. Only a type the rules never name is.
#[test]
fn a_known_event_type_that_no_rule_matches_is_not_an_unknown_event() {
    let src = r#"flow w {
    key payload.id
    initial s
    state t
    terminal done
    on "e" and payload.kind == "go" -> s
    on "e" and payload.kind == "on" -> t
    on "done" -> done
    anomaly { unknown_events on }
}
"#;
    let m = |ty: &str, kind: &str, t: f64| {
        flowcast::engine::message::from_value(serde_json::json!({
            "event_type": ty,
            "timestamp": 1_767_225_600.0 + t,
            "payload": {"id": "a", "kind": kind},
        }))
        .unwrap()
    };
    let mut e = Engine::new(compile(src));
    let out = feed(
        &mut e,
        &[
            m("e", "go", 0.0),
            m("e", "other", 1.0),
            m("e.weird", "", 2.0),
        ],
    );
    assert_eq!(e.stats.unmatched, 2);
    let found = anomalies(&out);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].cause.event_type.as_deref(), Some("e.weird"));
}
