//! The dashboard's API (issue 14): the objects at risk and their filters, the alerts board,
//! an object's timeline and why it is not alerting, the event stream and its filters, a flow's
//! graph as JSON and SVG, the overview, and the page itself. Against a real `flowcast run` fed
//! by a real nats-server (one of each for the whole binary); the chunked top-N scan also
//! through the library, against a scan in one go.

mod common;

use common::*;
use flowcast::engine::query::{ObjectQuery, Scan, SortBy};
use flowcast::engine::Engine;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

const VOLUME: &str = "examples/nova_volume_attach/events.jsonl";

/// `b` is risky (alerts at 0.5: its risk is 0.6), `a` less so, `c` hardly.
const RISKY: &str = r#"flow risky {
    key payload.id
    initial a
    state b, c
    terminal ok
    artifact bad
    on "a" -> a
    on "b" -> b
    on "c" -> c
    on "ok" -> ok
    on "bad" -> bad
    transitions {
        a -> b 50
        a -> c 50
        b -> bad 60
        b -> ok 40
        c -> bad 10
        c -> ok 90
    }
    learn { prior_weight 1000 }
}
"#;

fn risky_engine(n: usize) -> Engine {
    let mut e = Engine::new(compile(RISKY));
    let mut out = Vec::new();
    for i in 0..n {
        let key = format!("o{i:05}");
        e.observe(&msg("a", &key, i as f64), &mut out);
        match i % 3 {
            0 => e.observe(&msg("b", &key, i as f64 + 0.5), &mut out),
            1 => e.observe(&msg("c", &key, i as f64 + 0.5), &mut out),
            _ => {}
        }
    }
    e
}

fn scan(e: &mut Engine, q: ObjectQuery, budget: usize) -> Scan {
    let mut s = Scan::new(q);
    while !s.done() {
        e.scan_objects(&mut s, budget);
    }
    s
}

#[test]
fn a_scan_in_chunks_picks_what_a_scan_in_one_go_picks() {
    let mut e = risky_engine(3000);
    for sort in [SortBy::Risk, SortBy::TimeInState] {
        let q = ObjectQuery {
            limit: 50,
            sort,
            ..ObjectQuery::default()
        };
        let whole = scan(&mut e, q.clone(), usize::MAX);
        let chunked = scan(&mut e, q, 7);
        assert_eq!(whole.calls, 1);
        assert!(chunked.calls > 400, "{} calls", chunked.calls);
        assert_eq!(whole.picks(), chunked.picks());
        assert_eq!(whole.picks().len(), 50);
        assert_eq!(chunked.scanned, 3000);
        assert_eq!(chunked.counts, whole.counts);
    }
    // Riskiest first: the alerting objects in `b`, the longest there first.
    let s = scan(
        &mut e,
        ObjectQuery {
            limit: 5,
            ..ObjectQuery::default()
        },
        usize::MAX,
    );
    let keys: Vec<String> = s.picks().iter().map(|(_, k)| k.to_string()).collect();
    assert_eq!(keys, ["o00000", "o00003", "o00006", "o00009", "o00012"]);
    // Objects per state: a, b, c, ok, bad.
    assert_eq!(s.counts, [vec![1000, 1000, 1000, 0, 0]]);
}

#[test]
fn a_scan_goes_on_when_objects_end_between_its_chunks() {
    let mut e = risky_engine(300);
    let mut s = Scan::new(ObjectQuery {
        limit: 1000,
        ..ObjectQuery::default()
    });
    e.scan_objects(&mut s, 100);
    // A third of the objects end (each removal moves the last object into the hole).
    let mut out = Vec::new();
    for i in (0..300).step_by(3) {
        e.observe(&msg("ok", &format!("o{i:05}"), 1000.0), &mut out);
    }
    while !s.done() {
        e.scan_objects(&mut s, 100);
    }
    // Every pick is a live object or one that ended after it was picked; none twice.
    let picks = s.picks();
    let mut keys: Vec<String> = picks.iter().map(|(_, k)| k.to_string()).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), picks.len());
    let rows: Vec<_> = picks
        .iter()
        .filter_map(|(f, k)| e.object_row(f, k))
        .collect();
    assert!(rows.len() >= 150, "{} rows", rows.len());
}

