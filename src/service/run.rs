//! The live service: one task owns the engine and runs one `select!` loop over batches from the
//! source, control messages (reload, snapshot), queries from the HTTP API, clock ticks and the
//! injected shutdown. Startup is a reload from nothing, so there is one path for both.
//!
//! The engine stays synchronous: it is handed whole batches, never locked per message.

use super::amqp;
use super::config::{Clock, Config, Source};
use super::http::{self, Query};
use super::metrics::Metrics;
use super::sink::Sinks;
use super::source::{self, Delivery, SourceEvent};
use super::state_dir;
use crate::engine::message::decode_projected;
use crate::engine::projection::Projection;
use crate::engine::snapshot::EngineSnapshot;
use crate::engine::{table, Engine};
use crate::model::{self, CompiledFlow};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

pub const SNAPSHOT_FILE: &str = "snapshot.json";

/// The closed set of things that can be asked of the engine loop besides messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Reload,
    Snapshot,
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The flow files could not be read (IO), or they have errors (rendered diagnostics).
enum LoadFailure {
    Io(String),
    Errors(String),
}

impl std::fmt::Display for LoadFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadFailure::Io(e) | LoadFailure::Errors(e) => f.write_str(e),
        }
    }
}

/// The service could not start because the flow files have errors (exit code 1, not 2).
#[derive(Debug)]
pub struct FlowErrors(pub String);

impl std::fmt::Display for FlowErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FlowErrors {}

/// Compiles the flow files; on errors returns them rendered.
fn load_models(path: &PathBuf) -> Result<Vec<CompiledFlow>, LoadFailure> {
    match model::load(std::slice::from_ref(path)) {
        Err(e) => Err(LoadFailure::Io(e.to_string())),
        Ok(c) if c.has_errors() => Err(LoadFailure::Errors(c.render())),
        Ok(c) => {
            for (_, d) in &c.diagnostics {
                tracing::warn!(code = d.code.as_str(), "{}", d.message);
            }
            Ok(c.flows)
        }
    }
}

