//! `flowcast test PATH...`: test files (YAML) that state what flows must do with given messages,
//! in the spirit of `promtool test rules`.
//!
//! A test file names the flows under test, and each of its tests gives messages (inline, with
//! times or offsets, or a JSONL file) and what must come out: alerts, resolutions, outcomes,
//! anomalies, unexpected transitions, the state and risk of an object at a time, counters. Each
//! test runs a fresh engine on event time only (no wall clock, no learned state), so a test
//! gives the same answer on every machine. The format is documented in grammar/README.md.
//!
//! Comparison: a section given under `expect` must match the records of that kind one to one,
//! in order; only the fields an expected item gives are compared. Sections not given are not
//! checked. `--update` writes the file with every given section (all of them, for a test that
//! expects nothing yet) replaced by what came out, as `FILE.new` beside it, for review.

use super::ExitCode;
use crate::engine::key::ObjectKey;
use crate::engine::message::{decode, from_value, Message};
use crate::engine::output::Record;
use crate::engine::time::{format_rfc3339, parse_str};
use crate::engine::Engine;
use crate::model::{self, CompiledFlow};
use crate::syntax::{format_duration_ms, parse_duration_ms};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// Test files, or directories (every `*.test.yaml` below them).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Write each test file's actual output as `FILE.new` beside it, for review.
    #[arg(long)]
    pub update: bool,
}

/// Where offsets count from when a test file says nothing and its messages carry no time.
const DEFAULT_START: &str = "2026-01-01T00:00:00Z";

/// Tolerance of an expected probability given as one number rather than a range.
const PROBABILITY_TOLERANCE: f64 = 0.001;

/// Half the width of the probability ranges `--update` writes.
const UPDATE_MARGIN: f64 = 0.01;

/// One test file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    /// Flow files or directories, relative to the test file; none: the `.flow` files of its
    /// directory.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flows: Vec<String>,
    /// Where `at` offsets count from (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    pub tests: Vec<TestCase>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    pub name: String,
    /// Messages, each a JSON object; `at` (an offset like `90s`, or an RFC 3339 time) sets its
    /// timestamp.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<Value>,
    /// A JSONL file of messages, relative to the test file (after the inline ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages_file: Option<String>,
    /// Run the clock to this time after the last message, so that timers fire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    #[serde(default)]
    pub expect: Expect,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<Vec<ExpRecord>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved: Option<Vec<ExpRecord>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcomes: Option<Vec<ExpRecord>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anomalies: Option<Vec<ExpRecord>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unexpected: Option<Vec<ExpRecord>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub states: Option<Vec<ExpState>>,
    /// Engine counters by name (`unmatched`, `missing_key`, `alerts`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<BTreeMap<String, u64>>,
}

/// An expected record: the fields given are compared, the others are not.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExpRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probability: Option<Range>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<TimeSpec>,
}

/// An expected object state at a time.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExpState {
    pub at: String,
    /// May be left out when the file tests one flow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<String>,
    pub object: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// The probability of each artifact named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk: Option<BTreeMap<String, Range>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerting: Option<bool>,
}

/// A probability: one number (within 0.001), or `[low, high]`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Range {
    Exactly(f64),
    Within([f64; 2]),
}

impl Range {
    fn contains(self, x: f64) -> bool {
        match self {
            Range::Exactly(v) => (x - v).abs() <= PROBABILITY_TOLERANCE,
            Range::Within([lo, hi]) => lo <= x && x <= hi,
        }
    }

    fn around(x: f64) -> Range {
        let r = |v: f64| (v * 1000.0).round() / 1000.0;
        Range::Within([
            r((x - UPDATE_MARGIN).max(0.0)),
            r((x + UPDATE_MARGIN).min(1.0)),
        ])
    }
}

/// A time: an offset from `start` (`90s`, `1h30m`) or an RFC 3339 time; or `[from, to]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum TimeSpec {
    At(String),
    Between([String; 2]),
}

/// A test file that could not be run: its path and why.
#[derive(Debug)]
struct FileError(String);