#[test]
fn a_scan_in_64k_chunks_lists_each_object_once_while_objects_move_between_chunks() {
    use flowcast::engine::query::SCAN_CHUNK;
    use std::collections::{BTreeMap, BTreeSet};
    // 200,000 objects: four chunks. Between chunks, objects end both where the scan has
    // looked and where it has not (each removal moves the last object, not looked at yet,
    // into the hole), new objects arrive, and objects the scan has seen end and come back
    // under the same key.
    let n = 200_000;
    // A millisecond apart, in `a`, `b` or `c` (`risky_engine`'s spread, over minutes rather
    // than days, so that none expires).
    let mut e = Engine::new(compile(RISKY));
    let mut out = Vec::new();
    for i in 0..n {
        let key = format!("o{i:06}");
        let t = i as f64 * 0.001;
        e.observe(&msg("a", &key, t), &mut out);
        match i % 3 {
            0 => e.observe(&msg("b", &key, t + 0.0005), &mut out),
            1 => e.observe(&msg("c", &key, t + 0.0005), &mut out),
            _ => {}
        }
    }
    assert_eq!(e.flows[0].objects.len(), n);
    let first: BTreeSet<String> = e.flows[0].objects.keys().map(|k| k.to_string()).collect();
    let mut s = Scan::new(ObjectQuery {
        limit: n + 10_000,
        ..ObjectQuery::default()
    });
    e.scan_objects(&mut s, SCAN_CHUNK);
    // Ended where the scan had looked, where it had not; added; ended and started again.
    let (mut seen_ended, mut unseen_ended) = (BTreeSet::new(), BTreeSet::new());
    let (mut added, mut again) = (BTreeSet::new(), BTreeSet::new());
    let mut t = n as f64 * 0.001 + 10.0;
    let mut round = 0;
    while !s.done() {
        round += 1;
        let key_at = |e: &Engine, i: usize| e.flows[0].objects.get_index(i).unwrap().0.to_string();
        // 5,000 from the front, which the scan has looked at (its place is past 50,000).
        let front: Vec<String> = (0..5_000).map(|i| key_at(&e, i * 6)).collect();
        // 1,000 from the back, which it has not.
        let len = e.flows[0].objects.len();
        let back: Vec<String> = (len - 1_000..len).map(|i| key_at(&e, i)).collect();
        // 100 seen objects end and start again under their key (a new run, at the back).
        let rerun: Vec<String> = (0..100).map(|i| key_at(&e, 30_001 + i * 7)).collect();
        for k in &front {
            e.observe(&msg("ok", k, t), &mut out);
            seen_ended.insert(k.clone());
        }
        for k in &back {
            e.observe(&msg("ok", k, t), &mut out);
            unseen_ended.insert(k.clone());
        }
        for k in &rerun {
            e.observe(&msg("ok", k, t), &mut out);
            e.observe(&msg("a", k, t + 1.0), &mut out);
            again.insert(k.clone());
        }
        for i in 0..2_000 {
            let k = format!("new{round}_{i}");
            e.observe(&msg("a", &k, t), &mut out);
            added.insert(k);
        }
        t += 10.0;
        e.scan_objects(&mut s, SCAN_CHUNK);
    }
    let picks = s.picks();
    let mut listed: BTreeMap<String, usize> = BTreeMap::new();
    for (_, k) in &picks {
        *listed.entry(k.to_string()).or_default() += 1;
    }
    // None listed twice, the objects that ran again included.
    let twice: Vec<&String> = listed
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(k, _)| k)
        .collect();
    assert!(twice.is_empty(), "listed twice: {twice:?}");
    // None lost: listed are exactly the objects in flight when the scan started or that
    // arrived during it, but those that ended before it got to them. Those that ended after
    // it had seen them are listed (their rows are gone when asked for), and those that ran
    // again once.
    let expected: BTreeSet<&String> = first
        .iter()
        .chain(&added)
        .filter(|k| !unseen_ended.contains(*k))
        .collect();
    let lost: Vec<&&String> = expected
        .iter()
        .filter(|k| !listed.contains_key(**k))
        .collect();
    assert!(
        lost.is_empty(),
        "{} lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert_eq!(listed.keys().collect::<BTreeSet<_>>(), expected);
    assert_eq!(picks.len(), n + 3 * 2_000 - 3 * 1_000);
    assert!(seen_ended.iter().all(|k| listed.contains_key(k)));
    assert!(again.iter().all(|k| listed.contains_key(k)));
    // Objects moved between chunks three times (the fourth call finished the scan).
    assert_eq!(round, 3, "{} calls", s.calls);
    // Every object looked at once: those that ran again twice (two runs, two rows counted).
    assert_eq!(s.matching, (picks.len() + again.len()) as u64);
    assert_eq!(s.counts[0].iter().sum::<u64>(), s.scanned);
}

