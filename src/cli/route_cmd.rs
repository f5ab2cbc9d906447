//! `flowcast route`: messages from a JetStream stream onto partition subjects
//! (`service::route`).

use super::{load_flows, ExitCode};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct RouteArgs {
    /// Directory (or file) of flow definitions: their keys decide the partitions.
    #[arg(long, default_value = "models")]
    pub models: PathBuf,
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub url: String,
    /// The JetStream stream to read (the notifications as they arrive).
    #[arg(long)]
    pub from_stream: String,
    /// The durable consumer the routers share.
    #[arg(long, default_value = "flowcast-route")]
    pub consumer: String,
    /// Partitions: fixed once per deployment (objects move if it changes).
    #[arg(long, default_value_t = 64)]
    pub partitions: u32,
    /// The partition stream (created when missing) and its subject prefix.
    #[arg(long, default_value = "FLOWCAST_PARTS")]
    pub stream: String,
    #[arg(long, default_value = "flowcast.part")]
    pub prefix: String,
    /// Replicas of a partition stream created here (3 in a cluster).
    #[arg(long, default_value_t = 1)]
    pub replicas: usize,
    /// The partition stream's duplicate window (a duration): longer than a router takes to
    /// come back after a crash, `--ack-wait` included.
    #[arg(long, default_value = "2m")]
    pub duplicate_window: String,
    /// How long a fetched message waits for its acknowledgement before it is sent again.
    #[arg(long, default_value = "30s")]
    pub ack_wait: String,
    /// Messages per fetch (acknowledged together).
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
}

pub fn run(args: RouteArgs) -> anyhow::Result<ExitCode> {
    let flows = match load_flows(std::slice::from_ref(&args.models), None)? {
        Ok(f) => f,
        Err(code) => return Ok(code),
    };
    let duration = |name: &str, text: &str| match crate::syntax::parse_duration_ms(text) {
        Some(ms) if ms > 0 => Ok(ms as u64),
        _ => Err(format!(
            "--{name} {text}: not a positive duration (like `2m`)"
        )),
    };
    let (window, ack_wait) = match (
        duration("duplicate-window", &args.duplicate_window),
        duration("ack-wait", &args.ack_wait),
    ) {
        (Ok(w), Ok(a)) => (w, a),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::Usage);
        }
    };
    if args.partitions == 0 {
        eprintln!("error: --partitions must be at least 1");
        return Ok(ExitCode::Usage);
    }
    let opts = crate::service::route::RouteOptions {
        url: args.url,
        from_stream: args.from_stream,
        consumer: args.consumer,
        partitions: args.partitions,
        stream: args.stream,
        prefix: args.prefix,
        replicas: args.replicas,
        duplicate_window_ms: window,
        ack_wait_ms: ack_wait,
        batch: args.batch,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let stats = rt.block_on(async move {
        let shutdown = super::shutdown_signal()?;
        crate::service::route::route(flows, opts, shutdown).await
    })?;
    eprintln!("{}", serde_json::to_string(&stats)?);
    Ok(ExitCode::Ok)
}