/// Reads a time as an offset from `start` or an absolute RFC 3339 time.
fn time_of(text: &str, start: i64) -> Result<i64, String> {
    if let Some(ms) = parse_duration_ms(text.trim()) {
        return Ok(start.saturating_add(ms));
    }
    if text.trim() == "0" {
        return Ok(start);
    }
    parse_str(text.trim()).ok_or_else(|| {
        format!("`{text}` is neither an offset (like `90s`, `1h30m`) nor an RFC 3339 time")
    })
}

/// How a time reads in a report: its offset from `start`.
fn show_time(ms: i64, start: i64) -> String {
    if ms >= start {
        format_duration_ms(ms - start)
    } else {
        format_rfc3339(ms)
    }
}

impl TimeSpec {
    fn contains(&self, ms: i64, start: i64) -> Result<bool, String> {
        Ok(match self {
            TimeSpec::At(t) => time_of(t, start)? == ms,
            TimeSpec::Between([a, b]) => time_of(a, start)? <= ms && ms <= time_of(b, start)?,
        })
    }
}

pub fn run(args: TestArgs) -> anyhow::Result<ExitCode> {
    let files = match collect_test_files(&args.paths) {
        Ok(f) if f.is_empty() => {
            eprintln!(
                "error: no test files (`*.test.yaml`) in {}",
                args.paths
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            return Ok(ExitCode::Usage);
        }
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::Usage);
        }
    };
    let (mut passed, mut failed, mut broken) = (0usize, 0usize, 0usize);
    let mut flow_errors = false;
    for path in &files {
        match run_file(path, args.update) {
            Ok(report) => {
                print!("{}", report.text);
                passed += report.passed;
                failed += report.failed;
            }
            Err(FileOutcome::Flows(text)) => {
                eprint!("{text}");
                println!("test {}: the flows under test have errors", path.display());
                flow_errors = true;
                broken += 1;
            }
            Err(FileOutcome::Broken(FileError(e))) => {
                println!("test {}: {e}", path.display());
                broken += 1;
            }
        }
    }
    println!(
        "\n{} passed, {} failed{} ({} file{})",
        passed,
        failed,
        if broken > 0 {
            format!(", {broken} file(s) could not be run")
        } else {
            String::new()
        },
        files.len(),
        if files.len() == 1 { "" } else { "s" }
    );
    Ok(if broken > 0 && !flow_errors {
        ExitCode::Usage
    } else if failed > 0 || flow_errors {
        ExitCode::InputErrors
    } else {
        ExitCode::Ok
    })
}

enum FileOutcome {
    /// The flows under test do not compile: the rendered diagnostics.
    Flows(String),
    Broken(FileError),
}

impl From<FileError> for FileOutcome {
    fn from(e: FileError) -> Self {
        FileOutcome::Broken(e)
    }
}

struct FileReport {
    text: String,
    passed: usize,
    failed: usize,
}

/// Every `*.test.yaml` below the paths (a file given by name is taken whatever its name), in
/// name order.
fn collect_test_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
        if meta.is_dir() {
            walk(p, &mut out).map_err(|e| format!("{}: {e}", p.display()))?;
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out)?;
        } else if p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(".test.yaml") || n.ends_with(".test.yml"))
        {
            out.push(p);
        }
    }
    Ok(())
}