/// Runs until `shutdown` completes or the source ends. Returns an error only for what prevents
/// starting (broken flow files, an unreachable NATS server, a port in use).
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let (control_tx, mut control_rx) = mpsc::unbounded_channel::<Control>();

    // Startup: a reload from nothing. Without one good set of flows there is nothing to run.
    let flows = load_models(&config.models).map_err(|e| match e {
        LoadFailure::Io(e) => anyhow::anyhow!("{}: {e}", config.models.display()),
        LoadFailure::Errors(e) => {
            anyhow::Error::new(FlowErrors(format!("{}:\n{e}", config.models.display())))
        }
    })?;
    if let Some(cluster) = config.cluster.clone() {
        return super::cluster::run(config, cluster, flows, metrics, shutdown).await;
    }
    let mut engine = Engine::new(Vec::new());
    engine.retire_grace_ms = config.reload_grace_ms;
    // A feature model's refit (about 150 ms at most once a minute) must not pause the intake.
    engine.set_feature_background(true);
    engine.set_limits(config.limits.engine());
    engine.reload(flows);
    metrics.reload_success.store(1, Relaxed);
    metrics.reloads_ok.fetch_add(1, Relaxed);
    metrics.last_reload_unix.store(unix_ms() / 1000, Relaxed);
    let mut projection = engine.projection();
    tracing::info!(flows = engine.flows.len(), models = %config.models.display(), "Flows loaded.");

    // Restore what an earlier run left.
    let mut last_applied: Option<u64> = None;
    let mut source_id: Option<String> = None;
    let mut seen_saved: Vec<u64> = Vec::new();
    // Resolutions of alerts whose flow or state the files no longer define, for the sinks.
    let mut dropped_alerts = Vec::new();
    if let Some(dir) = &config.state_dir {
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
        let snap_path = dir.join(SNAPSHOT_FILE);
        match std::fs::read(&snap_path) {
            Ok(bytes) => {
                let snap: EngineSnapshot = serde_json::from_slice(&bytes).map_err(|e| {
                    anyhow::anyhow!("{} is not a flowcast snapshot: {e}", snap_path.display())
                })?;
                snap.validate()
                    .map_err(|e| anyhow::anyhow!("{}: {e}", snap_path.display()))?;
                let report = engine.restore(&snap);
                // A clock saved ahead of this machine's (a message from the future before the
                // horizon existed, or a machine whose clock was wrong) would hold every timer.
                let now = unix_ms();
                if engine.clock_ms() > now.saturating_add(config.clock.max_future_ms()) {
                    let ahead = engine.pull_clock_back(now).unwrap_or(0);
                    tracing::warn!(
                        ahead_ms = ahead,
                        "The snapshot's clock was ahead of this machine's; moved back to now."
                    );
                }
                last_applied = snap.source_position;
                source_id = snap.source_id.clone();
                seen_saved = snap.source_seen.clone();
                tracing::info!(
                    objects = report.objects_kept,
                    dropped = report.objects_dropped,
                    retired = report.objects_retired,
                    flows_removed = ?report.flows_removed,
                    flows_dropped = ?report.flows_dropped,
                    position = ?last_applied,
                    "Restored the snapshot."
                );
                dropped_alerts = report.records;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(learned) = state_dir::load_learned(dir)? {
                    let (n, _) = engine.import_learned(&learned);
                    tracing::info!(flows = n, "Loaded learned counts (no snapshot yet).");
                }
            }
            Err(e) => return Err(anyhow::anyhow!("{}: {e}", snap_path.display())),
        }
    }

    let frozen = config.learning == super::config::Learning::Frozen;
    if frozen {
        engine.freeze();
        tracing::info!("Learning is frozen: the restored counts are used as they are.");
    }

    let needs_nats = matches!(
        config.source,
        Source::Nats { .. } | Source::Jetstream { .. }
    ) || config
        .sinks
        .iter()
        .any(|s| matches!(s, super::config::Sink::Nats { .. }));
    let client = if needs_nats {
        Some(source::connect(&config.nats, metrics.clone()).await?)
    } else {
        None
    };
    let mut sinks = Sinks::spawn(
        &config.sinks,
        client.clone(),
        metrics.clone(),
        &config.delivery,
    );
    // The dashboard: every record for its alerts board and event streams, and the journal of
    // steps its timelines are rebuilt from (fixed size, `engine/journal.rs`).
    let feed = Arc::new(super::feed::Feed::new());
    sinks.watch(feed.clone());
    // Alerts restored from a snapshot fired in an earlier run: no record announces them.
    let (firing, more) = super::api::firing_now(&mut engine);
    feed.seed(firing, more);
    engine.journal = Some(crate::engine::journal::Journal::new(
        crate::engine::journal::DEFAULT_ENTRIES,
    ));
    for r in dropped_alerts {
        sinks.send(r);
    }

    // HTTP.
    let (query_tx, mut query_rx) = mpsc::channel::<Query>(64);
    let (http_stop_tx, http_stop_rx) = tokio::sync::oneshot::channel::<()>();
    if !config.http.listen.is_empty() {
        let listener = tokio::net::TcpListener::bind(&config.http.listen)
            .await
            .map_err(|e| anyhow::anyhow!("HTTP listen on {}: {e}", config.http.listen))?;
        let addr = listener.local_addr()?;
        tracing::info!(addr = %addr, "HTTP API listening.");
        let token = config.http.bearer_token()?;
        if !addr.ip().is_loopback() && token.is_none() {
            tracing::warn!(addr = %addr, "The HTTP API listens beyond loopback without a token: anyone who can reach it can reload and snapshot. Set http.token or http.token_file.");
        }
        tokio::spawn(http::serve(
            listener,
            http::Limits {
                header_timeout: Duration::from_millis(config.http.header_timeout_ms as u64),
                max_connections: config.http.max_connections.max(1),
                token,
            },
            metrics.clone(),
            feed.clone(),
            query_tx.clone(),
            control_tx.clone(),
            http_stop_rx,
        ));
    }

    // Reload triggers: file changes and SIGHUP.
    let _watcher = if config.watch {
        Some(super::watch::watch(&config.models, control_tx.clone())?)
    } else {
        None
    };
    #[cfg(unix)]
    {
        let tx = control_tx.clone();
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the flow files.");
                let _ = tx.send(Control::Reload);
            }
        });
    }

    let (src_tx, mut src_rx) = mpsc::channel::<SourceEvent>(64);
    let mut amqp = match &config.source {
        Source::Amqp(a) => Some(AmqpState {
            seen: amqp::SeenIds::new(a.dedup_window, &seen_saved),
            owed: amqp::Owed::default(),
            covering: None,
            dead_letter: a.dead_letter_exchange.is_some(),
            prefetch: a.prefetch as usize,
            settle_at_once: config.state_dir.is_none(),
            acks: Some(amqp::Acker::spawn(metrics.clone())),
        }),
        _ => None,
    };
    let source_task = if let Source::Amqp(a) = &config.source {
        // The first connection must succeed: a wrong password or vhost stops the start.
        let session = amqp::open(a, 0).await?;
        tracing::info!(queue = %a.queue, exchanges = ?a.exchanges, "Consuming from RabbitMQ.");
        amqp::spawn(
            session,
            (**a).clone(),
            config.batch_size,
            metrics.clone(),
            src_tx,
        )
    } else {
        source::spawn(
            config.source.clone(),
            client.clone(),
            config.batch_size,
            source::Resume {
                // With a state directory the restored state says what was applied, and a state
                // that has applied nothing starts at the beginning of the stream, whatever the
                // consumer acknowledged for a process whose state was lost.
                position: match &config.state_dir {
                    Some(_) => Some(last_applied.unwrap_or(0)),
                    None => last_applied,
                },
                stream_id: source_id.clone(),
            },
            metrics.clone(),
            src_tx,
        )
    };

    let mut records = Vec::new();
    let mut snapshot_every =
        tokio::time::interval(Duration::from_millis(config.snapshot_interval_ms as u64));
    snapshot_every.tick().await;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut last_message = Instant::now();
    let mut last_tick = Instant::now();
    let (reload_done_tx, mut reload_done_rx) =
        mpsc::unbounded_channel::<Result<Vec<CompiledFlow>, LoadFailure>>();
    let mut reloading = false;
    let mut reload_again = false;
    let mut failure = None;
    // One snapshot is written at a time, off the engine task; requests that come meanwhile
    // (HTTP, the timer) are merged into one more snapshot taken when it is done.
    let (snap_done_tx, mut snap_done_rx) = mpsc::unbounded_channel::<Result<(), String>>();
    let mut snap_writing = false;
    let mut snap_wanted = false;
    tokio::pin!(shutdown);

    loop {
        if snap_wanted && !snap_writing {
            snap_wanted = false;
            snap_writing = start_snapshot(
                &engine,
                &config,
                (last_applied, &source_id, amqp.as_ref().map(|a| &a.seen)),
                sinks.mark(),
                snap_done_tx.clone(),
            );
            if let Some(a) = amqp.as_mut().filter(|_| snap_writing) {
                a.covering = Some(std::mem::take(&mut a.owed));
            }
        }
        tokio::select! {
            biased;
            _ = &mut shutdown => {
                tracing::info!("Shutting down.");
                break;
            }
            Some(done) = reload_done_rx.recv() => {
                reloading = false;
                match done {
                    Ok(flows) => {
                        let report = engine.reload(flows);
                        if frozen {
                            engine.freeze();
                        }
                        projection = engine.projection();
                        metrics.reload_success.store(1, Relaxed);
                        metrics.reloads_ok.fetch_add(1, Relaxed);
                        metrics.last_reload_unix.store(unix_ms() / 1000, Relaxed);
                        *metrics.reload_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
                        tracing::info!(
                            kept = ?report.flows_kept, added = ?report.flows_added, removed = ?report.flows_removed,
                            returned = ?report.flows_returned, dropped = ?report.flows_dropped,
                            objects_kept = report.objects_kept, objects_retired = report.objects_retired,
                            objects_dropped = report.objects_dropped,
                            transitions_dropped = report.transitions_dropped,
                            "Reloaded the flow files."
                        );
                        for r in report.records {
                            sinks.send(r);
                        }
                        publish_metrics(&engine, &metrics);
                    }
                    Err(rendered) => {
                        metrics.reload_success.store(0, Relaxed);
                        metrics.reloads_failed.fetch_add(1, Relaxed);
                        *metrics.reload_error.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some(rendered.to_string());
                        tracing::error!("The flow files have errors; the running flows are kept.\n{rendered}");
                    }
                }
                if reload_again {
                    reload_again = false;
                    let _ = control_tx.send(Control::Reload);
                }
            }
            Some(c) = control_rx.recv() => match c {
                Control::Reload => {
                    if reloading {
                        reload_again = true;
                    } else {
                        reloading = true;
                        let path = config.models.clone();
                        let tx = reload_done_tx.clone();
                        // Compile off to the side; the engine keeps running meanwhile.
                        tokio::task::spawn_blocking(move || {
                            let _ = tx.send(load_models(&path));
                        });
                    }
                }
                Control::Snapshot => snap_wanted = true,
            },
            Some(q) = query_rx.recv() => answer(&mut engine, q),
            _ = snapshot_every.tick() => snap_wanted = true,
            Some(result) = snap_done_rx.recv() => {
                snap_writing = false;
                let saved = result.is_ok();
                count_snapshot(&metrics, result);
                if let Some(a) = amqp.as_mut() {
                    a.snapshot_done(saved, &metrics).await;
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                let target = match config.clock {
                    Clock::Wall { lateness_ms, .. } => Some(unix_ms() - lateness_ms),
                    Clock::Event { idle_after_ms, .. } if idle_after_ms > 0
                        && last_message.elapsed() >= Duration::from_millis(idle_after_ms as u64) =>
                    {
                        Some(engine.clock_ms() + now.duration_since(last_tick).as_millis() as i64)
                    }
                    Clock::Event { .. } => None,
                };
                last_tick = now;
                if let Some(t) = target {
                    if engine.clock_ms() > 0 {
                        engine.advance(t, &mut records);
                        for r in records.drain(..) {
                            sinks.send(r);
                        }
                    }
                }
                let gone = engine.expire_retired();
                if !gone.flows_dropped.is_empty() {
                    tracing::info!(
                        flows = ?gone.flows_dropped, objects_dropped = gone.objects_dropped,
                        "Dropped the flows missing from the files since their grace period."
                    );
                    for r in gone.records {
                        sinks.send(r);
                    }
                }
                publish_metrics(&engine, &metrics);
            }
            // Last: under a backlog the source is always ready, and control work (snapshots,
            // queries, reloads, timers) must not wait for the backlog to drain.
            ev = src_rx.recv() => match ev {
                Some(SourceEvent::Batch(batch)) => {
                    last_message = Instant::now();
                    apply_batch(&mut engine, &projection, &config.clock, batch, (&mut last_applied, &mut amqp), &metrics, &mut records).await;
                    for r in records.drain(..) {
                        sinks.send(r);
                    }
                    if let Some(a) = amqp.as_mut() {
                        // The broker sends at most `prefetch` unacknowledged messages: save
                        // (and so acknowledge) before the window is full, with a quarter of it
                        // left to take in while the snapshot is written.
                        if a.owed.count >= a.prefetch - a.prefetch / 4 {
                            snap_wanted = true;
                        }
                    }
                    publish_metrics(&engine, &metrics);
                }
                Some(SourceEvent::End) | None => {
                    tracing::info!("The source has no more messages.");
                    break;
                }
                Some(SourceEvent::Failed(e)) => {
                    tracing::error!("The source failed: {e}");
                    failure = Some(e);
                    break;
                }
                Some(SourceEvent::Stream { id, reset }) => {
                    if reset {
                        metrics.stream_resets.fetch_add(1, Relaxed);
                        last_applied = None;
                    }
                    source_id = Some(id);
                }
            },
        }
    }

    // An AMQP source keeps its connection until what was applied is acknowledged (below).
    if amqp.is_none() {
        source_task.abort();
    }
    drop(snap_done_tx);
    if snap_writing {
        if let Some(result) = snap_done_rx.recv().await {
            let saved = result.is_ok();
            count_snapshot(&metrics, result);
            if let Some(a) = amqp.as_mut() {
                a.snapshot_done(saved, &metrics).await;
            }
        }
    }
    // Apply what the source had already handed over: it was received, so it counts.
    while let Ok(ev) = src_rx.try_recv() {
        match ev {
            SourceEvent::Batch(batch) => {
                apply_batch(
                    &mut engine,
                    &projection,
                    &config.clock,
                    batch,
                    (&mut last_applied, &mut amqp),
                    &metrics,
                    &mut records,
                )
                .await;
                for r in records.drain(..) {
                    sinks.send(r);
                }
            }
            SourceEvent::Stream { id, reset } => {
                if reset {
                    last_applied = None;
                }
                source_id = Some(id);
            }
            SourceEvent::End | SourceEvent::Failed(_) => {}
        }
    }
    publish_metrics(&engine, &metrics);
    let saved = save_snapshot(
        &engine,
        &config,
        (last_applied, &source_id, amqp.as_ref().map(|a| &a.seen)),
        sinks.mark(),
        &metrics,
    )
    .await;
    if let Some(mut a) = amqp.take() {
        if saved.is_ok() {
            a.covering = Some(std::mem::take(&mut a.owed));
        }
        a.snapshot_done(saved.is_ok(), &metrics).await;
        // The acknowledgements go out before the connection closes, and the connection is
        // closed, not dropped: a dropped one may lose acknowledgements still in its buffers,
        // and their messages come back (tests/amqp.rs saw 34 requeued after a clean stop).
        if let Some(acks) = a.acks.take() {
            acks.finish().await;
        }
        drop(src_rx);
        let mut source_task = source_task;
        if tokio::time::timeout(Duration::from_secs(5), &mut source_task)
            .await
            .is_err()
        {
            tracing::warn!("The RabbitMQ connection did not close within 5 s; dropping it.");
        }
        source_task.abort();
    }
    sinks.drain(Duration::from_secs(5)).await;
    if let Some(c) = client {
        let _ = c.flush().await;
    }
    let _ = http_stop_tx.send(());
    // What was learned since the last good snapshot is lost: say so in the exit status.
    saved.map_err(|e| anyhow::anyhow!("the final snapshot could not be written: {e}"))?;
    match failure {
        // The state is saved; the supervisor learns that the service did not stop by itself.
        Some(e) => Err(anyhow::anyhow!("the source failed: {e}")),
        None => Ok(()),
    }
}

