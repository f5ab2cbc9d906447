//! `flowcast bench ...` (hidden): the measuring tools `bench/run.sh` needs beside the real
//! commands, so that every comparison in BENCHMARKS.md is made by one binary in one run:
//! - `parse FILE`: the ceiling for replay, a `serde_json` parse of every line and nothing else;
//! - `subscribe`: a bare core NATS subscriber counting messages;
//! - `consume`: a bare JetStream pull consumer acknowledging like flowcast (AckAll per batch);
//! - `amqp-consume`: a bare lapin consumer of a RabbitMQ queue with flowcast's prefetch and
//!   batching, one `basic.ack` (multiple) per batch;
//! - `latency`: publishes at a fixed rate and times each alert that comes back on NATS;
//! - `rtt`: NATS request/reply round trips, the floor for any latency over NATS;
//! - `reload`: rewrites a flow file and times until `/metrics` shows the reload.

use super::ExitCode;
use futures::StreamExt;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Subcommand)]
pub enum BenchTool {
    Parse {
        file: PathBuf,
    },
    Subscribe {
        #[arg(long)]
        url: String,
        #[arg(long)]
        subject: String,
        #[arg(long)]
        count: u64,
    },
    Consume {
        #[arg(long)]
        url: String,
        #[arg(long)]
        stream: String,
        #[arg(long)]
        count: u64,
    },
    AmqpConsume {
        #[arg(long)]
        url: String,
        /// The exchange the queue is bound to (`notifications.*`).
        #[arg(long)]
        exchange: String,
        #[arg(long)]
        queue: String,
        /// 0: declare and bind the queue, and stop.
        #[arg(long)]
        count: u64,
        #[arg(long, default_value_t = 10000)]
        prefetch: u16,
        #[arg(long, default_value_t = 1024)]
        batch: usize,
    },
    Latency {
        #[arg(long)]
        url: String,
        /// Messages to publish (each line once, in order).
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        subject: String,
        /// Messages per second.
        #[arg(long)]
        rate: f64,
    },
    Rtt {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 20000)]
        count: usize,
    },
    Reload {
        /// The service's HTTP address, host:port.
        #[arg(long)]
        http: String,
        /// The flow file to rewrite (its content is written back unchanged but for a comment).
        #[arg(long)]
        file: PathBuf,
        #[arg(long, default_value_t = 20)]
        times: usize,
    },
}

