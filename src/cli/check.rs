//! `flowcast check`: compile flow files and report every problem, rustc-style or as JSON.

use super::ExitCode;
use crate::diagnostic::{render_human, to_json};
use crate::model;
use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Files or directories (every `*.flow` below a directory).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// `human` (rustc-style, on stderr) or `json` (one object per line on stdout: each
    /// diagnostic with `"type": "diagnostic"`, then one `"type": "summary"`).
    #[arg(long, value_enum, default_value = "human")]
    pub format: Format,
    /// Treat warnings as errors.
    #[arg(long)]
    pub deny_warnings: bool,
    /// Also check the flows against real messages (JSON lines, plain or in oslo envelopes):
    /// paths that resolve in no message, rules that match none, event types no rule matches,
    /// comparisons with a value of the wrong type (W106-W109).
    #[arg(long, value_name = "FILE.jsonl")]
    pub sample: Option<PathBuf>,
}

/// Messages read from a sample at most: enough to know the shape of a stream.
const MAX_SAMPLE_MESSAGES: usize = 100_000;

/// Reads a sample file: its decoded messages (envelopes unwrapped), or a message naming the
/// line that could not be read.
pub(super) fn read_sample(path: &std::path::Path) -> Result<Vec<serde_json::Value>, String> {
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.split(|b| *b == b'\n').enumerate() {
        let line = line.trim_ascii();
        if line.is_empty() {
            continue;
        }
        if out.len() == MAX_SAMPLE_MESSAGES {
            break;
        }
        match crate::engine::message::decode(line) {
            Ok(m) => out.push(m.value),
            Err(e) => return Err(format!("{}:{}: {e}", path.display(), i + 1)),
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Human,
    Json,
}

pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let mut comp = match model::load(&args.paths) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::Usage);
        }
    };
    // The sample joins the sources (for its own diagnostics) but is not a flow file.
    let flow_files = comp.sources.files.len();
    if let Some(path) = &args.sample {
        match read_sample(path) {
            Ok(messages) => model::check_sample(&mut comp, &path.display().to_string(), &messages),
            Err(e) => {
                eprintln!("error: sample {e}");
                return Ok(ExitCode::Usage);
            }
        }
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for (file, d) in &comp.diagnostics {
        match args.format {
            Format::Human => eprintln!("{}", render_human(&comp.sources, *file, d)),
            Format::Json => {
                let mut v = serde_json::to_value(to_json(&comp.sources, *file, d))?;
                v["type"] = "diagnostic".into();
                writeln!(out, "{v}")?
            }
        }
    }
    let errors = comp.error_count();
    let warnings = comp.warning_count();
    if let Format::Json = args.format {
        // The last line says what was checked, so that a clean run prints something too.
        let summary = serde_json::json!({
            "type": "summary",
            "files": flow_files,
            "flows": comp.flows.len(),
            "errors": errors,
            "warnings": warnings,
        });
        writeln!(out, "{summary}")?;
    }
    eprintln!(
        "checked {} file{}: {} flow{} ok, {} error{}, {} warning{}",
        flow_files,
        plural(flow_files),
        comp.flows.len(),
        plural(comp.flows.len()),
        errors,
        plural(errors),
        warnings,
        plural(warnings)
    );
    Ok(if errors > 0 || (args.deny_warnings && warnings > 0) {
        ExitCode::InputErrors
    } else {
        ExitCode::Ok
    })
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