/// Decodes and applies one batch, then acknowledges it (JetStream: one AckAll for the batch).
async fn apply_batch(
    engine: &mut Engine,
    projection: &Projection,
    clock: &Clock,
    batch: Vec<Delivery>,
    (last_applied, amqp): (&mut Option<u64>, &mut Option<AmqpState>),
    metrics: &Metrics,
    records: &mut Vec<crate::engine::output::Record>,
) {
    let wall = matches!(clock, Clock::Wall { .. });
    let now_ms = unix_ms();
    engine.set_horizon(Some(now_ms.saturating_add(clock.max_future_ms())));
    // The acknowledgement with the highest sequence: the source hands messages over in stream
    // order, so once the batch is applied everything up to it is (AckAll).
    let mut to_ack: Option<(u64, async_nats::jetstream::Message)> = None;
    let mut keep_ack = |seq: Option<u64>, ack: Option<async_nats::jetstream::Message>| {
        if let (Some(seq), Some(m)) = (seq, ack) {
            if to_ack.as_ref().is_none_or(|(s, _)| seq > *s) {
                to_ack = Some((seq, m));
            }
        }
    };
    for d in batch {
        if let Some(seq) = d.seq {
            if last_applied.is_some_and(|a| seq <= a) {
                metrics.redeliveries_skipped.fetch_add(1, Relaxed);
                keep_ack(d.seq, d.ack);
                continue;
            }
            *last_applied = Some(seq);
        }
        let decoded = match d.oversized {
            Some(n) => Err(crate::engine::message::DecodeError::TooLarge(n)),
            None => decode_projected(trim(&d.payload), projection),
        };
        if let (Some(tag), Some(a)) = (&d.amqp, amqp.as_mut()) {
            let fresh = a.first_time(tag, &d.payload, &decoded);
            if !fresh {
                metrics.redeliveries_skipped.fetch_add(1, Relaxed);
            }
            a.owed.add(tag, fresh && decoded.is_err() && a.dead_letter);
            if !fresh {
                continue;
            }
        }
        match decoded {
            Ok(mut msg) => {
                if wall && msg.time_ms.is_none() {
                    msg.time_ms = Some(now_ms);
                }
                engine.observe(&msg, records);
            }
            Err(e) => {
                engine.count_malformed();
                let n = engine.stats.malformed;
                if n <= 10 || n.is_multiple_of(1000) {
                    tracing::warn!(malformed = n, "Skipped a malformed message: {e}");
                }
            }
        }
        metrics.observe_latency(d.received.elapsed().as_secs_f64());
        keep_ack(d.seq, d.ack);
    }
    if let Some(a) = amqp.as_mut() {
        if a.settle_at_once {
            let owed = std::mem::take(&mut a.owed);
            a.settle(owed);
        }
        metrics.amqp_unacked.store(a.owed.count as i64, Relaxed);
    }
    // One acknowledgement covers the batch (AckAll). It waits for the server's confirmation,
    // so that once a batch counts as applied its ack is on the server: a crash right after
    // cannot leave it to be redelivered only when `ack_wait` runs out.
    if let Some((_, m)) = to_ack {
        if let Err(e) = m.double_ack().await {
            tracing::warn!("Acknowledging to JetStream failed (the batch will be redelivered and skipped): {e}");
        }
    }
}

