//! `flowcast replay`: run the engine over recorded messages (JSONL, one message a line, plain
//! or in an oslo envelope). Records go to stdout as JSON lines; a summary goes to stderr.

use super::{load_flows, ExitCode};
use crate::engine::message::{decode_projected, strip_bom, LineEnd};
use crate::engine::{Engine, Stats};
use crate::service::state_dir;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Directory (or file) of flow definitions.
    #[arg(long, default_value = "models")]
    pub models: PathBuf,
    /// Messages, one JSON object a line; `-` or nothing reads stdin.
    pub input: Option<PathBuf>,
    /// Load learned counts from this directory before, and save them after.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Print the summary as JSON (on stderr) instead of text.
    #[arg(long)]
    pub summary_json: bool,
    /// Emit only alerts and resolutions, not outcomes or unexpected transitions.
    #[arg(long)]
    pub alerts_only: bool,
    /// Also emit a `prediction` record each time an object enters a state.
    #[arg(long)]
    pub trace: bool,
    /// Messages stamped further ahead of this machine's clock than this (a duration, or `off`)
    /// are counted as `future` and handled at the current time, never moving it.
    #[arg(long, default_value = "5m")]
    pub max_future: String,
    /// A message whose key is longer than this many bytes is malformed (`key_too_long`).
    #[arg(long, default_value_t = crate::engine::Limits::default().max_key_bytes)]
    pub max_key_bytes: usize,
    /// Bytes for remembering finished objects (late messages about them), all flows together.
    #[arg(long, default_value_t = crate::engine::Limits::default().finished_bytes)]
    pub finished_budget_bytes: usize,
    /// Learn nothing from these messages: predictions and surprise use the counts loaded from
    /// `--state-dir` (a baseline learned from healthy data) as they are, and the directory is
    /// left unchanged.
    #[arg(long, requires = "state_dir")]
    pub frozen: bool,
}

pub fn run(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let flows = match load_flows(std::slice::from_ref(&args.models), None)? {
        Ok(f) => f,
        Err(code) => return Ok(code),
    };
    let mut engine = Engine::new(flows);
    engine.trace = args.trace;
    let max_future = match args.max_future.as_str() {
        "off" => None,
        d => match crate::syntax::parse_duration_ms(d) {
            Some(ms) if ms > 0 => Some(ms),
            _ => {
                eprintln!("error: --max-future {d}: not a positive duration (like `5m`) or `off`");
                return Ok(ExitCode::Usage);
            }
        },
    };
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    engine.set_horizon(max_future.map(|ms| wall.saturating_add(ms)));
    engine.set_limits(crate::engine::Limits {
        max_key_bytes: args.max_key_bytes,
        finished_bytes: args.finished_budget_bytes,
    });
    if let Some(dir) = &args.state_dir {
        if let Some(learned) = state_dir::load_learned(dir)? {
            let (loaded, dropped) = engine.import_learned(&learned);
            tracing::info!(flows = loaded, dropped, dir = %dir.display(), "Loaded learned counts.");
        }
        if args.frozen {
            engine.freeze();
        }
    }
    let input: Box<dyn Read> = match &args.input {
        None => Box::new(std::io::stdin()),
        Some(p) if p.as_os_str() == "-" => Box::new(std::io::stdin()),
        Some(p) => match std::fs::File::open(p) {
            Ok(f) => Box::new(f),
            Err(e) => {
                eprintln!("error: {}: {e}", p.display());
                return Ok(ExitCode::Usage);
            }
        },
    };
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let stats = replay(
        &mut engine,
        BufReader::with_capacity(1 << 20, input),
        &mut out,
        args.alerts_only,
    )?;
    out.flush()?;
    if let Some(dir) = args.state_dir.as_ref().filter(|_| !args.frozen) {
        state_dir::save_learned(dir, engine.export_learned())?;
    }
    let in_flight = engine.objects_in_flight();
    if args.summary_json {
        let mut v = serde_json::to_value(&stats)?;
        v["in_flight"] = in_flight.into();
        if let Some(peak) = peak_rss_bytes() {
            v["peak_rss_bytes"] = peak.into();
        }
        eprintln!("{v}");
    } else {
        eprintln!("{}", summary(&stats, in_flight));
    }
    Ok(ExitCode::Ok)
}

/// Feeds every line to the engine and writes the records; returns the final counters.
pub fn replay(
    engine: &mut Engine,
    mut input: impl BufRead,
    out: &mut impl Write,
    alerts_only: bool,
) -> anyhow::Result<Stats> {
    let mut line = Vec::with_capacity(4096);
    let mut records = Vec::new();
    let mut line_no = 0u64;
    let projection = engine.projection();
    let mut cutter = crate::engine::message::LineCutter::default();
    loop {
        line.clear();
        let end = loop {
            let chunk = input.fill_buf()?;
            if chunk.is_empty() {
                break cutter.finish();
            }
            let (used, end) = cutter.feed(chunk, &mut line);
            input.consume(used);
            if end.is_some() {
                break end;
            }
        };
        let Some(end) = end else {
            break;
        };
        line_no += 1;
        let decoded = match end {
            LineEnd::TooLong(n) => Err(crate::engine::message::DecodeError::TooLarge(n)),
            LineEnd::Line => {
                let text = trim_ascii(strip_bom(&line));
                if text.is_empty() {
                    continue;
                }
                decode_projected(text, &projection)
            }
        };
        match decoded {
            Ok(msg) => engine.observe(&msg, &mut records),
            Err(e) => {
                engine.count_malformed();
                let n = engine.stats.malformed;
                // Bounded logging: the first ten, then every thousandth.
                if n <= 10 || n.is_multiple_of(1000) {
                    tracing::warn!(
                        line = line_no,
                        malformed = n,
                        "Skipped a malformed message: {e}"
                    );
                }
            }
        }
        for r in records.drain(..) {
            if alerts_only
                && !matches!(
                    r,
                    crate::engine::output::Record::Alert(_)
                        | crate::engine::output::Record::Resolved(_)
                )
            {
                continue;
            }
            serde_json::to_writer(&mut *out, &r)?;
            out.write_all(b"\n")?;
        }
    }
    Ok(engine.stats.clone())
}

/// The process's peak resident memory (`VmHWM`), on Linux.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map(|i| i + 1)
        .unwrap_or(start);
    &b[start..end]
}

pub fn summary(s: &Stats, in_flight: usize) -> String {
    format!(
        "replay: {} read ({} malformed), {} matched, {} unmatched, {} missing key, {} late, {} future, {} after end, {} multi-flow; \
         {} transitions ({} unexpected), {} alerts, {} resolved, {} outcomes ({} timeouts, {} expired); {} in flight",
        s.messages + s.malformed,
        s.malformed,
        s.matched,
        s.unmatched,
        s.missing_key,
        s.late,
        s.future,
        s.after_end,
        s.multi_flow,
        s.transitions,
        s.unexpected,
        s.alerts,
        s.resolved,
        s.outcomes,
        s.timeouts,
        s.expired,
        in_flight
    )
}