fn run_file(path: &Path, update: bool) -> Result<FileReport, FileOutcome> {
    let text = std::fs::read_to_string(path).map_err(|e| FileError(e.to_string()))?;
    let file: TestFile =
        serde_norway::from_str(&text).map_err(|e| FileError(format!("not a test file: {e}")))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let flow_paths: Vec<PathBuf> = if file.flows.is_empty() {
        vec![if base.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            base.to_path_buf()
        }]
    } else {
        file.flows.iter().map(|f| base.join(f)).collect()
    };
    let comp = model::load(&flow_paths).map_err(|e| FileError(e.to_string()))?;
    if comp.has_errors() {
        return Err(FileOutcome::Flows(comp.render()));
    }
    let flows = comp.flows;
    let mut report = FileReport {
        text: format!("test {}\n", path.display()),
        passed: 0,
        failed: 0,
    };
    let mut updated = file.clone();
    for (i, case) in file.tests.iter().enumerate() {
        let outcome = run_case(&file, case, base, &flows);
        match outcome {
            Ok((failures, actual)) => {
                if failures.is_empty() {
                    report.passed += 1;
                    let _ = writeln!(report.text, "  ok    {}", case.name);
                } else {
                    report.failed += 1;
                    let _ = writeln!(report.text, "  FAIL  {}", case.name);
                    for f in &failures {
                        for line in f.lines() {
                            let _ = writeln!(report.text, "        {line}");
                        }
                    }
                }
                updated.tests[i].expect = actual;
            }
            Err(e) => {
                report.failed += 1;
                let _ = writeln!(report.text, "  FAIL  {}\n        {e}", case.name);
            }
        }
    }
    if update {
        let mut new = path.as_os_str().to_owned();
        new.push(".new");
        let new = PathBuf::from(new);
        let yaml =
            to_yaml(&updated).map_err(|e| FileError(format!("cannot write the update: {e}")))?;
        std::fs::write(&new, yaml).map_err(|e| FileError(format!("{}: {e}", new.display())))?;
        let _ = writeln!(
            report.text,
            "  wrote {} (the actual output): review it, then move it over the test file",
            new.display()
        );
    }
    Ok(report)
}

/// The time a test's offsets count from: the file's `start`; else, when no inline message
/// gives an `at`, the time of the first message that has one; else 2026-01-01T00:00:00Z.
fn start_of(file: &TestFile, case: &TestCase, base: &Path) -> Result<i64, String> {
    if let Some(s) = &file.start {
        return parse_str(s).ok_or_else(|| format!("start: `{s}` is not an RFC 3339 time"));
    }
    let default = parse_str(DEFAULT_START).unwrap_or(0);
    if case.messages.iter().any(|m| m.get("at").is_some()) {
        return Ok(default);
    }
    let messages = messages_of(case, base, default)?;
    Ok(messages.iter().find_map(|m| m.time_ms).unwrap_or(default))
}

/// The messages of a test, decoded, in the order given.
fn messages_of(case: &TestCase, base: &Path, start: i64) -> Result<Vec<Message>, String> {
    let mut out = Vec::new();
    for (i, m) in case.messages.iter().enumerate() {
        let mut m = m.clone();
        if let Some(obj) = m.as_object_mut() {
            if let Some(at) = obj.remove("at") {
                let text = match &at {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let ms =
                    time_of(&text, start).map_err(|e| format!("message {}: at: {e}", i + 1))?;
                obj.insert("timestamp".into(), format_rfc3339(ms).into());
            }
        }
        out.push(from_value(m).map_err(|e| format!("message {}: {e}", i + 1))?);
    }
    if let Some(f) = &case.messages_file {
        let path = base.join(f);
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
            let line = line.trim_ascii();
            if line.is_empty() {
                continue;
            }
            out.push(decode(line).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))?);
        }
    }
    Ok(out)
}

/// Runs one test: the failures (empty when it passes) and the actual output in the shape of
/// its expectations.
fn run_case(
    file: &TestFile,
    case: &TestCase,
    base: &Path,
    flows: &[CompiledFlow],
) -> Result<(Vec<String>, Expect), String> {
    let start = start_of(file, case, base)?;
    let messages = messages_of(case, base, start)?;
    let mut engine = Engine::new(flows.to_vec());
    let mut records = Vec::new();
    // State checks happen after every message stamped at or before their time.
    let mut queries: Vec<(i64, usize)> = Vec::new();
    for (i, q) in case.expect.states.iter().flatten().enumerate() {
        queries.push((
            time_of(&q.at, start).map_err(|e| format!("states: at: {e}"))?,
            i,
        ));
    }
    queries.sort();
    let mut queries = queries.into_iter().peekable();
    let mut states: Vec<Option<crate::engine::Prediction>> =
        vec![None; case.expect.states.as_ref().map_or(0, Vec::len)];
    let single_flow = (flows.len() == 1).then(|| flows[0].name.clone());
    let mut query = |engine: &mut Engine, records: &mut Vec<Record>, at: i64, i: usize| {
        engine.advance(at, records);
        let q = &case
            .expect
            .states
            .as_ref()
            .expect("queries come from states")[i];
        let Some(flow) = q.flow.clone().or(single_flow.clone()) else {
            return Err(format!(
                "states: object `{}`: say which flow (`flow: NAME`): the file tests several",
                q.object
            ));
        };
        let Some(fi) = engine.flow_index(&flow) else {
            return Err(format!("states: no flow named `{flow}`"));
        };
        states[i] = engine.predict_object(fi, &ObjectKey::parse(&q.object));
        Ok(())
    };
    for m in &messages {
        while let Some(&(at, i)) = queries.peek() {
            if m.time_ms.is_some_and(|t| t <= at) {
                break;
            }
            queries.next();
            query(&mut engine, &mut records, at, i)?;
        }
        engine.observe(m, &mut records);
    }
    let until = match &case.until {
        Some(u) => Some(time_of(u, start).map_err(|e| format!("until: {e}"))?),
        None => None,
    };
    for (at, i) in queries {
        if let Some(u) = until.filter(|u| *u < at) {
            engine.advance(u, &mut records);
        }
        query(&mut engine, &mut records, at, i)?;
    }
    if let Some(u) = until {
        engine.advance(u, &mut records);
    }
    let stats = serde_json::to_value(&engine.stats).map_err(|e| e.to_string())?;
    compare(case, start, &records, &states, &stats)
}