#[test]
fn a_scan_across_a_reload_starts_the_flow_again_and_counts_each_object_once() {
    let mut e = risky_engine(3000);
    let mut s = Scan::new(ObjectQuery {
        limit: 5000,
        ..ObjectQuery::default()
    });
    e.scan_objects(&mut s, 1000);
    assert_eq!(s.scanned, 1000);
    // A reload rebuilds the flow's objects (in an order of their own): the place the scan had
    // means nothing there, so it starts the flow again, forgetting what it had from it.
    e.reload(compile(RISKY));
    while !s.done() {
        e.scan_objects(&mut s, 1000);
    }
    assert_eq!(s.calls, 4);
    let mut keys: Vec<String> = s.picks().iter().map(|(_, k)| k.to_string()).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 3000);
    assert_eq!(s.picks().len(), 3000);
    assert_eq!((s.scanned, s.matching), (3000, 3000));
    assert_eq!(s.counts, [vec![1000, 1000, 1000, 0, 0]]);
}

/// A flow in which every message after the second is a transition the file does not list:
/// one `unexpected` record per message.
const TOGGLE: &str = r#"flow toggle {
    key payload.id
    initial a
    state b, c
    on "a" -> a
    on "b" -> b
    on "c" -> c
    transitions { a -> b 1 }
    unlisted report
}
"#;

