//! `flowcast model`: the FIG. 10 and FIG. 11 tables of each flow, from the a priori counts and
//! (with `--state-dir`) what a replay or the service has learned.

use super::{load_flows, ExitCode};
use crate::engine::{table, Engine};
use crate::service::state_dir;
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
        if let Some(learned) = state_dir::load_learned(dir)? {
            engine.import_learned(&learned);
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