/// The kind of record each `expect` section lists.
const SECTIONS: [&str; 5] = ["alerts", "resolved", "outcomes", "anomalies", "unexpected"];

fn section_of(r: &Record) -> Option<&'static str> {
    Some(match r {
        Record::Alert(_) => "alerts",
        Record::Resolved(_) => "resolved",
        Record::Outcome(_) => "outcomes",
        Record::Anomaly(_) => "anomalies",
        Record::Unexpected(_) => "unexpected",
        Record::Prediction(_) | Record::AnomalyResolved(_) => return None,
    })
}

/// The fields `--update` writes for each kind of record.
fn fields_of(section: &str) -> &'static [&'static str] {
    match section {
        "alerts" => &["flow", "object", "state", "artifact", "probability", "at"],
        "resolved" => &["flow", "object", "state", "reason", "at"],
        "outcomes" => &["flow", "object", "outcome", "kind", "at"],
        "anomalies" => &["flow", "object", "from", "state", "at"],
        _ => &["flow", "object", "from", "to", "at"],
    }
}

fn compare(
    case: &TestCase,
    start: i64,
    records: &[Record],
    states: &[Option<crate::engine::Prediction>],
    stats: &Value,
) -> Result<(Vec<String>, Expect), String> {
    let mut failures = Vec::new();
    let mut actual = Expect::default();
    let exp = &case.expect;
    let nothing_expected = SECTIONS.iter().all(|s| section(exp, s).is_none())
        && exp.states.is_none()
        && exp.counts.is_none();
    for name in SECTIONS {
        let got: Vec<Value> = records
            .iter()
            .filter(|r| section_of(r) == Some(name))
            .filter_map(|r| serde_json::to_value(r).ok())
            .collect();
        let expected = section(exp, name);
        if expected.is_none() && !nothing_expected {
            continue;
        }
        let written: Vec<ExpRecord> = got
            .iter()
            .map(|g| actual_record(g, fields_of(name), start))
            .collect();
        set_section(&mut actual, name, written.clone());
        let Some(expected) = expected else { continue };
        let mut lines = Vec::new();
        for i in 0..expected.len().max(got.len()) {
            match (expected.get(i), got.get(i).zip(written.get(i))) {
                (Some(e), Some((g, w))) => {
                    let diffs = differences(e, g, start)?;
                    if !diffs.is_empty() {
                        lines.push(format!("- expected {}", show_exp(e)));
                        let mut shown = restrict(w, e);
                        // The diff shows the probability itself, not the range an update writes.
                        if shown.probability.is_some() {
                            shown.probability = g
                                .get("probability")
                                .and_then(Value::as_f64)
                                .map(|p| Range::Exactly(crate::engine::round6(p)));
                        }
                        lines.push(format!("+ got      {}", show_exp(&shown)));
                        lines.push(format!("  ({})", diffs.join("; ")));
                    }
                }
                (Some(e), None) => {
                    lines.push(format!("- expected {}", show_exp(e)));
                    lines.push("+ got      nothing".into());
                }
                (None, Some((_, w))) => {
                    lines.push(format!("+ got      {}", show_exp(w)));
                }
                (None, None) => {}
            }
        }
        if !lines.is_empty() {
            failures.push(format!(
                "{name}: expected {}, got {}\n{}",
                expected.len(),
                got.len(),
                lines.join("\n")
            ));
        }
    }
    if let Some(qs) = &exp.states {
        let mut written = Vec::new();
        for (q, p) in qs.iter().zip(states) {
            let mut w = ExpState {
                at: q.at.clone(),
                flow: q.flow.clone(),
                object: q.object.clone(),
                ..ExpState::default()
            };
            let Some(p) = p else {
                failures.push(format!(
                    "states: at {}: object `{}` is not in flight (never seen, or finished)",
                    q.at, q.object
                ));
                written.push(w);
                continue;
            };
            w.state = Some(p.state.clone());
            w.risk = Some(
                p.risk
                    .iter()
                    .map(|(k, v)| (k.clone(), Range::around(*v)))
                    .collect(),
            );
            if q.alerting.is_some() {
                w.alerting = Some(p.alerting);
            }
            let mut diffs = Vec::new();
            if let Some(s) = &q.state {
                if *s != p.state {
                    diffs.push(format!("state: expected `{s}`, got `{}`", p.state));
                }
            }
            for (artifact, range) in q.risk.iter().flatten() {
                match p.risk.get(artifact) {
                    Some(x) if range.contains(*x) => {}
                    Some(x) => diffs.push(format!(
                        "risk of `{artifact}`: expected {}, got {x:.6}",
                        show_range(*range)
                    )),
                    None => diffs.push(format!(
                        "risk of `{artifact}`: the flow has no such artifact (it has {})",
                        p.risk.keys().cloned().collect::<Vec<_>>().join(", ")
                    )),
                }
            }
            if let Some(a) = q.alerting {
                if a != p.alerting {
                    diffs.push(format!("alerting: expected {a}, got {}", p.alerting));
                }
            }
            if !diffs.is_empty() {
                failures.push(format!(
                    "states: at {}, object `{}`:\n{}",
                    q.at,
                    q.object,
                    diffs
                        .iter()
                        .map(|d| format!("  {d}"))
                        .collect::<Vec<_>>()
                        .join("\n")
                ));
            }
            written.push(w);
        }
        actual.states = Some(written);
    }
    let default_counts = ["unmatched", "missing_key"];
    let count_names: Vec<String> = match &exp.counts {
        Some(c) => c.keys().cloned().collect(),
        None if nothing_expected => default_counts.iter().map(|s| s.to_string()).collect(),
        None => Vec::new(),
    };
    if !count_names.is_empty() {
        let mut written = BTreeMap::new();
        for name in count_names {
            let Some(got) = stats.get(&name).and_then(Value::as_u64) else {
                let known: Vec<&str> = stats
                    .as_object()
                    .map(|o| o.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                let hint = crate::diagnostic::did_you_mean(&name, known.iter().copied())
                    .map(|k| format!(" (did you mean `{k}`?)"))
                    .unwrap_or_default();
                return Err(format!(
                    "counts: no counter `{name}`{hint}; the counters are {}",
                    known.join(", ")
                ));
            };
            if let Some(want) = exp.counts.as_ref().and_then(|c| c.get(&name)) {
                if *want != got {
                    failures.push(format!("counts: {name}: expected {want}, got {got}"));
                }
            }
            written.insert(name, got);
        }
        actual.counts = Some(written);
    }
    Ok((failures, actual))
}

fn section<'e>(e: &'e Expect, name: &str) -> Option<&'e Vec<ExpRecord>> {
    match name {
        "alerts" => e.alerts.as_ref(),
        "resolved" => e.resolved.as_ref(),
        "outcomes" => e.outcomes.as_ref(),
        "anomalies" => e.anomalies.as_ref(),
        _ => e.unexpected.as_ref(),
    }
}

