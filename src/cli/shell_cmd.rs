//! `flowcast completions SHELL` and `flowcast man`: what a packaged command line ships with,
//! generated from the same clap definition the parser uses, so they never drift from it.

use super::{Cli, ExitCode};
use clap::CommandFactory;
use std::io::Write;

#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Write one page per command (`flowcast.1`, `flowcast-check.1`, ...) into this directory
    /// instead of the main page on stdout.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<std::path::PathBuf>,
}

pub fn completions(args: CompletionsArgs) -> anyhow::Result<ExitCode> {
    let mut cmd = Cli::command();
    // Into a buffer first: clap_complete panics when its writer fails (`| head`).
    let mut buf = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "flowcast", &mut buf);
    write_stdout(&buf)
}

/// Writes to stdout; a reader that went away (`| head`) is not an error.
fn write_stdout(bytes: &[u8]) -> anyhow::Result<ExitCode> {
    match std::io::stdout().write_all(bytes) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::Ok),
    }
}

pub fn man(args: ManArgs) -> anyhow::Result<ExitCode> {
    let cmd = Cli::command();
    match args.out_dir {
        None => {
            let mut buf = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut buf)?;
            return write_stdout(&buf);
        }
        Some(dir) => {
            if let Err(e) = std::fs::create_dir_all(&dir) {
                eprintln!("error: {}: {e}", dir.display());
                return Ok(ExitCode::Usage);
            }
            if let Err(e) = clap_mangen::generate_to(cmd, &dir) {
                eprintln!("error: {}: {e}", dir.display());
                return Ok(ExitCode::Usage);
            }
        }
    }
    Ok(ExitCode::Ok)
}