fn trim(b: &[u8]) -> &[u8] {
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map(|i| i + 1)
        .unwrap_or(0);
    &b[..end]
}

fn publish_metrics(engine: &Engine, metrics: &Metrics) {
    *metrics.stats.lock().unwrap_or_else(|e| e.into_inner()) = engine.stats.clone();
    let mut m = metrics.in_flight.lock().unwrap_or_else(|e| e.into_inner());
    m.clear();
    for rt in &engine.flows {
        m.insert(rt.flow.name.clone(), rt.objects.len() as u64);
    }
    drop(m);
    let mut f = metrics
        .feature_models
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    f.clear();
    for rt in &engine.flows {
        if let Some(fm) = &rt.model.features {
            f.insert(
                rt.flow.name.clone(),
                (fm.examples.len() as u64, fm.weights.len() as u64),
            );
        }
    }
    drop(f);
    let mut mm = metrics
        .model_members
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    mm.clear();
    for rt in &engine.flows {
        if let Some(mx) = &rt.model.mixture {
            for m in mx.summary() {
                mm.insert(
                    (rt.flow.name.clone(), m.member),
                    (m.weight, m.recent_log_loss),
                );
            }
        }
    }
}

/// How long a snapshot waits for the sinks to send the records it covers.
const SINK_WAIT: Duration = Duration::from_secs(10);

