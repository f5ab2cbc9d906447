//! `flowcast discover`, `flowcast simulate`, `flowcast eval`: learning flows from history,
//! making streams from flows, and measuring how good the predictions are.

use super::{load_flows, ExitCode};
use crate::eval::discover::{self, RenderOptions};
use crate::eval::evaluate::{self, EvalConfig};
use crate::eval::log::{self, CsvColumns};
use crate::eval::simulate::{self, SimOptions};
use crate::eval::suite;
use crate::model::{self, cond::FieldPath, CompiledFlow};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Csv,
    Jsonl,
}

fn format_of(path: &Path, given: Option<LogFormat>) -> LogFormat {
    given.unwrap_or(
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
        {
            LogFormat::Csv
        } else {
            LogFormat::Jsonl
        },
    )
}

#[derive(Debug, Clone, clap::Args)]
pub struct CsvArgs {
    /// CSV column of the case id.
    #[arg(long = "case", default_value = "CaseID")]
    pub case_col: String,
    /// CSV column of the activity.
    #[arg(long = "activity", default_value = "ActivityID")]
    pub activity_col: String,
    /// CSV column of the time, or two columns (`Date,Time`) joined with a space.
    #[arg(
        long = "time",
        default_value = "CompleteTimestamp",
        value_delimiter = ','
    )]
    pub time_cols: Vec<String>,
    /// CSV: the character between fields (`;`, `tab`, ...).
    #[arg(long, default_value = ",")]
    pub delimiter: String,
}

impl CsvArgs {
    fn columns(&self) -> anyhow::Result<CsvColumns> {
        Ok(CsvColumns {
            case: self.case_col.clone(),
            activity: self.activity_col.clone(),
            time: self.time_cols.clone(),
            delimiter: log::parse_delimiter(&self.delimiter)?,
        })
    }
}

