//! The command line: argument parsing and one module per subcommand. Errors from the layers
//! below get their context here; exit codes are 0 ok, 1 the input has errors, 2 usage or IO.

pub mod bench_cmd;
pub mod check;
pub mod eval_cmd;
pub mod fmt_cmd;
pub mod graph;
pub mod lsp_cmd;
pub mod model_cmd;
pub mod replay;
pub mod route_cmd;
pub mod run_cmd;
pub mod shell_cmd;
pub mod test_cmd;

use crate::model::{self, CompiledFlow};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "flowcast",
    version,
    about = "Predictive monitoring of cloud processes from their notifications"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Parse and validate .flow files; report every problem.
    Check(check::CheckArgs),
    /// Run test files (`*.test.yaml`): given messages, the alerts, outcomes and states a flow
    /// must produce.
    Test(test_cmd::TestArgs),
    /// Rewrite .flow files in the canonical layout (comments kept); `--check` only reports.
    Fmt(fmt_cmd::FmtArgs),
    /// Draw a flow as Graphviz dot or Mermaid.
    Graph(graph::GraphArgs),
    /// Show a flow's model: transition counts (FIG. 10) and predictions (FIG. 11).
    Model(model_cmd::ModelArgs),
    /// Run the engine over recorded messages; alerts and outcomes as JSON lines on stdout.
    Replay(replay::ReplayArgs),
    /// The live service: NATS, JetStream or a file in; alerts to sinks; HTTP API; hot reload.
    Run(run_cmd::RunArgs),
    /// Play a JSONL file onto a NATS subject (or JetStream), for demos, tests and benchmarks.
    Publish(run_cmd::PublishArgs),
    /// Put each message of a JetStream stream on its partition's subject (by object key), for
    /// workers that own partitions.
    Route(route_cmd::RouteArgs),
    /// Generate a flow from a log: states, transitions with counts, timeouts.
    Discover(eval_cmd::DiscoverArgs),
    /// Emit a JSONL stream of objects walking a flow with its probabilities.
    Simulate(eval_cmd::SimulateArgs),
    /// Measure prediction quality on a log: next state, remaining time, outcomes, alerts.
    Eval(eval_cmd::EvalArgs),
    /// A language server over stdio for editors: diagnostics, formatting, definitions,
    /// references, rename, hover, completion.
    Lsp(lsp_cmd::LspArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(shell_cmd::CompletionsArgs),
    /// Print the man page (roff), or write one page per command with `--out-dir`.
    Man(shell_cmd::ManArgs),
    /// Measuring tools for bench/run.sh.
    #[command(subcommand, hide = true)]
    Bench(bench_cmd::BenchTool),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    Ok = 0,
    InputErrors = 1,
    Usage = 2,
}

pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        Command::Check(a) => check::run(a),
        Command::Test(a) => test_cmd::run(a),
        Command::Fmt(a) => fmt_cmd::run(a),
        Command::Graph(a) => graph::run(a),
        Command::Model(a) => model_cmd::run(a),
        Command::Replay(a) => replay::run(a),
        Command::Run(a) => run_cmd::run(a),
        Command::Publish(a) => run_cmd::publish(a),
        Command::Route(a) => route_cmd::run(a),
        Command::Discover(a) => eval_cmd::discover(a),
        Command::Simulate(a) => eval_cmd::simulate(a),
        Command::Eval(a) => eval_cmd::eval(a),
        Command::Lsp(a) => lsp_cmd::run(a),
        Command::Completions(a) => shell_cmd::completions(a),
        Command::Man(a) => shell_cmd::man(a),
        Command::Bench(t) => bench_cmd::run(t),
    };
    match result {
        Ok(code) => std::process::ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(ExitCode::Usage as u8)
        }
    }
}

fn init_tracing() {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // lapin logs every closed channel as an error, also the expected one of a passive declare
    // (does the exchange exist?); the amqp source reports what matters itself. `RUST_LOG`
    // naming lapin shows them.
    if !std::env::var("RUST_LOG").is_ok_and(|v| v.contains("lapin")) {
        if let Ok(d) = "lapin::channel=off".parse() {
            filter = filter.add_directive(d);
        }
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Loads flows for a command that needs them all valid. On errors prints the diagnostics and
/// returns the exit code to use; `only` keeps one flow by name.
/// Resolves at SIGTERM or SIGINT (ctrl-c elsewhere). Call it inside the runtime, before
/// anything starts, so that a signal during the start is not missed.
pub fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

pub fn load_flows(
    paths: &[PathBuf],
    only: Option<&str>,
) -> anyhow::Result<Result<Vec<CompiledFlow>, ExitCode>> {
    let comp = match model::load(paths) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(Err(ExitCode::Usage));
        }
    };
    if comp.has_errors() {
        eprintln!("{}", comp.render());
        eprintln!(
            "error: the flow files have {} error(s); run `flowcast check` for details",
            comp.error_count()
        );
        return Ok(Err(ExitCode::InputErrors));
    }
    let mut flows = comp.flows;
    if let Some(name) = only {
        let names: Vec<String> = flows.iter().map(|f| f.name.clone()).collect();
        flows.retain(|f| f.name == name);
        if flows.is_empty() {
            let hint = model::did_you_mean(name, names.iter().map(String::as_str))
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            eprintln!(
                "error: no flow named `{name}`{hint}; the files define: {}",
                names.join(", ")
            );
            return Ok(Err(ExitCode::Usage));
        }
    }
    Ok(Ok(flows))
}