/// Takes a snapshot (a copy by name, in the engine task) and writes it on a blocking thread,
/// which reports on `done`. Returns whether a write was started.
///
/// The write waits (up to `SINK_WAIT`) until every sink has sent or given up the records handed
/// to it before the copy: a snapshot covers the messages applied, and after a crash those are
/// not applied again, so their records must be out first or a crash could lose them (alerts
/// never sent, resolutions never sent). A sink slower than that is named in a warning.
fn start_snapshot(
    engine: &Engine,
    config: &Config,
    (last_applied, source_id, seen): (Option<u64>, &Option<String>, Option<&amqp::SeenIds>),
    mark: super::sink::SinkMark,
    done: mpsc::UnboundedSender<Result<(), String>>,
) -> bool {
    let Some(dir) = config.state_dir.clone() else {
        return false;
    };
    let mut snap = engine.snapshot();
    snap.source_position = last_applied;
    snap.source_id = source_id.clone();
    snap.source_seen = seen.map(amqp::SeenIds::saved).unwrap_or_default();
    tokio::task::spawn_blocking(move || {
        let behind = mark.wait(SINK_WAIT);
        if !behind.is_empty() {
            tracing::warn!(
                sinks = ?behind,
                "Writing a snapshot before these sinks sent the records it covers; a crash now could lose them."
            );
        }
        let result = serde_json::to_vec(&snap)
            .map_err(anyhow::Error::from)
            .and_then(|bytes| state_dir::write_atomic(&dir.join(SNAPSHOT_FILE), &bytes))
            .map_err(|e| format!("{e:#}"));
        let _ = done.send(result);
    });
    true
}