#[derive(Debug, clap::Args)]
pub struct DiscoverArgs {
    /// A CSV process log or a JSONL stream of notifications.
    pub log: PathBuf,
    #[arg(long, value_enum)]
    pub format: Option<LogFormat>,
    #[command(flatten)]
    pub csv: CsvArgs,
    /// JSONL: the field that names the object (a field path); repeat for fallbacks, tried in
    /// order, like a flow's `key a | b`.
    #[arg(long, default_values_t = vec!["payload.instance_id".to_string()])]
    pub key: Vec<String>,
    /// JSONL: the field whose value is the state.
    #[arg(long, default_value = "event_type")]
    pub state: String,
    /// Activities that are failures (artifacts when nothing follows them). JSONL messages with
    /// `priority: ERROR` count as failures too.
    #[arg(long = "failure")]
    pub failures: Vec<String>,
    /// Name of the flow (default: from the file name).
    #[arg(long)]
    pub name: Option<String>,
    /// Do not suggest timeouts.
    #[arg(long)]
    pub no_timeouts: bool,
    /// Write here instead of stdout.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

fn flow_name_from(path: &Path) -> String {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("discovered");
    discover::identifier(stem)
}

pub fn discover(args: DiscoverArgs) -> anyhow::Result<ExitCode> {
    let format = format_of(&args.log, args.format);
    let bytes =
        std::fs::read(&args.log).map_err(|e| anyhow::anyhow!("{}: {e}", args.log.display()))?;
    let (dfg, key, field, repeats) = match format {
        LogFormat::Csv => (
            discover::dfg_from_csv(&bytes, &args.csv.columns()?, true)?,
            "payload.case".to_string(),
            "event_type".to_string(),
            true,
        ),
        LogFormat::Jsonl => {
            let keys: Vec<FieldPath> = args
                .key
                .iter()
                .map(|k| {
                    crate::syntax::parse_path(k)
                        .map(FieldPath::new)
                        .map_err(|e| anyhow::anyhow!("--key {k}: {e}"))
                })
                .collect::<anyhow::Result<_>>()?;
            let state = FieldPath::new(
                crate::syntax::parse_path(&args.state)
                    .map_err(|e| anyhow::anyhow!("--state {}: {e}", args.state))?,
            );
            let mut values: Vec<(String, String, i64, bool)> = Vec::new();
            let mut last_t = 0;
            let mut skipped = 0;
            for line in bytes.split(|b| *b == b'\n') {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let Ok(m) = crate::engine::message::decode(line) else {
                    skipped += 1;
                    continue;
                };
                let as_text = |v: &serde_json::Value| match v {
                    serde_json::Value::String(s) => Some(s.clone()),
                    serde_json::Value::Number(n) => Some(n.to_string()),
                    _ => None,
                };
                let k = keys.iter().find_map(|k| k.get(&m.value).and_then(as_text));
                let (Some(k), Some(s)) = (k, state.get(&m.value).and_then(as_text)) else {
                    skipped += 1;
                    continue;
                };
                let t = m.time_ms.unwrap_or(last_t);
                last_t = t;
                let failure = m.value.get("priority").and_then(|p| p.as_str()) == Some("ERROR");
                values.push((k, s, t, failure));
            }
            if skipped > 0 {
                eprintln!(
                    "discover: {skipped} lines were skipped (not a message, or no key or state)"
                );
            }
            let mut b = discover::DfgBuilder::new(false);
            for (k, s, t, f) in &values {
                b.event(k.as_bytes(), s.as_bytes(), *t, *f);
            }
            (b.finish(), args.key.join(" | "), args.state.clone(), false)
        }
    };
    if dfg.events == 0 {
        eprintln!("error: {}: no events", args.log.display());
        return Ok(ExitCode::InputErrors);
    }
    let text = discover::render(
        &dfg,
        &RenderOptions {
            flow_name: args
                .name
                .clone()
                .unwrap_or_else(|| flow_name_from(&args.log)),
            source: args
                .log
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("a log")
                .to_string(),
            key,
            activity_field: field,
            failures: args.failures.clone(),
            priors: true,
            timeouts: !args.no_timeouts,
            count_repeats: repeats,
        },
    );
    match &args.output {
        Some(p) => std::fs::write(p, &text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
        None => std::io::stdout().write_all(text.as_bytes())?,
    }
    eprintln!(
        "discover: {} events, {} cases, {} activities, {} transitions",
        dfg.events,
        dfg.cases,
        dfg.activities.len(),
        dfg.edges.len()
    );
    Ok(ExitCode::Ok)
}

#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// A flow file (or directory).
    pub file: PathBuf,
    #[arg(long)]
    pub flow: Option<String>,
    #[arg(long, default_value_t = 100)]
    pub objects: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Objects started per second (event time).
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Mean dwell in a state, e.g. `10s`.
    #[arg(long, default_value = "10s")]
    pub mean_dwell: String,
    /// Mean dwell before a step into one state, `STATE=DURATION` (repeatable): failures that
    /// take longer than successes, for instance.
    #[arg(long = "dwell-to")]
    pub dwell_to: Vec<String>,
    /// Start time, RFC 3339.
    #[arg(long, default_value = "2026-01-01T00:00:00Z")]
    pub start: String,
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

pub fn simulate(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    let flows = match load_flows(std::slice::from_ref(&args.file), args.flow.as_deref())? {
        Ok(f) => f,
        Err(code) => return Ok(code),
    };
    let flow = &flows[0];
    let mean = crate::syntax::parse_duration_ms(&args.mean_dwell)
        .filter(|m| *m > 0)
        .ok_or_else(|| {
            anyhow::anyhow!("--mean-dwell {}: not a positive duration", args.mean_dwell)
        })?;
    let start = crate::engine::time::parse_str(&args.start)
        .ok_or_else(|| anyhow::anyhow!("--start {}: not an RFC 3339 time", args.start))?;
    if args.rate <= 0.0 || !args.rate.is_finite() {
        anyhow::bail!("--rate must be a positive number");
    }
    let mut dwell_to = Vec::new();
    for d in &args.dwell_to {
        let (state, dur) = d
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--dwell-to {d}: expected STATE=DURATION"))?;
        let id = flow.state_id(state).ok_or_else(|| {
            anyhow::anyhow!(
                "--dwell-to {d}: flow `{}` has no state `{state}`",
                flow.name
            )
        })?;
        let ms = crate::syntax::parse_duration_ms(dur)
            .filter(|m| *m > 0)
            .ok_or_else(|| anyhow::anyhow!("--dwell-to {d}: `{dur}` is not a positive duration"))?;
        dwell_to.push((id, ms as f64));
    }
    let opts = SimOptions {
        dwell_to,
        objects: args.objects,
        seed: args.seed,
        start_ms: start,
        interval_ms: 1000.0 / args.rate,
        mean_dwell_ms: mean as f64,
    };
    let summary = match &args.output {
        Some(p) => {
            let mut w = std::io::BufWriter::new(
                std::fs::File::create(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
            );
            let s = simulate::simulate(flow, &opts, &mut w)?;
            w.flush()?;
            s
        }
        None => {
            let stdout = std::io::stdout();
            let mut w = std::io::BufWriter::new(stdout.lock());
            let s = simulate::simulate(flow, &opts, &mut w)?;
            w.flush()?;
            s
        }
    };
    eprintln!("simulate: {}", serde_json::to_string(&summary)?);
    Ok(ExitCode::Ok)
}

#[derive(Debug, Clone, clap::Args)]
pub struct EvalArgs {
    /// A CSV process log or a JSONL stream; several logs, or a folder of CSV logs, make a
    /// suite: one table, a row per log (Markov-1, Markov-2, the default, `--select`).
    #[arg(required = true)]
    pub logs: Vec<PathBuf>,
    /// The flow to evaluate (required for JSONL; for CSV the default is one state per activity).
    #[arg(long)]
    pub flow: Option<PathBuf>,
    /// Which flow of the file.
    #[arg(long)]
    pub flow_name: Option<String>,
    #[arg(long, value_enum)]
    pub format: Option<LogFormat>,
    #[command(flatten)]
    pub csv: CsvArgs,
    /// History orders to compare, e.g. `1,2,3`.
    #[arg(long, value_delimiter = ',')]
    pub history: Vec<usize>,
    /// Half-lives to compare, e.g. `off,30d`.
    #[arg(long, value_delimiter = ',')]
    pub half_life: Vec<String>,
    /// Prior weights to compare.
    #[arg(long, value_delimiter = ',')]
    pub prior_weight: Vec<f64>,
    /// Minimum observations before a history context is trusted.
    #[arg(long, value_delimiter = ',')]
    pub min_obs: Vec<f64>,
    /// Dwell-time conditioning on and/or off.
    #[arg(long, value_delimiter = ',')]
    pub dwell: Vec<OnOff>,
    /// Calendar contexts to compare: `off`, `day` (time of day the state was entered, UTC,
    /// 3-hour classes), `week` (the same, weekdays apart from weekends).
    #[arg(long, value_delimiter = ',', value_parser = parse_calendar)]
    pub calendar: Vec<model::Calendar>,
    /// The log-linear feature model on and/or off (`learn { features on }`).
    #[arg(long, value_delimiter = ',')]
    pub features: Vec<OnOff>,
    /// How the test cases meet the model, to compare: `frozen` (train, then test with the
    /// model frozen: the reference protocol), `live` (every message in time order, learning
    /// from the training cases only as they happen), `online` (the same, learning from every
    /// case).
    #[arg(long, value_delimiter = ',', value_enum)]
    pub mode: Vec<evaluate::Mode>,
    /// Same as `--mode online`.
    #[arg(long)]
    pub online: bool,
    /// Choose among the configurations on a validation split carved from the training cases
    /// (their first 2/3 fit, the last 1/3 validate); the test cases play no part in the choice.
    #[arg(long)]
    pub select: bool,
    /// What `--select` compares on the validation split: next-state `accuracy` or `log-loss`,
    /// or for a flow with artifacts the artifact probability's `roc-auc` or `brier`, or the
    /// alerts' `alert-f1`.
    #[arg(long, value_enum, default_value = "accuracy")]
    pub select_by: evaluate::Metric,
    /// The flow that generated a simulated stream: report the Brier score against its true
    /// probabilities.
    #[arg(long)]
    pub truth: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "table")]
    pub output: super::model_cmd::TableFormat,
    /// Detection mode: the log is a file of normal sessions and this one of abnormal sessions
    /// (one session per line, events separated by spaces: DeepLog's HDFS files). The first 2/3
    /// of the normal sessions train; the rest and every abnormal one test. Reports precision,
    /// recall, F1, false alarms per 1,000 normal sessions, ROC AUC and lead of the `anomaly`
    /// record, beside the unseen-transition and unseen-n-gram baselines.
    #[arg(long, value_name = "FILE")]
    pub abnormal: Option<PathBuf>,
    /// Detection mode: the share of learned steps the calibrated thresholds flag.
    #[arg(long, default_value_t = 0.001)]
    pub false_alarm_rate: f64,
    /// Detection mode: the length of the n-gram baseline.
    #[arg(long, default_value_t = 5)]
    pub ngram: usize,
}

/// `flowcast eval NORMAL --abnormal ABNORMAL`: the detection protocol of `eval::detect`.
fn eval_detect(args: &EvalArgs, abnormal: &Path) -> anyhow::Result<ExitCode> {
    if args.logs.len() != 1 {
        eprintln!("error: --abnormal takes one file of normal sessions");
        return Ok(ExitCode::Usage);
    }
    if !(args.false_alarm_rate > 0.0 && args.false_alarm_rate < 1.0) || args.ngram < 2 {
        eprintln!("error: --false-alarm-rate must be above 0 and below 1, --ngram at least 2");
        return Ok(ExitCode::Usage);
    }
    let read = |p: &Path| {
        anyhow::Context::with_context(std::fs::read_to_string(p), || {
            format!("cannot read {}", p.display())
        })
    };
    let normal = crate::eval::detect::parse_sessions(&read(&args.logs[0])?);
    let abnormal = crate::eval::detect::parse_sessions(&read(abnormal)?);
    if normal.len() < 3 {
        eprintln!(
            "error: {} holds fewer than 3 sessions",
            args.logs[0].display()
        );
        return Ok(ExitCode::Usage);
    }
    let cfg = crate::eval::detect::DetectConfig {
        false_alarm_rate: args.false_alarm_rate,
        ngram: args.ngram,
    };
    let report = crate::eval::detect::detect(&normal, &abnormal, cfg);
    match args.output {
        super::model_cmd::TableFormat::Json => println!("{}", serde_json::to_string(&report)?),
        super::model_cmd::TableFormat::Table => print!("{}", crate::eval::detect::render(&report)),
    }
    Ok(ExitCode::Ok)
}

fn parse_calendar(s: &str) -> Result<model::Calendar, String> {
    use model::Calendar;
    [Calendar::Off, Calendar::Day, Calendar::Week]
        .into_iter()
        .find(|c| c.name() == s)
        .ok_or_else(|| format!("`{s}`: one of off, day, week"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

/// The flow `eval` uses for a CSV log when none is given: one state per activity, no a priori
/// counts (nothing learned from the test cases), repeats counted, case ends marked.
pub fn auto_flow(path: &Path, cols: &CsvColumns) -> anyhow::Result<CompiledFlow> {
    let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let dfg = discover::dfg_from_csv(&bytes, cols, true)?;
    let text = discover::render(
        &dfg,
        &RenderOptions {
            flow_name: flow_name_from(path),
            source: path.display().to_string(),
            key: "payload.case".into(),
            activity_field: "event_type".into(),
            failures: Vec::new(),
            priors: false,
            timeouts: false,
            count_repeats: true,
        },
    );
    let comp = model::compile_files([(
        format!("{} (discovered)", path.display()),
        text.into_bytes(),
    )]);
    if comp.has_errors() {
        anyhow::bail!("the discovered flow does not compile:\n{}", comp.render());
    }
    comp.flows
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no flow discovered"))
}

/// A bar on stderr for a long run, when stderr is a terminal; nothing otherwise.
fn progress(len: usize, what: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if len < 2 || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len as u64);
    let style = indicatif::ProgressStyle::with_template(
        "{prefix} [{bar:30}] {pos}/{len} {wide_msg} ({elapsed})",
    )
    .map(|s| s.progress_chars("=> "));
    if let Ok(style) = style {
        bar.set_style(style);
    }
    bar.set_prefix(what.to_string());
    bar
}

/// The logs named on the command line, a folder standing for its `.csv` files in name order.
fn expand_logs(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut logs = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    f.is_file() && f.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv"))
                })
                .collect();
            if found.is_empty() {
                anyhow::bail!("{}: no .csv logs in this folder", p.display());
            }
            found.sort();
            logs.extend(found);
        } else {
            logs.push(p.clone());
        }
    }
    Ok(logs)
}

