//! `flowcast discover`, `flowcast simulate`, `flowcast eval`: learning flows from history,
//! making streams from flows, and measuring how good the predictions are.

use super::{load_flows, ExitCode};
use crate::eval::discover::{self, RenderOptions};
use crate::eval::evaluate::{self, EvalConfig};
use crate::eval::log::{self, CsvColumns};
use crate::eval::simulate::{self, SimOptions};
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

#[derive(Debug, clap::Args)]
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

#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// A CSV process log or a JSONL stream.
    pub log: PathBuf,
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
    /// The flow that generated a simulated stream: report the Brier score against its true
    /// probabilities.
    #[arg(long)]
    pub truth: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "table")]
    pub output: super::model_cmd::TableFormat,
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

pub fn eval(args: EvalArgs) -> anyhow::Result<ExitCode> {
    let format = format_of(&args.log, args.format);
    let flow = match &args.flow {
        Some(p) => match load_flows(std::slice::from_ref(p), args.flow_name.as_deref())? {
            Ok(mut f) => f.remove(0),
            Err(code) => return Ok(code),
        },
        None if format == LogFormat::Csv => auto_flow(&args.log, &args.csv.columns()?)?,
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
        LogFormat::Csv => log::read_csv(&args.log, &args.csv.columns()?)?,
        LogFormat::Jsonl => {
            let keys = flow.keys.clone();
            let (s, skipped) = log::read_jsonl(&args.log, |m| {
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
    // The flow's own settings, or for a CSV log without a flow the first-order Markov chain.
    let auto = args.flow.is_none();
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
                                    configs.push(EvalConfig {
                                        history,
                                        half_life_ms,
                                        prior_weight,
                                        min_observations,
                                        dwell: d == OnOff::On,
                                        calendar,
                                        features: feat,
                                        mode,
                                    });
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    let mut reports = Vec::new();
    for cfg in &configs {
        reports.push(evaluate::evaluate(&flow, &stream, cfg, truth.as_ref())?);
    }
    if args.select {
        let part = evaluate::training_part(&stream);
        for r in reports.iter_mut() {
            let v = evaluate::evaluate(&flow, &part, &r.config, None)?;
            r.validation = Some(v.next_state);
        }
        // The best on validation; the first configuration listed wins a tie.
        let mut best: Option<(usize, f64)> = None;
        for (i, r) in reports.iter().enumerate() {
            let a = r.validation.as_ref().map_or(0.0, |v| v.accuracy);
            if best.is_none_or(|(_, b)| a > b) {
                best = Some((i, a));
            }
        }
        if let Some((i, _)) = best {
            reports[i].selected = true;
        }
    }
    match args.output {
        super::model_cmd::TableFormat::Table => {
            println!(
                "{}: {} cases ({} train, {} test), flow `{}`\n",
                args.log.display(),
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