pub fn run(tool: BenchTool) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match tool {
        BenchTool::Parse { file } => {
            let bytes = std::fs::read(&file)?;
            let start = Instant::now();
            let mut n = 0u64;
            let mut objects = 0u64;
            for line in bytes.split(|b| *b == b'\n') {
                if line.is_empty() {
                    continue;
                }
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) {
                    objects += u64::from(v.is_object());
                }
                n += 1;
            }
            let s = start.elapsed().as_secs_f64();
            // A scan that validates the JSON and builds nothing: the floor of any JSON reader.
            let start = Instant::now();
            for line in bytes.split(|b| *b == b'\n') {
                if !line.is_empty() {
                    let _ = serde_json::from_slice::<serde::de::IgnoredAny>(line);
                }
            }
            let scan = start.elapsed().as_secs_f64();
            println!(
                "{{\"messages\": {n}, \"objects\": {objects}, \"seconds\": {s:.4}, \"per_second\": {:.0}, \"scan_seconds\": {scan:.4}, \"scan_per_second\": {:.0}}}",
                n as f64 / s,
                n as f64 / scan
            );
        }
        BenchTool::Subscribe {
            url,
            subject,
            count,
        } => rt.block_on(async move {
            let c = async_nats::connect(url.as_str()).await?;
            let mut sub = c.subscribe(subject).await?;
            c.flush().await?;
            eprintln!("ready");
            let mut n = 0;
            let mut start = None;
            while n < count {
                match tokio::time::timeout(Duration::from_secs(10), sub.next()).await {
                    Ok(Some(_)) => {
                        start.get_or_insert_with(Instant::now);
                        n += 1;
                    }
                    _ => break,
                }
            }
            let s = start.map(|s| s.elapsed().as_secs_f64()).unwrap_or(0.0);
            println!(
                "{{\"messages\": {n}, \"seconds\": {s:.4}, \"per_second\": {:.0}}}",
                n as f64 / s.max(1e-9)
            );
            anyhow::Ok(())
        })?,
        BenchTool::Consume { url, stream, count } => rt.block_on(async move {
            use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy};
            let c = async_nats::connect(url.as_str()).await?;
            let js = jetstream::new(c);
            let s = js
                .get_stream(&stream)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let consumer: jetstream::consumer::PullConsumer = s
                .create_consumer(pull::Config {
                    durable_name: Some("bench-bare".into()),
                    ack_policy: AckPolicy::All,
                    max_ack_pending: 1_000_000,
                    ..Default::default()
                })
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut msgs = consumer
                .messages()
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let start = Instant::now();
            let mut n = 0u64;
            while n < count {
                let Some(first) = msgs.next().await else {
                    break;
                };
                let mut last = first.map_err(|e| anyhow::anyhow!("{e}"))?;
                n += 1;
                // The same batching as flowcast: take what is ready, acknowledge the last.
                while n < count {
                    match futures::FutureExt::now_or_never(msgs.next()) {
                        Some(Some(Ok(m))) => {
                            last = m;
                            n += 1;
                        }
                        _ => break,
                    }
                }
                last.double_ack()
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            let sec = start.elapsed().as_secs_f64();
            println!(
                "{{\"messages\": {n}, \"seconds\": {sec:.4}, \"per_second\": {:.0}}}",
                n as f64 / sec
            );
            anyhow::Ok(())
        })?,
        BenchTool::AmqpConsume {
            url,
            exchange,
            queue,
            count,
            prefetch,
            batch,
        } => rt.block_on(amqp_consume(url, exchange, queue, count, prefetch, batch))?,
        BenchTool::Latency {
            url,
            file,
            subject,
            rate,
        } => rt.block_on(async move {
            let text = std::fs::read(&file)?;
            let lines: Vec<bytes::Bytes> = text
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(bytes::Bytes::copy_from_slice)
                .collect();
            let ids: Vec<Option<String>> = lines
                .iter()
                .map(|l| {
                    serde_json::from_slice::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| {
                            v.get("message_id")
                                .and_then(|m| m.as_str())
                                .map(str::to_string)
                        })
                })
                .collect();
            let c = async_nats::connect(url.as_str()).await?;
            let mut alerts = c.subscribe("flowcast.alerts.>").await?;
            c.flush().await?;
            let sent: std::sync::Arc<std::sync::Mutex<HashMap<String, Instant>>> =
                Default::default();
            let sent2 = sent.clone();
            let collector = tokio::spawn(async move {
                let mut lat = Vec::new();
                while let Ok(Some(m)) =
                    tokio::time::timeout(Duration::from_secs(3), alerts.next()).await
                {
                    let now = Instant::now();
                    let v: serde_json::Value =
                        serde_json::from_slice(&m.payload).unwrap_or_default();
                    if v["type"] != "alert" {
                        continue;
                    }
                    if let Some(id) = v["cause"]["message_id"].as_str() {
                        if let Some(t) = sent2.lock().unwrap_or_else(|e| e.into_inner()).get(id) {
                            lat.push(now.duration_since(*t).as_secs_f64() * 1000.0);
                        }
                    }
                }
                lat
            });
            let start = Instant::now();
            for (i, (l, id)) in lines.iter().zip(&ids).enumerate() {
                let due = Duration::from_secs_f64(i as f64 / rate);
                let el = start.elapsed();
                if due > el {
                    tokio::time::sleep(due - el).await;
                }
                if let Some(id) = id {
                    sent.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(id.clone(), Instant::now());
                }
                c.publish(subject.clone(), l.clone()).await?;
            }
            c.flush().await?;
            let mut lat = collector.await?;
            lat.sort_by(|a, b| a.total_cmp(b));
            let q = |p: f64| {
                lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
                    .copied()
                    .unwrap_or(f64::NAN)
            };
            println!(
                "{{\"alerts\": {}, \"p50_ms\": {:.3}, \"p99_ms\": {:.3}, \"max_ms\": {:.3}}}",
                lat.len(),
                q(0.5),
                q(0.99),
                lat.last().copied().unwrap_or(f64::NAN)
            );
            anyhow::Ok(())
        })?,
        BenchTool::Rtt { url, count } => rt.block_on(async move {
            let c = async_nats::connect(url.as_str()).await?;
            let mut sub = c.subscribe("bench.rtt").await?;
            let responder = c.clone();
            tokio::spawn(async move {
                while let Some(m) = sub.next().await {
                    if let Some(reply) = m.reply {
                        let _ = responder.publish(reply, m.payload).await;
                    }
                }
            });
            c.flush().await?;
            let payload = bytes::Bytes::from(vec![b'x'; 1500]);
            let mut lat = Vec::with_capacity(count);
            for _ in 0..count {
                let t = Instant::now();
                c.request("bench.rtt", payload.clone()).await?;
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            lat.sort_by(|a, b| a.total_cmp(b));
            println!(
                "{{\"requests\": {count}, \"p50_ms\": {:.3}, \"p99_ms\": {:.3}}}",
                lat[lat.len() / 2],
                lat[(lat.len() as f64 * 0.99) as usize]
            );
            anyhow::Ok(())
        })?,
        BenchTool::Reload { http, file, times } => {
            let original = std::fs::read_to_string(&file)?;
            let reloads = || -> Option<f64> {
                let (_, body) = http_get(&http, "/metrics")?;
                body.lines()
                    .find(|l| l.starts_with("flowcast_reloads_total{result=\"success\"}"))
                    .and_then(|l| l.rsplit(' ').next())
                    .and_then(|v| v.parse().ok())
            };
            let mut lat = Vec::new();
            for i in 0..times {
                let before = reloads().ok_or_else(|| anyhow::anyhow!("no metrics at {http}"))?;
                let start = Instant::now();
                std::fs::write(&file, format!("{original}\n# bench edit {i}\n"))?;
                loop {
                    if reloads().is_some_and(|n| n > before) {
                        lat.push(start.elapsed().as_secs_f64() * 1000.0);
                        break;
                    }
                    if start.elapsed() > Duration::from_secs(5) {
                        anyhow::bail!("no reload seen within 5 s");
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            std::fs::write(&file, &original)?;
            lat.sort_by(|a, b| a.total_cmp(b));
            println!(
                "{{\"reloads\": {}, \"median_ms\": {:.1}, \"max_ms\": {:.1}}}",
                lat.len(),
                lat[lat.len() / 2],
                lat[lat.len() - 1]
            );
        }
    }
    Ok(ExitCode::Ok)
}

fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split(' ').nth(1)?.parse().ok()?;
    Some((status, buf.split_once("\r\n\r\n")?.1.to_string()))
}

async fn amqp_consume(
    url: String,
    exchange: String,
    queue: String,
    count: u64,
    prefetch: u16,
    batch: usize,
) -> anyhow::Result<()> {
    use lapin::options::*;
    use lapin::types::FieldTable;
    let conn = lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.exchange_declare(
        exchange.as_str().into(),
        lapin::ExchangeKind::Topic,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await?;
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
    ch.queue_bind(
        queue.as_str().into(),
        exchange.as_str().into(),
        "notifications.*".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    if count == 0 {
        conn.close(200, "declared".into()).await?;
        return Ok(());
    }
    ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            queue.as_str().into(),
            "bench-bare".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let start = Instant::now();
    let mut n = 0u64;
    let mut bytes = 0u64;
    while n < count {
        let Some(first) = consumer.next().await else {
            break;
        };
        let mut last = first?;
        n += 1;
        bytes += last.data.len() as u64;
        let mut in_batch = 1;
        while n < count && in_batch < batch {
            match futures::FutureExt::now_or_never(consumer.next()) {
                Some(Some(Ok(d))) => {
                    bytes += d.data.len() as u64;
                    last = d;
                    n += 1;
                    in_batch += 1;
                }
                _ => break,
            }
        }
        ch.basic_ack(last.delivery_tag, BasicAckOptions { multiple: true })
            .await?;
    }
    let sec = start.elapsed().as_secs_f64();
    println!(
        "{{\"messages\": {n}, \"bytes\": {bytes}, \"seconds\": {sec:.4}, \"per_second\": {:.0}}}",
        n as f64 / sec
    );
    conn.close(200, "done".into()).await?;
    Ok(())
}