#[test]
fn a_slow_event_stream_client_is_told_how_many_records_it_missed_and_the_stream_goes_on() {
    let nats = NatsServer::start(false);
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir(&models).unwrap();
    std::fs::write(models.join("toggle.flow"), TOGGLE).unwrap();
    let svc = Service::start(
        dir.path(),
        &format!(
            "models: {}\nsource: {{ kind: nats, subjects: [\"notifications.>\"] }}\nnats: {{ url: \"{}\" }}\nclock: {{ mode: event, idle_after_ms: \"0\" }}",
            models.display(),
            nats.url()
        ),
    );
    let port = svc.http_port;
    // A client that connects, then reads nothing while 20,000 records are emitted: far more
    // than the socket buffers (a few MB on loopback) and the 4,096 records the service keeps
    // for slow clients.
    let mut slow = Events::open(port, "/api/events");
    let (objects, toggles) = (20, 1_000);
    let mut lines = String::new();
    let mut t = 0u64;
    let mut line = |key: &str, e: &str| {
        t += 1;
        let m = json!({
            "event_type": e,
            "timestamp": format!("2026-11-04 {:02}:{:02}:{:02}.{:03}000", t / 3_600_000, t / 60_000 % 60, t / 1000 % 60, t % 1000),
            "payload": {"id": key},
        });
        lines.push_str(&format!("{m}\n"));
    };
    for i in 0..objects {
        // Keys of 900 bytes: records of about 1.1 kB, 22 MB in all.
        let key = format!("object-{i:02}-{}", "x".repeat(890));
        line(&key, "a");
        line(&key, "b");
        for j in 0..toggles {
            line(&key, if j % 2 == 0 { "c" } else { "b" });
        }
    }
    let big = dir.path().join("big.jsonl");
    std::fs::write(&big, lines).unwrap();
    publish(&nats, &big, "notifications.toggle", false);
    let sent = objects * (toggles + 2);
    svc.wait_messages(sent);
    let emitted = objects * toggles;
    svc.wait_until("every record on stdout", || svc.records().len() >= emitted);
    assert_eq!(svc.records().len(), emitted);
    // Then one more object, whose record the client must get after the lag notice.
    let marker = dir.path().join("marker.jsonl");
    std::fs::write(
        &marker,
        ["a", "b", "c"]
            .iter()
            .enumerate()
            .map(|(i, e)| {
                format!(
                    "{}\n",
                    json!({"event_type": e, "timestamp": format!("2026-11-05 00:00:0{i}.000000"), "payload": {"id": "the-marker"}})
                )
            })
            .collect::<String>(),
    )
    .unwrap();
    publish(&nats, &marker, "notifications.toggle", false);
    svc.wait_messages(sent + 3);
    // Now the client reads: what the buffers held, the notice, the records still kept, the
    // marker.
    slow.read_until_contains("the-marker");
    let events = slow.events();
    let lag_at: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(|(_, (k, _))| k == "lagged")
        .map(|(i, _)| i)
        .collect();
    assert!(
        !lag_at.is_empty(),
        "no lag notice in {} events",
        events.len()
    );
    let dropped: u64 = lag_at
        .iter()
        .map(|&i| events[i].1["dropped"].as_u64().unwrap())
        .sum();
    let received = events.iter().filter(|(k, _)| k == "unexpected").count();
    eprintln!(
        "{received} records received, {dropped} skipped in {} notices, of {}",
        lag_at.len(),
        emitted + 1
    );
    // The count is exact: every record was either received or counted as skipped.
    assert!(dropped > 0);
    assert_eq!(received as u64 + dropped, emitted as u64 + 1);
    // Records before the notice and after it: the stream went on, up to the newest record.
    assert!(lag_at[0] > 0);
    let after = events[lag_at[lag_at.len() - 1] + 1..]
        .iter()
        .filter(|(k, _)| k == "unexpected")
        .count();
    assert!(after > 0);
    let (last_kind, last) = events.last().unwrap();
    assert_eq!(last_kind, "unexpected");
    assert_eq!(last["object"], "the-marker", "{last}");
    // ... and it is still open: another record reaches it.
    std::fs::write(
        &marker,
        format!(
            "{}\n",
            json!({"event_type": "b", "timestamp": "2026-11-05 00:00:09.000000", "payload": {"id": "the-marker"}})
        ),
    )
    .unwrap();
    publish(&nats, &marker, "notifications.toggle", false);
    slow.read_until_contains("2026-11-05T00:00:09");
}

/// A GET whose body is JSON: (status, body).
fn get_json(port: u16, path: &str) -> (u16, Value) {
    let (status, body) = http(port, "GET", path);
    let v = serde_json::from_str(&body).unwrap_or(Value::String(body));
    (status, v)
}

/// The raw response (head and body) of a GET.
fn get_raw(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    buf
}

/// A server-sent event stream being read.
struct Events {
    stream: TcpStream,
    text: String,
}

impl Events {
    fn open(port: u16, path: &str) -> Events {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut e = Events {
            stream,
            text: String::new(),
        };
        e.read_until("the response head", |t| t.contains("\r\n\r\n"));
        e
    }

    fn read_until(&mut self, what: &str, done: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut buf = [0u8; 65536];
        while !done(&self.text) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; got:\n{}",
                self.text
            );
            match self.stream.read(&mut buf) {
                Ok(0) => panic!("the event stream ended; got:\n{}", self.text),
                Ok(n) => self.text.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(_) => {}
            }
        }
    }

    /// Reads until `needle` is in what this call reads, searching only what is new each time
    /// (the text grows to megabytes).
    fn read_until_contains(&mut self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut buf = vec![0u8; 1 << 20];
        let mut from = self.text.len();
        loop {
            if self.text[from..].contains(needle) {
                return;
            }
            from = self.text.len().saturating_sub(needle.len());
            while !self.text.is_char_boundary(from) {
                from -= 1;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {needle}; read {} bytes",
                self.text.len()
            );
            match self.stream.read(&mut buf) {
                Ok(0) => panic!("the event stream ended after {} bytes", self.text.len()),
                Ok(n) => self.text.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(_) => {}
            }
        }
    }

    /// (event, data) of every event read so far.
    fn events(&self) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        let mut kind = String::new();
        for line in self.text.lines() {
            if let Some(k) = line.strip_prefix("event: ") {
                kind = k.to_string();
            } else if let Some(d) = line.strip_prefix("data: ") {
                out.push((kind.clone(), serde_json::from_str(d).unwrap_or(Value::Null)));
            }
        }
        out
    }
}

