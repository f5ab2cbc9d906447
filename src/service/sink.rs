//! Sinks: where records go. Each sink is a task with its own bounded queue. The engine never
//! waits for a sink: when a queue is full the record is dropped for that sink and counted. A
//! delivery that fails with a transient error is retried with exponential backoff (100 ms
//! doubling to 30 s) at most `delivery.max_retries` times while newer records wait in the
//! queue; a permanent error (HTTP 4xx but 408 and 429, a record over NATS `max_payload`) drops
//! the record at once; a request that times out is not retried, because the receiver may have
//! taken it. No record leaves a queue uncounted: it is sent, or dropped with a reason, or
//! counted as discarded at shutdown.

use super::config::{Delivery, Sink};
use super::metrics::Metrics;
use crate::engine::output::Record;
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

const QUEUE: usize = 16_384;

pub struct SinkHandle {
    pub name: String,
    tx: mpsc::Sender<Arc<Record>>,
    /// Records handed to the sink and not yet sent or dropped (queued or in hand).
    pending: Arc<AtomicU64>,
    /// Records handed to the sink so far (the send side's count).
    handed: AtomicU64,
    /// Records the sink is done with so far, in order: sent (written and flushed, for stdout)
    /// or dropped. `handed` at some moment minus this is what a crash then could lose.
    finished: Arc<AtomicU64>,
}

/// How far every sink had been handed records at one moment (`Sinks::mark`): a snapshot taken
/// then is written once each sink has finished that many, so that the state on disk never
/// covers a message whose records a crash could still lose.
pub struct SinkMark(Vec<(String, Arc<AtomicU64>, u64)>);

