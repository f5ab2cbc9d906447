//! `flowcast model`: the FIG. 10 and FIG. 11 tables of each flow, from the a priori counts and
//! (with `--state-dir`) what a replay or the service has learned: the service's `snapshot.json`
//! when there is one (it is the newer), else replay's `learned.json`.

use super::{load_flows, ExitCode};
use crate::engine::snapshot::EngineSnapshot;
use crate::engine::{table, Engine};
use crate::service::run::SNAPSHOT_FILE;
use crate::service::state_dir;
use anyhow::Context;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct ModelArgs {
    /// A flow file or a directory of them.
    pub file: PathBuf,
    #[arg(long)]
    pub flow: Option<String>,
    /// Blend in the counts learned into this state directory.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "table")]
    pub format: TableFormat,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum TableFormat {
    Table,
    Json,
}

pub fn run(args: ModelArgs) -> anyhow::Result<ExitCode> {
    let flows = match load_flows(std::slice::from_ref(&args.file), args.flow.as_deref())? {
        Ok(f) => f,
        Err(code) => return Ok(code),
    };
    let mut engine = Engine::new(flows);
    if let Some(dir) = &args.state_dir {
        if let Err(e) = std::fs::read_dir(dir) {
            eprintln!("error: {}: {e}", dir.display());
            return Ok(ExitCode::Usage);
        }
        let learned = learned_counts(dir)?;
        match learned {
            Some((path, learned)) => {
                let (n, _) = engine.import_learned(&learned);
                eprintln!("learned counts of {n} flow(s) from {}", path.display());
            }
            None => eprintln!(
                "warning: {} holds no {SNAPSHOT_FILE} or {}: showing the a priori counts only",
                dir.display(),
                state_dir::LEARNED_FILE
            ),
        }
    }
    let mut first = true;
    for rt in engine.flows.iter_mut() {
        let t = table::build(rt);
        match args.format {
            TableFormat::Json => println!("{}", serde_json::to_string(&t)?),
            TableFormat::Table => {
                if !first {
                    println!();
                }
                print!("{}", table::render(&t));
            }
        }
        first = false;
    }
    Ok(ExitCode::Ok)
}

/// The learned counts in a state directory: the service's snapshot, else replay's
/// `learned.json`; `None` when it holds neither. With the file they came from.
pub(super) fn learned_counts(
    dir: &std::path::Path,
) -> anyhow::Result<
    Option<(
        PathBuf,
        std::collections::BTreeMap<String, crate::engine::markov::LearnedCounts>,
    )>,
> {
    let snap_path = dir.join(SNAPSHOT_FILE);
    let learned = match std::fs::read(&snap_path) {
        Ok(bytes) => {
            let snap: EngineSnapshot = serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a flowcast snapshot", snap_path.display()))?;
            Some((
                snap_path,
                snap.flows
                    .into_iter()
                    .map(|(n, f)| (n, f.learned))
                    .collect(),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            state_dir::load_learned(dir)?.map(|l| (state_dir::learned_path(dir), l))
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", snap_path.display())),
    };
    Ok(learned)
}