/// Four patent requests left in flight: r1 at Y (FIG. 11: alerts), r2 at process_start, r3 at
/// Z, r4 just requested.
fn patent_in_flight(path: &Path) {
    let mut lines = String::new();
    let steps: [(&str, &[&str]); 4] = [
        (
            "r1",
            &["disk.attach.request", "xyz.start", "xyz.x", "xyz.y"],
        ),
        ("r2", &["disk.attach.request", "xyz.start"]),
        (
            "r3",
            &["disk.attach.request", "xyz.start", "xyz.x", "xyz.z"],
        ),
        ("r4", &["disk.attach.request"]),
    ];
    let mut t = 0;
    for (key, events) in steps {
        for e in events {
            t += 1;
            let m = json!({
                "event_type": e,
                "timestamp": format!("2026-11-04 09:00:{t:02}.000000"),
                "payload": {"request_id": key},
            });
            lines.push_str(&format!("{m}\n"));
        }
    }
    std::fs::write(path, lines).unwrap();
}

fn keys(v: &Value) -> Vec<String> {
    v["objects"]
        .as_array()
        .unwrap_or_else(|| panic!("no objects in {v}"))
        .iter()
        .map(|o| o["object"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn every_dashboard_endpoint_and_filter_on_a_live_service() {
    let nats = NatsServer::start(false);
    let dir = tempfile::tempdir().unwrap();
    let svc = Service::start(
        dir.path(),
        &format!(
            "models: models\nsource: {{ kind: nats, subjects: [\"notifications.>\"] }}\nnats: {{ url: \"{}\" }}\nclock: {{ mode: event, idle_after_ms: \"0\" }}",
            nats.url()
        ),
    );
    let port = svc.http_port;
    // Streams opened before anything is published: all of it, and the patent flow's alerts.
    let mut all = Events::open(port, "/api/events");
    assert!(all.text.contains("text/event-stream"), "{}", all.text);
    let mut patent_alerts = Events::open(port, "/api/events?flow=patent_disk_attach&type=alert");
    publish(&nats, Path::new(VOLUME), "notifications.nova", false);
    let inflight = dir.path().join("inflight.jsonl");
    patent_in_flight(&inflight);
    publish(&nats, &inflight, "notifications.patent", false);
    let total = std::fs::read_to_string(VOLUME).unwrap().lines().count() + 11;
    svc.wait_messages(total);

    // --- /api/events: every record, and the filters.
    patent_alerts.read_until("r1's alert", |t| t.contains("\"object\":\"r1\""));
    let seen = patent_alerts.events();
    assert!(!seen.is_empty());
    for (kind, data) in &seen {
        assert_eq!(kind, "alert");
        assert_eq!(data["flow"], "patent_disk_attach");
    }
    all.read_until("r1's alert on the unfiltered stream", |t| {
        t.contains("\"object\":\"r1\"")
    });
    let every = all.events();
    let count = |k: &str| every.iter().filter(|(kind, _)| kind == k).count();
    assert_eq!(count("alert"), 6, "five volume alerts and r1's");
    assert!(count("resolved") >= 5 && count("outcome") >= 90);
    let (status, _) = http(port, "GET", "/api/events?colour=red");
    assert_eq!(status, 400);

    // --- /api/objects: riskiest first, alerting first.
    let (status, v) = get_json(port, "/api/objects");
    assert_eq!(status, 200, "{v}");
    assert_eq!(keys(&v), ["r1", "r2", "r4", "r3"]);
    assert_eq!(v["matching"], 4);
    let r1 = &v["objects"][0];
    assert_eq!(r1["alerting"], true);
    assert_eq!(r1["state"], "y");
    assert_eq!(r1["state_risk"], 0.133333);
    assert_eq!(r1["top_artifact"], "time_threshold_failure");
    assert!(r1["alerting_since"].is_string());
    assert!(r1["time_in_state_ms"].is_i64() && r1["expected_remaining_ms"].is_number());
    // Filters.
    let (_, v) = get_json(
        port,
        "/api/objects?flow=patent_disk_attach&state=process_start",
    );
    assert_eq!(keys(&v), ["r2"]);
    let (_, v) = get_json(port, "/api/objects?min_risk=0.041");
    assert_eq!(keys(&v), ["r1", "r2"]);
    let (_, v) = get_json(port, "/api/objects?alerting=true");
    assert_eq!(keys(&v), ["r1"]);
    let (_, v) = get_json(port, "/api/objects?limit=2");
    assert_eq!(keys(&v), ["r1", "r2"]);
    assert_eq!(v["matching"], 4);
    let (_, v) = get_json(port, "/api/objects?sort=time");
    assert_eq!(keys(&v), ["r1", "r2", "r3", "r4"], "longest in state first");
    let (_, v) = get_json(port, "/api/objects?flow=nova_volume_attach");
    assert_eq!(keys(&v), Vec::<String>::new());
    let (_, v) = get_json(port, "/api/objects?state=nowhere");
    assert_eq!(v["matching"], 0);
    assert_eq!(http(port, "GET", "/api/objects?flow=nope").0, 404);
    for bad in [
        "min_risk=2",
        "limit=x",
        "sort=colour",
        "alerting=maybe",
        "colour=red",
    ] {
        let (status, body) = http(port, "GET", &format!("/api/objects?{bad}"));
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(
            body.contains("must be") || body.contains("unknown parameter"),
            "{body}"
        );
    }

    // --- /api/objects/{key}: the timeline, and why not alerting.
    let (_, v) = get_json(port, "/api/objects/r1");
    let f = &v["flows"][0];
    let steps = f["timeline"]["steps"].as_array().unwrap();
    let names: Vec<(&str, &str)> = steps
        .iter()
        .map(|s| (s["step"].as_str().unwrap(), s["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        names,
        [
            ("entered", "api_request"),
            ("moved", "process_start"),
            ("moved", "x"),
            ("moved", "y"),
            ("alert", "y"),
        ]
    );
    // The probability the model gave each step (FIG. 10's counts) and the risk after it.
    assert_eq!(steps[1]["probability"], 0.97);
    assert_eq!(steps[3]["from"], "x");
    assert_eq!(steps[3]["risk"], 0.133333);
    assert_eq!(f["timeline"]["cut"], false);
    assert!(f["why_not_alerting"].is_null(), "r1 is alerting");
    let (_, v) = get_json(port, "/api/objects/r2");
    let why = &v["flows"][0]["why_not_alerting"];
    assert!(
        why["reason"]
            .as_str()
            .unwrap()
            .contains("below its threshold"),
        "{why}"
    );
    let levels = why["artifacts"].as_array().unwrap();
    assert_eq!(levels.len(), 4);
    for l in levels {
        assert_eq!(l["threshold"], 0.1);
        assert!(l["risk"].as_f64().unwrap() < 0.1);
    }

    // --- /api/alerts: the volume stream's five have resolved, r1's fires.
    let (status, v) = get_json(port, "/api/alerts");
    assert_eq!(status, 200);
    let firing = v["firing"].as_array().unwrap();
    assert_eq!(firing.len(), 1);
    assert_eq!(firing[0]["object"], "r1");
    assert_eq!(firing[0]["what"], "time_threshold_failure");
    assert!(firing[0]["since"].is_string());
    let resolved = v["resolved"].as_array().unwrap();
    assert_eq!(resolved.len(), 5);
    for r in resolved {
        assert_eq!(r["flow"], "nova_volume_attach");
        assert!(r["since"].is_string() && r["resolved_at"].is_string());
    }

    // --- /api/flows/{name}/graph: JSON with live counts, and SVG.
    let (status, g) = get_json(port, "/api/flows/patent_disk_attach/graph");
    assert_eq!(status, 200);
    let state = |n: &str| {
        g["states"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == n)
            .cloned()
            .unwrap()
    };
    assert_eq!(state("y")["in_state"], 1);
    assert_eq!(state("y")["risk"]["time_threshold_failure"], 0.133333);
    assert_eq!(state("y")["risk"]["error_state_failure"], 0.1);
    assert_eq!(state("api_request")["layer"], 0);
    assert_eq!(state("y")["layer"], 3);
    assert_eq!(state("http_5xx")["threshold"], 0.1);
    assert_eq!(g["in_flight"], 4);
    let edge = g["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["from"] == "x" && e["to"] == "y")
        .cloned()
        .unwrap();
    assert_eq!(edge["observed"], 1.0);
    let svg = get_raw(port, "/api/flows/patent_disk_attach/graph?format=svg");
    assert!(svg.contains("image/svg+xml"), "{svg}");
    assert!(svg.contains("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<g class=\"node").count(), 11);
    assert!(svg.contains("time_threshold_failure: 0.1333"));
    assert!(svg.contains(r#"data-state="y" data-in-state="1""#));
    assert_eq!(http(port, "GET", "/api/flows/nope/graph").0, 404);
    assert_eq!(
        http(
            port,
            "GET",
            "/api/flows/patent_disk_attach/graph?format=png"
        )
        .0,
        400
    );

    // --- /api/overview.
    let (_, o) = get_json(port, "/api/overview");
    let patent = o["flows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "patent_disk_attach")
        .cloned()
        .unwrap();
    assert_eq!(patent["in_flight"], 4);
    assert_eq!(patent["firing"], 1);
    assert_eq!(patent["matched"], 11);
    assert_eq!(o["messages"]["total"], total);
    assert_eq!(o["reload"]["ok"], true);
    assert!(o["reload"]["error"].is_null());
    assert_eq!(o["nats_connected"], true);
    assert_eq!(o["event_listeners"], 2);

    // --- The page and its assets, from the binary.
    let page = get_raw(port, "/");
    assert!(page.contains("text/html") && page.contains("<noscript>"));
    assert!(
        page.contains("script-src 'self'"),
        "a content security policy"
    );
    assert!(page.contains("/api/objects") && page.contains("/api/alerts"));
    let js = get_raw(port, "/assets/dashboard.js");
    assert!(js.contains("text/javascript") && js.contains("EventSource"));
    assert!(get_raw(port, "/assets/dashboard.css").contains("text/css"));
    assert!(get_raw(port, "/flows/patent_disk_attach").contains("<noscript>"));

    drop(all);
    drop(patent_alerts);
    svc.stop();
}

#[test]
fn a_broken_flow_file_is_on_the_overview_until_it_is_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    std::fs::write(models.join("risky.flow"), RISKY).unwrap();
    let (svc, _stdin) = start_with_stdin(
        dir.path(),
        &format!(
            "models: {:?}\nsource: {{ kind: file, path: \"-\" }}",
            models.display().to_string()
        ),
    );
    let port = svc.http_port;
    svc.wait_until("ready", || http(port, "GET", "/readyz").0 == 200);
    std::fs::write(
        models.join("risky.flow"),
        RISKY.replace("-> bad\n", "-> worse\n"),
    )
    .unwrap();
    svc.wait_until("the reload error on the overview", || {
        get_json(port, "/api/overview").1["reload"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("worse") && e.contains("risky.flow"))
    });
    let (_, o) = get_json(port, "/api/overview");
    assert_eq!(o["reload"]["ok"], false);
    assert_eq!(o["reload"]["failed_total"], 1);
    std::fs::write(models.join("risky.flow"), RISKY).unwrap();
    svc.wait_until("the error cleared", || {
        get_json(port, "/api/overview").1["reload"]["error"].is_null()
    });
    assert_eq!(get_json(port, "/api/overview").1["reload"]["ok"], true);
}

#[test]
fn alerts_firing_before_a_restart_are_listed_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "models: models\nstate_dir: {:?}\nsource: {{ kind: file, path: \"-\" }}\nclock: {{ mode: event, idle_after_ms: \"0\" }}",
        dir.path().join("state").display().to_string()
    );
    let (svc, mut stdin) = start_with_stdin(dir.path(), &config);
    let port = svc.http_port;
    let inflight = dir.path().join("inflight.jsonl");
    patent_in_flight(&inflight);
    stdin.write_all(&std::fs::read(&inflight).unwrap()).unwrap();
    stdin.flush().unwrap();
    svc.wait_until("r1's alert", || {
        get_json(port, "/api/alerts").1["firing"]
            .as_array()
            .is_some_and(|f| f.iter().any(|a| a["object"] == "r1"))
    });
    let before = get_json(port, "/api/alerts").1["firing"][0].clone();
    svc.stop();
    drop(stdin);

    let (svc, _stdin) = start_with_stdin(dir.path(), &config);
    let port = svc.http_port;
    svc.wait_until("ready", || http(port, "GET", "/readyz").0 == 200);
    let (_, v) = get_json(port, "/api/alerts");
    let firing = v["firing"].as_array().unwrap();
    assert_eq!(firing.len(), 1, "{v}");
    for field in ["object", "flow", "state", "since", "what"] {
        assert_eq!(firing[0][field], before[field], "{field}");
    }
    assert_eq!(firing[0]["probability"], 0.133333);
    // Its steps before the restart are not in the journal: the timeline says it is cut.
    let (_, o) = get_json(port, "/api/objects/r1");
    assert_eq!(o["flows"][0]["timeline"]["cut"], true, "{o}");
}

/// A chain of `n` states (a retry loop every ten) with `anomaly off`: big enough that its
/// solve is paid for over several calls, so that an extra call to the solver would move the
/// solve schedule.
fn chain_without_anomaly(n: usize) -> String {
    let mut src = String::from("flow c {\n key payload.id\n initial s0\n");
    for i in 1..n - 2 {
        src.push_str(&format!(" state s{i}\n"));
    }
    src.push_str(&format!(" terminal s{}\n artifact s{}\n", n - 2, n - 1));
    for i in 0..n {
        src.push_str(&format!(" on \"s{i}\" -> s{i}\n"));
    }
    src.push_str(" transitions {\n");
    for i in 0..n - 2 {
        src.push_str(&format!(
            "  s{i} -> s{} 10\n  s{i} -> s{} 1\n",
            i + 1,
            n - 1
        ));
        if i % 10 == 9 {
            src.push_str(&format!("  s{i} -> s{} 2\n", i - 5));
        }
    }
    src.push_str(" }\n anomaly off\n}\n");
    src
}

#[test]
fn the_journal_changes_no_record_of_a_flow_without_anomaly_scoring() {
    let flows = compile(&chain_without_anomaly(60));
    let mut plain = Engine::new(flows.clone());
    let mut journaled = Engine::new(flows);
    journaled.journal = Some(flowcast::engine::journal::Journal::new(1024));
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let mut t = 0.0;
    for round in 0..15 {
        for o in 0..20 {
            let key = format!("o{round}-{o}");
            // Each object walks a stretch of the chain, some back through a retry loop.
            let stops = 5 + (o * 7 + round) % 40;
            for s in 0..stops {
                t += 1.0;
                let state = if s > 12 && s % 11 == 0 { s - 5 } else { s };
                plain.observe(&msg(&format!("s{state}"), &key, t), &mut a);
                journaled.observe(&msg(&format!("s{state}"), &key, t), &mut b);
            }
        }
    }
    assert!(a.len() > 100, "{} records", a.len());
    // The first record that differs, rather than two thousand of them.
    if let Some(i) = (0..a.len().max(b.len())).find(|&i| a.get(i) != b.get(i)) {
        panic!(
            "record {i} differs:\nwithout the journal {:?}\nwith it {:?}",
            a.get(i),
            b.get(i)
        );
    }
}