fn set_section(e: &mut Expect, name: &str, v: Vec<ExpRecord>) {
    let slot = match name {
        "alerts" => &mut e.alerts,
        "resolved" => &mut e.resolved,
        "outcomes" => &mut e.outcomes,
        "anomalies" => &mut e.anomalies,
        _ => &mut e.unexpected,
    };
    *slot = Some(v);
}

/// The fields of an expected record, by name, with their expected text.
fn given(e: &ExpRecord) -> Vec<(&'static str, Option<&String>)> {
    vec![
        ("flow", e.flow.as_ref()),
        ("object", e.object.as_ref()),
        ("state", e.state.as_ref()),
        ("artifact", e.artifact.as_ref()),
        ("severity", e.severity.as_ref()),
        ("outcome", e.outcome.as_ref()),
        ("kind", e.kind.as_ref()),
        ("from", e.from.as_ref()),
        ("to", e.to.as_ref()),
        ("reason", e.reason.as_ref()),
    ]
}

/// What differs between an expected record and an actual one (as JSON).
fn differences(e: &ExpRecord, g: &Value, start: i64) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for (name, want) in given(e) {
        let Some(want) = want else { continue };
        match g.get(name).and_then(Value::as_str) {
            Some(got) if got == want => {}
            Some(got) => out.push(format!("{name}: expected `{want}`, got `{got}`")),
            None => out.push(format!(
                "{name}: a `{}` record has no such field",
                g["type"].as_str().unwrap_or("?")
            )),
        }
    }
    if let Some(range) = e.probability {
        match g.get("probability").and_then(Value::as_f64) {
            Some(p) if range.contains(p) => {}
            Some(p) => out.push(format!(
                "probability: expected {}, got {p:.6}",
                show_range(range)
            )),
            None => out.push("probability: this record has none".into()),
        }
    }
    if let Some(at) = &e.at {
        let got = g.get("at").and_then(Value::as_str).and_then(parse_str);
        match got {
            Some(ms) if at.contains(ms, start)? => {}
            Some(ms) => out.push(format!(
                "at: expected {}, got {}",
                show_time_spec(at),
                show_time(ms, start)
            )),
            None => out.push("at: this record has no time".into()),
        }
    }
    Ok(out)
}