fn count_snapshot(metrics: &Metrics, result: Result<(), String>) {
    match result {
        Ok(()) => {
            metrics.snapshots_ok.fetch_add(1, Relaxed);
            metrics.last_snapshot_unix.store(unix_ms() / 1000, Relaxed);
        }
        Err(e) => {
            metrics.snapshots_failed.fetch_add(1, Relaxed);
            tracing::error!("Writing the snapshot failed: {e}");
        }
    }
}

/// The final snapshot, waited for.
async fn save_snapshot(
    engine: &Engine,
    config: &Config,
    (last_applied, source_id, seen): (Option<u64>, &Option<String>, Option<&amqp::SeenIds>),
    mark: super::sink::SinkMark,
    metrics: &Metrics,
) -> Result<(), String> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    if !start_snapshot(engine, config, (last_applied, source_id, seen), mark, tx) {
        return Ok(());
    }
    let result = rx
        .recv()
        .await
        .unwrap_or_else(|| Err("the snapshot task failed".into()));
    count_snapshot(metrics, result.clone());
    result
}

fn answer(engine: &mut Engine, q: Query) {
    match q {
        Query::Flows(reply) => {
            let flows: Vec<serde_json::Value> = engine
                .flows
                .iter()
                .map(|rt| {
                    serde_json::json!({
                        "name": rt.flow.name,
                        "description": rt.flow.description,
                        "origin": rt.flow.origin,
                        "states": rt.flow.states,
                        "in_flight": rt.objects.len(),
                        "matched": rt.matched,
                        "observed_transitions": rt.model.total_observed(),
                    })
                })
                .collect();
            let _ = reply.send(serde_json::json!({ "flows": flows }));
        }
        Query::Model(name, reply) => {
            let v = engine.flow_index(&name).map(|fi| {
                serde_json::to_value(table::build(&mut engine.flows[fi])).unwrap_or_default()
            });
            let _ = reply.send(v);
        }
        Query::Object(key, reply) => {
            let key = crate::engine::key::ObjectKey::parse(&key);
            let found: Vec<serde_json::Value> = (0..engine.flows.len())
                .filter_map(|fi| super::api::object_view(engine, fi, &key))
                .collect();
            let _ = reply.send(
                (!found.is_empty())
                    .then(|| serde_json::json!({ "object": key.to_string(), "flows": found })),
            );
        }
        // The dashboard's questions.
        q => super::api::answer(engine, q),
    }
}