pub fn eval(args: EvalArgs) -> anyhow::Result<ExitCode> {
    if let Some(abnormal) = &args.abnormal {
        return eval_detect(&args, abnormal);
    }
    let logs = expand_logs(&args.logs)?;
    if args.logs.len() == 1 && logs.len() == 1 && !args.logs[0].is_dir() {
        return eval_one(&args, &logs[0]);
    }
    eval_suite(&args, &logs)
}

/// Whether any option of the grid was given.
fn grid_given(args: &EvalArgs) -> bool {
    !(args.history.is_empty()
        && args.half_life.is_empty()
        && args.prior_weight.is_empty()
        && args.min_obs.is_empty()
        && args.dwell.is_empty()
        && args.calendar.is_empty()
        && args.features.is_empty()
        && args.mode.is_empty()
        && !args.online)
}

/// Every log of a suite through the same protocol: the reference chains, the default
/// configuration, and with `--select` the grid's choice on validation.
fn eval_suite(args: &EvalArgs, logs: &[PathBuf]) -> anyhow::Result<ExitCode> {
    if args.flow.is_some() || args.truth.is_some() {
        eprintln!("error: a suite of logs takes neither --flow nor --truth (one flow per log is discovered)");
        return Ok(ExitCode::Usage);
    }
    if grid_given(args) && !args.select {
        eprintln!("error: a suite compares a grid through --select (add --select)");
        return Ok(ExitCode::Usage);
    }
    if args.select_by.needs_artifacts() {
        eprintln!(
            "error: --select-by {}: a suite's logs are evaluated with discovered flows, which have no artifacts (no outcomes to score); use accuracy or log-loss",
            args.select_by.name()
        );
        return Ok(ExitCode::Usage);
    }
    if let Some(p) = logs
        .iter()
        .find(|p| format_of(p, args.format) != LogFormat::Csv)
    {
        eprintln!(
            "error: {}: a suite reads CSV process logs only",
            p.display()
        );
        return Ok(ExitCode::Usage);
    }
    let mut defaults = args.clone();
    defaults.history.clear();
    defaults.half_life.clear();
    defaults.prior_weight.clear();
    defaults.min_obs.clear();
    defaults.dwell.clear();
    defaults.calendar.clear();
    defaults.features.clear();
    defaults.mode.clear();
    defaults.online = false;
    let cols = args.csv.columns()?;
    let mut rows = Vec::new();
    let bar = progress(logs.len(), "eval");
    for path in logs {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("log")
            .to_string();
        bar.set_message(name.clone());
        let flow = auto_flow(path, &cols)?;
        let stream = log::read_csv(path, &cols)?;
        let default = grid(&defaults, &flow, true)?.remove(0);
        let mut todo = vec![suite::markov(1), suite::markov(2), default];
        let first_grid = todo.len();
        if args.select {
            todo.extend(grid(args, &flow, true)?);
        }
        // Identical configurations run once.
        let mut reports: Vec<evaluate::Report> = Vec::new();
        let mut index = Vec::new();
        for cfg in &todo {
            match reports.iter().position(|r| r.config == *cfg) {
                Some(i) => index.push(i),
                None => {
                    index.push(reports.len());
                    bar.set_message(format!("{name}: {}", cfg.label()));
                    reports.push(evaluate::evaluate(&flow, &stream, cfg, None)?);
                }
            }
        }
        let (mut selected, mut grid_best) = (None, None);
        if args.select {
            let mut candidates: Vec<evaluate::Report> = index[first_grid..]
                .iter()
                .map(|&i| reports[i].clone())
                .collect();
            bar.set_message(format!("{name}: choosing on validation"));
            select_on_validation(&flow, &stream, &mut candidates, args.select_by)?;
            selected = candidates
                .iter()
                .find(|r| r.selected)
                .map(suite::Figure::of);
            grid_best = candidates
                .iter()
                .fold(None::<&evaluate::Report>, |b, r| match b {
                    Some(b) if b.next_state.accuracy >= r.next_state.accuracy => Some(b),
                    _ => Some(r),
                })
                .map(suite::Figure::of);
        }
        rows.push(suite::SuiteRow {
            log: name,
            cases: stream.cases.len(),
            train_cases: reports[0].train_cases,
            test_cases: reports[0].test_cases,
            markov_1: suite::Figure::of(&reports[index[0]]),
            markov_2: suite::Figure::of(&reports[index[1]]),
            default: suite::Figure::of(&reports[index[2]]),
            selected,
            grid_best,
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    match args.output {
        super::model_cmd::TableFormat::Table => print!("{}", suite::render(&rows)),
        super::model_cmd::TableFormat::Json => {
            println!("{}", serde_json::to_string_pretty(&rows)?)
        }
    }
    Ok(ExitCode::Ok)
}

/// Marks the configuration with the best `metric` on a validation split carved from the
/// training cases; the first configuration listed wins a tie, and one without the figure
/// (a ROC AUC where validation has one class only) is never chosen over one with it.
fn select_on_validation(
    flow: &CompiledFlow,
    stream: &log::Stream,
    reports: &mut [evaluate::Report],
    metric: evaluate::Metric,
) -> anyhow::Result<()> {
    let part = evaluate::training_part(stream);
    for r in reports.iter_mut() {
        let v = evaluate::evaluate(flow, &part, &r.config, None)?;
        r.validation = Some(v.next_state);
        r.validation_outcome = v.outcome;
    }
    let mut best: Option<(usize, f64)> = None;
    for (i, r) in reports.iter().enumerate() {
        let Some(v) = r.validation.as_ref() else {
            continue;
        };
        let a = metric
            .score(v, r.validation_outcome.as_ref())
            .unwrap_or(f64::NEG_INFINITY);
        if best.is_none_or(|(_, b)| a > b) {
            best = Some((i, a));
        }
    }
    if let Some((i, _)) = best {
        reports[i].selected = true;
    }
    Ok(())
}

/// The configurations the options name (their product), or the flow's own settings, or for a
/// CSV log without a flow (`auto`) the plain first-order chain.
fn grid(args: &EvalArgs, flow: &CompiledFlow, auto: bool) -> anyhow::Result<Vec<EvalConfig>> {
    let l = &flow.learning;
    let histories = if args.history.is_empty() {
        vec![l.history]
    } else {
        args.history.clone()
    };
    let half_lives: Vec<Option<i64>> = if args.half_life.is_empty() {
        vec![if auto { None } else { l.half_life_ms }]
    } else {
        args.half_life
            .iter()
            .map(|h| {
                if h == "off" {
                    Ok(None)
                } else {
                    crate::syntax::parse_duration_ms(h)
                        .filter(|m| *m > 0)
                        .map(Some)
                        .ok_or_else(|| anyhow::anyhow!("--half-life {h}: not a duration or `off`"))
                }
            })
            .collect::<anyhow::Result<_>>()?
    };
    let weights = if args.prior_weight.is_empty() {
        vec![if auto { 0.0 } else { l.prior_weight }]
    } else {
        args.prior_weight.clone()
    };
    let min_obs = if args.min_obs.is_empty() {
        vec![l.min_observations]
    } else {
        args.min_obs.clone()
    };
    // For a CSV log without a flow the default is the plain first-order chain: no dwell times.
    let dwells = if args.dwell.is_empty() {
        vec![if auto { OnOff::Off } else { OnOff::On }]
    } else {
        args.dwell.clone()
    };
    let calendars: Vec<model::Calendar> = if args.calendar.is_empty() {
        vec![if auto {
            model::Calendar::Off
        } else {
            l.calendar
        }]
    } else {
        args.calendar.clone()
    };
    let features: Vec<bool> = if args.features.is_empty() {
        vec![!auto && l.features]
    } else {
        args.features.iter().map(|f| *f == OnOff::On).collect()
    };
    // A setting of the model pins one member; otherwise the flow's own choice (auto).
    let auto = l.auto
        && args.history.is_empty()
        && args.min_obs.is_empty()
        && args.calendar.is_empty()
        && args.features.is_empty();
    let mut modes = args.mode.clone();
    if args.online {
        modes.push(evaluate::Mode::Online);
    }
    if modes.is_empty() {
        modes.push(evaluate::Mode::Frozen);
    }
    let mut configs = Vec::new();
    for &history in &histories {
        if !(1..=4).contains(&history) {
            anyhow::bail!("--history {history}: from 1 to 4");
        }
        for &half_life_ms in &half_lives {
            for &prior_weight in &weights {
                for &min_observations in &min_obs {
                    for &d in &dwells {
                        for &calendar in &calendars {
                            for &feat in &features {
                                for &mode in &modes {
                                    let c = EvalConfig {
                                        history,
                                        half_life_ms,
                                        prior_weight,
                                        min_observations,
                                        dwell: d == OnOff::On,
                                        calendar,
                                        features: feat,
                                        auto,
                                        mode,
                                    };
                                    // A value given twice (`--history 1,1`, `--online` with
                                    // `--mode online`) is run once.
                                    if !configs.contains(&c) {
                                        configs.push(c);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(configs)
}

fn eval_one(args: &EvalArgs, path: &Path) -> anyhow::Result<ExitCode> {
    let format = format_of(path, args.format);
    let flow = match &args.flow {
        Some(p) => match load_flows(std::slice::from_ref(p), args.flow_name.as_deref())? {
            Ok(mut f) => f.remove(0),
            Err(code) => return Ok(code),
        },
        None if format == LogFormat::Csv => auto_flow(path, &args.csv.columns()?)?,
        None => {
            eprintln!("error: a JSONL stream needs --flow FILE");
            return Ok(ExitCode::Usage);
        }
    };
    let truth = match &args.truth {
        Some(p) => match load_flows(std::slice::from_ref(p), args.flow_name.as_deref())? {
            Ok(mut f) => Some(f.remove(0)),
            Err(code) => return Ok(code),
        },
        None => None,
    };
    let stream = match format {
        LogFormat::Csv => log::read_csv(path, &args.csv.columns()?)?,
        LogFormat::Jsonl => {
            let keys = flow.keys.clone();
            let (s, skipped) = log::read_jsonl(path, |m| {
                keys.iter()
                    .find_map(|k| {
                        k.get(&m.value)
                            .and_then(crate::engine::key::ObjectKey::from_value)
                    })
                    .map(|k| k.to_string())
            })?;
            if skipped > 0 {
                eprintln!("eval: {skipped} messages have no key for flow `{}` and are not part of any case", flow.name);
            }
            s
        }
    };
    if args.select_by.needs_artifacts() && flow.artifacts().next().is_none() {
        eprintln!(
            "error: --select-by {}: flow `{}` has no artifacts, so there are no outcomes to score; use accuracy or log-loss, or a flow with artifacts",
            args.select_by.name(),
            flow.name
        );
        return Ok(ExitCode::Usage);
    }
    let auto = args.flow.is_none();
    let configs = grid(args, &flow, auto)?;
    let bar = progress(configs.len(), "eval");
    let mut reports = Vec::new();
    for cfg in &configs {
        bar.set_message(cfg.label());
        reports.push(evaluate::evaluate(&flow, &stream, cfg, truth.as_ref())?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    if args.select {
        select_on_validation(&flow, &stream, &mut reports, args.select_by)?;
    }
    match args.output {
        super::model_cmd::TableFormat::Table => {
            println!(
                "{}: {} cases ({} train, {} test), flow `{}`\n",
                path.display(),
                stream.cases.len(),
                reports[0].train_cases,
                reports[0].test_cases,
                flow.name
            );
            print!("{}", evaluate::render(&reports));
        }
        super::model_cmd::TableFormat::Json => {
            println!("{}", serde_json::to_string_pretty(&reports)?)
        }
    }
    Ok(ExitCode::Ok)
}