/// An actual record in the shape of an expectation, with the fields `--update` writes.
fn actual_record(g: &Value, fields: &[&str], start: i64) -> ExpRecord {
    let s = |name: &str| {
        fields
            .contains(&name)
            .then(|| g.get(name).and_then(Value::as_str).map(str::to_string))
            .flatten()
    };
    ExpRecord {
        flow: s("flow"),
        object: s("object"),
        state: s("state"),
        artifact: s("artifact"),
        severity: s("severity"),
        outcome: s("outcome"),
        kind: s("kind"),
        from: s("from"),
        to: s("to"),
        reason: s("reason"),
        probability: fields
            .contains(&"probability")
            .then(|| {
                g.get("probability")
                    .and_then(Value::as_f64)
                    .map(Range::around)
            })
            .flatten(),
        at: g
            .get("at")
            .and_then(Value::as_str)
            .and_then(parse_str)
            .map(|ms| TimeSpec::At(show_time(ms, start))),
    }
}

/// The actual record showing only the fields the expectation gives (what a diff compares).
fn restrict(got: &ExpRecord, e: &ExpRecord) -> ExpRecord {
    ExpRecord {
        flow: e.flow.as_ref().and(got.flow.clone()),
        object: e.object.as_ref().and(got.object.clone()),
        state: e.state.as_ref().and(got.state.clone()),
        artifact: e.artifact.as_ref().and(got.artifact.clone()),
        severity: e.severity.as_ref().and(got.severity.clone()),
        outcome: e.outcome.as_ref().and(got.outcome.clone()),
        kind: e.kind.as_ref().and(got.kind.clone()),
        from: e.from.as_ref().and(got.from.clone()),
        to: e.to.as_ref().and(got.to.clone()),
        reason: e.reason.as_ref().and(got.reason.clone()),
        probability: e.probability.and(got.probability),
        at: e.at.as_ref().and(got.at.clone()),
    }
}