/// The AMQP source's side of the engine task: the window of applied message ids and the
/// acknowledgements owed, split into those a snapshot being written covers (`covering`) and
/// those after it.
struct AmqpState {
    seen: amqp::SeenIds,
    owed: amqp::Owed,
    covering: Option<amqp::Owed>,
    dead_letter: bool,
    prefetch: usize,
    /// No state directory: nothing is saved, so a message is acknowledged once applied.
    settle_at_once: bool,
    /// Sends the acknowledgements, in order, off the engine task (which never waits for them).
    acks: Option<amqp::Acker>,
}

impl AmqpState {
    /// Whether this delivery is new: its oslo `message_id` (or, for a redelivery without one,
    /// its body) is not among those applied. A new one is remembered.
    fn first_time(
        &mut self,
        tag: &amqp::AmqpTag,
        payload: &[u8],
        decoded: &Result<crate::engine::message::Message, crate::engine::message::DecodeError>,
    ) -> bool {
        match decoded.as_ref().ok().and_then(|m| m.message_id.as_deref()) {
            Some(id) => self.seen.insert(amqp::fnv1a(b'i', id.as_bytes())),
            None => {
                let h = amqp::fnv1a(b'b', payload);
                if tag.redelivered && self.seen.contains(h) {
                    false
                } else {
                    self.seen.insert(h);
                    true
                }
            }
        }
    }

    fn settle(&self, owed: amqp::Owed) {
        if let Some(acks) = &self.acks {
            acks.send(owed);
        }
    }

    /// A snapshot has been written (`saved`) or has failed: acknowledge what it covers, or keep
    /// it owed for the next one.
    async fn snapshot_done(&mut self, saved: bool, metrics: &Metrics) {
        let Some(covered) = self.covering.take() else {
            return;
        };
        if saved {
            self.settle(covered);
        } else {
            self.owed.append(covered);
        }
        metrics.amqp_unacked.store(self.owed.count as i64, Relaxed);
    }
}