impl SinkMark {
    /// Waits (blocking; on a writer thread) until every sink has caught up with the mark, at
    /// most `limit`. Returns the sinks still behind then.
    pub fn wait(&self, limit: Duration) -> Vec<String> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let behind: Vec<String> = self
                .0
                .iter()
                .filter(|(_, done, mark)| done.load(Relaxed) < *mark)
                .map(|(name, ..)| name.clone())
                .collect();
            if behind.is_empty() || std::time::Instant::now() >= deadline {
                return behind;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

pub struct Sinks {
    handles: Vec<SinkHandle>,
    metrics: Arc<Metrics>,
    /// The dashboard's feed, which sees every record the sinks get (`feed.rs`).
    feed: Option<Arc<super::feed::Feed>>,
}

impl Sinks {
    pub fn spawn(
        config: &[Sink],
        nats: Option<async_nats::Client>,
        metrics: Arc<Metrics>,
        delivery: &Delivery,
    ) -> Sinks {
        let mut handles = Vec::new();
        for (i, s) in config.iter().enumerate() {
            let (tx, rx) = mpsc::channel(QUEUE);
            let name = match s {
                Sink::Stdout {} => "stdout".to_string(),
                Sink::Nats { .. } => "nats".to_string(),
                Sink::Webhook { .. } => "webhook".to_string(),
                Sink::Alertmanager { .. } => "alertmanager".to_string(),
            };
            let name = if config
                .iter()
                .filter(|o| std::mem::discriminant(*o) == std::mem::discriminant(s))
                .count()
                > 1
            {
                format!("{name}{i}")
            } else {
                name
            };
            let pending = Arc::new(AtomicU64::new(0));
            let finished = Arc::new(AtomicU64::new(0));
            let task = SinkTask {
                name: name.clone(),
                metrics: metrics.clone(),
                pending: pending.clone(),
                finished: finished.clone(),
                timeout: Duration::from_millis(delivery.timeout_ms.max(1) as u64),
                max_retries: delivery.max_retries,
            };
            match s.clone() {
                Sink::Stdout {} => {
                    tokio::spawn(task.stdout(rx));
                }
                Sink::Nats { prefix } => match nats.clone() {
                    Some(client) => {
                        tokio::spawn(task.nats(rx, client, prefix));
                    }
                    None => {
                        tracing::error!(sink = %name, "The NATS sink needs a NATS connection; its records are dropped.");
                        tokio::spawn(task.discard(rx));
                    }
                },
                Sink::Webhook { url } => {
                    tokio::spawn(task.webhook(rx, url));
                }
                Sink::Alertmanager { url, generator_url } => {
                    tokio::spawn(task.alertmanager(rx, url, generator_url));
                }
            }
            handles.push(SinkHandle {
                name,
                tx,
                pending,
                handed: AtomicU64::new(0),
                finished,
            });
        }
        Sinks {
            handles,
            metrics,
            feed: None,
        }
    }

    /// Hands every record sent from now on to `feed` as well.
    pub fn watch(&mut self, feed: Arc<super::feed::Feed>) {
        self.feed = Some(feed);
    }

    /// Hands a record to every sink without waiting (and to the dashboard's feed).
    pub fn send(&self, record: Record) {
        if let Some(f) = &self.feed {
            f.publish(&record);
        }
        let r = Arc::new(record);
        for h in &self.handles {
            // Counted before the send, so that the task never sees a record it was not told of.
            h.pending.fetch_add(1, Relaxed);
            if h.tx.try_send(r.clone()).is_err() {
                h.pending.fetch_sub(1, Relaxed);
                self.metrics.dropped(&h.name, "queue_full", 1);
                continue;
            }
            h.handed.fetch_add(1, Relaxed);
        }
    }

    /// Where every sink stands now; see [`SinkMark`].
    pub fn mark(&self) -> SinkMark {
        SinkMark(
            self.handles
                .iter()
                .map(|h| (h.name.clone(), h.finished.clone(), h.handed.load(Relaxed)))
                .collect(),
        )
    }

    /// Waits (up to `limit`) until every sink has sent or dropped what it was given, for
    /// shutdown. What is still queued or in hand then is discarded, and counted and logged.
    pub async fn drain(self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        for h in &self.handles {
            while h.pending.load(Relaxed) > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        for h in &self.handles {
            let left = h.pending.load(Relaxed);
            if left > 0 {
                self.metrics.dropped(&h.name, "shutdown", left);
                tracing::warn!(
                    sink = %h.name,
                    records = left,
                    "Records still queued at shutdown were discarded."
                );
            }
        }
        drop(self.handles);
    }
}

/// Why one delivery attempt failed, which decides what happens to the record.
#[derive(Debug)]
enum Failure {
    /// Worth another try (no connection, HTTP 5xx, 408, 429).
    Transient(String),
    /// The receiver will never take this record (HTTP 4xx, over NATS `max_payload`).
    Permanent(String),
    /// No answer in time: the receiver may have the record, so it is not sent again.
    Timeout(String),
}

struct SinkTask {
    name: String,
    metrics: Arc<Metrics>,
    pending: Arc<AtomicU64>,
    finished: Arc<AtomicU64>,
    timeout: Duration,
    max_retries: u32,
}

impl SinkTask {
    fn sent(&self, n: u64) {
        Metrics::bump(&self.metrics.sink_sent, &self.name, n);
    }

    /// One record taken from the queue is done with (sent or dropped).
    fn done(&self) {
        self.pending.fetch_sub(1, Relaxed);
        self.finished.fetch_add(1, Relaxed);
    }

    fn http_client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(self.timeout)
            .build()
            .unwrap_or_default()
    }

    async fn discard(self, mut rx: mpsc::Receiver<Arc<Record>>) {
        while rx.recv().await.is_some() {
            self.metrics.dropped(&self.name, "no_connection", 1);
            self.done();
        }
    }

    /// Written records are done once flushed: a record still in the buffer is not out yet.
    async fn stdout(self, mut rx: mpsc::Receiver<Arc<Record>>) {
        let mut out = tokio::io::BufWriter::new(tokio::io::stdout());
        let mut unflushed = 0u64;
        while let Some(r) = rx.recv().await {
            let mut line = serde_json::to_vec(&*r).unwrap_or_default();
            line.push(b'\n');
            if out.write_all(&line).await.is_err() {
                Metrics::bump(&self.metrics.sink_failures, &self.name, 1);
                self.metrics.dropped(&self.name, "write_error", 1);
                self.done();
                continue;
            }
            self.sent(1);
            unflushed += 1;
            if rx.is_empty() || unflushed >= 512 {
                let _ = out.flush().await;
                for _ in 0..std::mem::take(&mut unflushed) {
                    self.done();
                }
            }
        }
        let _ = out.flush().await;
        for _ in 0..unflushed {
            self.done();
        }
    }

    /// Delivers with `attempt`: transient failures are retried with exponential backoff at
    /// most `max_retries` times; a permanent failure or a timeout ends it at once. Every failed
    /// attempt is counted, and a record given up is counted with its reason.
    async fn retry<F, Fut>(&self, mut attempt: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), Failure>>,
    {
        let mut delay = Duration::from_millis(100);
        let mut retries = 0;
        loop {
            let e = match attempt().await {
                Ok(()) => {
                    self.sent(1);
                    return;
                }
                Err(e) => e,
            };
            Metrics::bump(&self.metrics.sink_failures, &self.name, 1);
            let (reason, e) = match e {
                Failure::Permanent(e) => ("rejected", e),
                Failure::Timeout(e) => ("timeout", e),
                Failure::Transient(e) if retries >= self.max_retries => ("retries_exhausted", e),
                Failure::Transient(e) => {
                    tracing::warn!(sink = %self.name, retry_in_ms = delay.as_millis() as u64, "Delivery failed: {e}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                    retries += 1;
                    continue;
                }
            };
            self.metrics.dropped(&self.name, reason, 1);
            tracing::warn!(sink = %self.name, reason, retries, "Dropped a record: {e}");
            return;
        }
    }

    async fn nats(
        self,
        mut rx: mpsc::Receiver<Arc<Record>>,
        client: async_nats::Client,
        prefix: String,
    ) {
        while let Some(r) = rx.recv().await {
            let subject = format!("{prefix}.{}", r.flow());
            let body = bytes::Bytes::from(serde_json::to_vec(&*r).unwrap_or_default());
            let timeout = self.timeout;
            self.retry(|| {
                let (client, subject, body) = (client.clone(), subject.clone(), body.clone());
                async move {
                    use async_nats::client::PublishErrorKind as Kind;
                    match tokio::time::timeout(timeout, client.publish(subject, body)).await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => match e.kind() {
                            Kind::MaxPayloadExceeded | Kind::BadSubject => {
                                Err(Failure::Permanent(e.to_string()))
                            }
                            Kind::Send => Err(Failure::Transient(e.to_string())),
                        },
                        // Not handed to the client in time (it is reconnecting): not sent.
                        Err(_) => Err(Failure::Transient("publishing timed out".into())),
                    }
                }
            })
            .await;
            self.done();
        }
        let _ = client.flush().await;
    }

    async fn webhook(self, mut rx: mpsc::Receiver<Arc<Record>>, url: String) {
        let http = self.http_client();
        while let Some(r) = rx.recv().await {
            self.retry(|| post(&http, &url, serde_json::to_value(&*r).unwrap_or_default()))
                .await;
            self.done();
        }
    }

    /// Alertmanager's v2 API: an alert is identified by its labels, so a resolution re-sends the
    /// labels of the alert it ends, with `endsAt`. Firing alerts are re-sent every minute, as
    /// Prometheus does, so that Alertmanager does not time them out.
    async fn alertmanager(
        self,
        mut rx: mpsc::Receiver<Arc<Record>>,
        url: String,
        generator_url: Option<String>,
    ) {
        let http = self.http_client();
        let endpoint = format!("{}/api/v2/alerts", url.trim_end_matches('/'));
        let mut active: HashMap<(String, String, String), serde_json::Value> = HashMap::new();
        let mut resend = tokio::time::interval(Duration::from_secs(60));
        resend.tick().await;
        loop {
            tokio::select! {
                r = rx.recv() => {
                    let Some(r) = r else { break };
                    // Every way out of this arm (sent, dropped, nothing to send) is done.
                    let _done = Done(&self);
                    let body = match &*r {
                        Record::Alert(a) => {
                            let mut alert = json!({
                                "labels": {
                                    "alertname": "FlowcastFailureLikely",
                                    "flow": a.flow, "object": a.object, "state": a.state,
                                    "artifact": a.artifact, "severity": a.severity,
                                },
                                "annotations": {
                                    "summary": format!("{} {}: {} likely ({:.0}%)", a.flow, a.object,
                                        a.artifact_label.as_deref().unwrap_or(&a.artifact), a.probability * 100.0),
                                    "description": format!("In state {} for {} ms; most likely path: {}.",
                                        a.state, a.time_in_state_ms, a.path.join(" -> ")),
                                    "probability": format!("{}", a.probability),
                                },
                                "startsAt": a.at,
                            });
                            if let Some(g) = &generator_url {
                                alert["generatorURL"] = json!(g);
                            }
                            active.insert((a.flow.clone(), a.object.clone(), a.state.clone()), alert.clone());
                            json!([alert])
                        }
                        Record::Resolved(res) => {
                            let Some(mut alert) = active.remove(&(res.flow.clone(), res.object.clone(), res.state.clone())) else {
                                continue;
                            };
                            alert["endsAt"] = json!(res.at);
                            json!([alert])
                        }
                        // One alert per object and episode; `#` cannot start a state name, so
                        // the key never meets a risk alert's.
                        Record::Anomaly(a) => {
                            let mut alert = json!({
                                "labels": {
                                    "alertname": "FlowcastPathUnlikely",
                                    "flow": a.flow, "object": a.object, "severity": "warning",
                                },
                                "annotations": {
                                    "summary": format!("{} {}: unlikely step {} -> {} (p = {:.2e}, rank {})",
                                        a.flow, a.object, a.from, a.state, a.probability, a.rank),
                                    "description": format!("Path: {}. Expected: {}. Threshold {} = {}.",
                                        a.path.join(" -> "),
                                        a.expected.iter().map(|(s, p)| format!("{s} ({p:.3})")).collect::<Vec<_>>().join(", "),
                                        a.threshold, a.threshold_value),
                                    "probability": format!("{}", a.probability),
                                },
                                "startsAt": a.at,
                            });
                            if let Some(g) = &generator_url {
                                alert["generatorURL"] = json!(g);
                            }
                            active.insert((a.flow.clone(), a.object.clone(), "#anomaly".into()), alert.clone());
                            json!([alert])
                        }
                        Record::AnomalyResolved(res) => {
                            let Some(mut alert) = active.remove(&(res.flow.clone(), res.object.clone(), "#anomaly".into())) else {
                                continue;
                            };
                            alert["endsAt"] = json!(res.at);
                            json!([alert])
                        }
                        _ => continue,
                    };
                    self.retry(|| post(&http, &endpoint, body.clone())).await;
                }
                _ = resend.tick() => {
                    if !active.is_empty() {
                        let all: Vec<serde_json::Value> = active.values().cloned().collect();
                        self.retry(|| post(&http, &endpoint, json!(all))).await;
                    }
                }
            }
        }
    }
}

/// Marks the record in hand done when dropped, whichever way the code leaves.
struct Done<'a>(&'a SinkTask);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        self.0.done();
    }
}

async fn post(http: &reqwest::Client, url: &str, body: serde_json::Value) -> Result<(), Failure> {
    let resp = match http.post(url).json(&body).send().await {
        Ok(r) => r,
        // A connection that never opened delivered nothing: that one is worth a retry.
        Err(e) if e.is_timeout() && !e.is_connect() => {
            return Err(Failure::Timeout(format!("{url}: {e}")))
        }
        Err(e) => return Err(Failure::Transient(format!("{url}: {e}"))),
    };
    let status = resp.status();
    let e = format!("{url} answered {status}");
    match status.as_u16() {
        _ if status.is_success() => Ok(()),
        408 | 429 => Err(Failure::Transient(e)),
        400..=499 => Err(Failure::Permanent(e)),
        _ => Err(Failure::Transient(e)),
    }
}