/// One line, YAML flow style: `{flow: f, object: o, at: 2m}`.
fn show_exp(e: &ExpRecord) -> String {
    let mut parts: Vec<String> = given(e)
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}: {v}")))
        .collect();
    if let Some(p) = e.probability {
        parts.push(format!("probability: {}", show_range(p)));
    }
    if let Some(at) = &e.at {
        parts.push(format!("at: {}", show_time_spec(at)));
    }
    format!("{{{}}}", parts.join(", "))
}

fn show_range(r: Range) -> String {
    match r {
        Range::Exactly(x) => format!("{x}"),
        Range::Within([lo, hi]) => format!("[{lo}, {hi}]"),
    }
}

fn show_time_spec(t: &TimeSpec) -> String {
    match t {
        TimeSpec::At(s) => s.clone(),
        TimeSpec::Between([a, b]) => format!("[{a}, {b}]"),
    }
}

/// A test file as YAML, one message or record a line (YAML's flow style), so that the update
/// reads like the files people write and a review shows one changed line per changed record.
fn to_yaml(file: &TestFile) -> Result<String, serde_json::Error> {
    let v = serde_json::to_value(file)?;
    let mut out = String::from(
        "# Written by `flowcast test --update`: the actual output. Review it, then move it over\n# the test file.\n",
    );
    if let Some(flows) = v.get("flows") {
        out.push_str(&format!("flows: {}\n", flow_yaml(flows)));
    }
    if let Some(start) = v.get("start") {
        out.push_str(&format!("start: {}\n", flow_yaml(start)));
    }
    out.push_str("tests:\n");
    for t in v["tests"].as_array().into_iter().flatten() {
        out.push_str(&format!("  - name: {}\n", flow_yaml(&t["name"])));
        for key in ["messages_file", "until"] {
            if let Some(x) = t.get(key) {
                out.push_str(&format!("    {key}: {}\n", flow_yaml(x)));
            }
        }
        if let Some(ms) = t.get("messages").and_then(Value::as_array) {
            out.push_str("    messages:\n");
            for m in ms {
                out.push_str(&format!("      - {}\n", flow_yaml(m)));
            }
        }
        let Some(expect) = t["expect"].as_object() else {
            continue;
        };
        out.push_str("    expect:");
        if expect.is_empty() {
            out.push_str(" {}\n");
            continue;
        }
        out.push('\n');
        for (key, x) in expect {
            match x.as_array() {
                Some(items) if !items.is_empty() => {
                    out.push_str(&format!("      {key}:\n"));
                    for it in items {
                        out.push_str(&format!("        - {}\n", flow_yaml(it)));
                    }
                }
                _ => out.push_str(&format!("      {key}: {}\n", flow_yaml(x))),
            }
        }
    }
    Ok(out)
}

/// A JSON value in YAML's flow style: `{flow: a, at: "5s", probability: [0.3, 0.32]}`.
fn flow_yaml(v: &Value) -> String {
    match v {
        Value::Object(map) => {
            // Fields in the order a reader looks for them; others after, by name.
            const ORDER: &[&str] = &[
                "at",
                "event_type",
                "flow",
                "object",
                "state",
                "from",
                "to",
                "artifact",
                "severity",
                "outcome",
                "kind",
                "reason",
                "probability",
                "risk",
                "alerting",
            ];
            let rank = |k: &str| ORDER.iter().position(|o| *o == k).unwrap_or(ORDER.len());
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by_key(|(k, _)| (rank(k), (*k).clone()));
            let parts: Vec<String> = entries
                .iter()
                .map(|(k, x)| format!("{}: {}", yaml_str(k), flow_yaml(x)))
                .collect();
            format!("{{{}}}", parts.join(", "))
        }
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(flow_yaml).collect();
            format!("[{}]", parts.join(", "))
        }
        Value::String(s) => yaml_str(s),
        other => other.to_string(),
    }
}

/// A string plain when YAML reads it back as the same string, else double-quoted (JSON's
/// escapes are a subset of YAML's).
fn yaml_str(s: &str) -> String {
    let plain = s
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "y" | "n" | "yes" | "no" | "true" | "false" | "on" | "off" | "null"
        );
    if plain {
        s.to_string()
    } else {
        Value::String(s.to_string()).to_string()
    }
}
