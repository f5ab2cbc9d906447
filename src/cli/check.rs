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
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Human,
    Json,
}

pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let comp = match model::load(&args.paths) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::Usage);
        }
    };
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
            "files": comp.sources.files.len(),
            "flows": comp.flows.len(),
            "errors": errors,
            "warnings": warnings,
        });
        writeln!(out, "{summary}")?;
    }
    eprintln!(
        "checked {} file{}: {} flow{} ok, {} error{}, {} warning{}",
        comp.sources.files.len(),
        plural(comp.sources.files.len()),
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
