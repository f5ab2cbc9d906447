//! `flowcast run`: the live service. `flowcast publish`: play a JSONL file onto NATS.

use super::ExitCode;
use crate::service::config::{Config, Source};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The YAML configuration; every setting has a default.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The flow files (overrides the configuration's `models`).
    #[arg(long)]
    pub models: Option<PathBuf>,
    /// Read messages from this JSONL file (`-`: stdin) instead of the configured source.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Where snapshots live (overrides `state_dir`).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// HTTP listen address (overrides `http.listen`; empty disables it).
    #[arg(long)]
    pub http: Option<String>,
    /// Validate the configuration and the flow files, then exit.
    #[arg(long)]
    pub check_config: bool,
}

fn config_of(args: &RunArgs) -> anyhow::Result<Config> {
    let mut c = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if let Some(m) = &args.models {
        c.models = m.clone();
    }
    if let Some(p) = &args.input {
        c.source = Source::File { path: p.clone() };
    }
    if let Some(d) = &args.state_dir {
        c.state_dir = Some(d.clone());
    }
    if let Some(h) = &args.http {
        c.http.listen = h.clone();
    }
    Ok(c)
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    // Exit codes as every command: a file that cannot be read is an IO failure (2); a
    // configuration or flow file with errors is input with errors (1).
    if let Some(p) = &args.config {
        if let Err(e) = std::fs::metadata(p) {
            eprintln!("error: {}: {e}", p.display());
            return Ok(ExitCode::Usage);
        }
    }
    let config = match config_of(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(ExitCode::InputErrors);
        }
    };
    if args.check_config {
        let comp = match crate::model::load(std::slice::from_ref(&config.models)) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(ExitCode::Usage);
            }
        };
        if comp.has_errors() {
            eprintln!("{}", comp.render());
            return Ok(ExitCode::InputErrors);
        }
        eprintln!(
            "configuration ok: {} flow(s) from {}",
            comp.flows.len(),
            config.models.display()
        );
        return Ok(ExitCode::Ok);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async move {
        // The handlers are installed here, before anything starts: a SIGTERM that arrives
        // while the service is starting must still stop it cleanly (snapshot included).
        let shutdown = super::shutdown_signal()?;
        crate::service::run::run(config, shutdown).await
    });
    // Reading stdin blocks a thread of the runtime's pool that no shutdown can interrupt;
    // dropping the runtime would wait for it until stdin closes (minutes, or never). The
    // service has stopped and saved its state: leave such threads behind.
    rt.shutdown_background();
    match result {
        Ok(()) => Ok(ExitCode::Ok),
        Err(e)
            if e.downcast_ref::<crate::service::run::FlowErrors>()
                .is_some() =>
        {
            eprintln!("error: {e:#}");
            Ok(ExitCode::InputErrors)
        }
        Err(e) => Err(e),
    }
}

#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// Messages, one JSON object a line.
    pub file: PathBuf,
    /// The NATS subject (NATS and JetStream).
    #[arg(long, required_unless_present = "amqp")]
    pub subject: Option<String>,
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub url: String,
    /// Publish to RabbitMQ instead, as oslo.messaging's `messagingv2` driver does: each line
    /// wrapped in the oslo envelope, persistent, to `--exchange` with the routing key
    /// `<topic>.<priority>` (the line's `priority`, else `info`), with publisher confirms.
    #[arg(long, value_name = "URL", conflicts_with_all = ["subject", "jetstream"])]
    pub amqp: Option<String>,
    /// The exchange (the service's `control_exchange`).
    #[arg(long, default_value = "nova", requires = "amqp")]
    pub exchange: String,
    /// oslo's notification topic.
    #[arg(long, default_value = "notifications", requires = "amqp")]
    pub topic: String,
    /// Send the lines as they are, without the oslo envelope.
    #[arg(long, requires = "amqp")]
    pub raw: bool,
    /// Messages per second (default: as fast as possible).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Publish through JetStream and wait for its acknowledgements.
    #[arg(long)]
    pub jetstream: bool,
    /// Send the file this many times.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
}

pub fn publish(args: PublishArgs) -> anyhow::Result<ExitCode> {
    let text =
        std::fs::read(&args.file).map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?;
    let lines: Vec<bytes::Bytes> = text
        .split(|b| *b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .map(bytes::Bytes::copy_from_slice)
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if let Some(url) = &args.amqp {
        let opts = crate::service::amqp::PublishOptions {
            url: url.clone(),
            exchange: args.exchange.clone(),
            topic: args.topic.clone(),
            envelope: !args.raw,
            rate: args.rate,
            repeat: args.repeat,
        };
        let (sent, secs) = rt.block_on(crate::service::amqp::publish(&opts, &lines))?;
        eprintln!(
            "published {sent} messages in {secs:.3} s ({:.0}/s)",
            sent as f64 / secs.max(1e-9)
        );
        return Ok(ExitCode::Ok);
    }
    let subject = args.subject.clone().unwrap_or_default();
    rt.block_on(async move {
        let client = async_nats::connect(args.url.as_str())
            .await
            .map_err(|e| anyhow::anyhow!("connecting to {}: {e}", args.url))?;
        let js = async_nats::jetstream::new(client.clone());
        let start = Instant::now();
        let mut sent = 0u64;
        let mut pending = futures::stream::FuturesOrdered::new();
        use futures::StreamExt;
        for _ in 0..args.repeat {
            for l in &lines {
                if let Some(rate) = args.rate {
                    let due = Duration::from_secs_f64(sent as f64 / rate);
                    let elapsed = start.elapsed();
                    if due > elapsed {
                        tokio::time::sleep(due - elapsed).await;
                    }
                }
                if args.jetstream {
                    pending.push_back(std::future::IntoFuture::into_future(
                        js.publish(subject.clone(), l.clone()).await?,
                    ));
                    // Keep a window of acknowledgements in flight.
                    while pending.len() >= 256 {
                        if let Some(ack) = pending.next().await {
                            ack?;
                        }
                    }
                } else {
                    client.publish(subject.clone(), l.clone()).await?;
                }
                sent += 1;
            }
        }
        while let Some(ack) = pending.next().await {
            ack?;
        }
        client.flush().await?;
        let secs = start.elapsed().as_secs_f64();
        eprintln!(
            "published {sent} messages in {secs:.3} s ({:.0}/s)",
            sent as f64 / secs.max(1e-9)
        );
        anyhow::Ok(())
    })?;
    Ok(ExitCode::Ok)
}
