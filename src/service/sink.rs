//! Sinks: where records go. Each sink is a task with its own bounded queue. The engine never
//! waits for a sink: when a queue is full the record is dropped for that sink and counted. A
//! failing delivery is retried with exponential backoff (100 ms doubling to 30 s) while newer
//! records wait in the queue.

use super::config::Sink;
use super::metrics::Metrics;
use crate::engine::output::Record;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

const QUEUE: usize = 16_384;

pub struct SinkHandle {
    pub name: String,
    tx: mpsc::Sender<Arc<Record>>,
}

pub struct Sinks {
    handles: Vec<SinkHandle>,
    metrics: Arc<Metrics>,
}

impl Sinks {
    pub fn spawn(
        config: &[Sink],
        nats: Option<async_nats::Client>,
        metrics: Arc<Metrics>,
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
            let task = SinkTask {
                name: name.clone(),
                metrics: metrics.clone(),
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
            handles.push(SinkHandle { name, tx });
        }
        Sinks { handles, metrics }
    }

    /// Hands a record to every sink without waiting.
    pub fn send(&self, record: Record) {
        let r = Arc::new(record);
        for h in &self.handles {
            if h.tx.try_send(r.clone()).is_err() {
                Metrics::bump(&self.metrics.sink_dropped, &h.name, 1);
            }
        }
    }

    /// Waits (up to `limit`) until every sink has taken what it was given, for shutdown.
    pub async fn drain(self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        for h in &self.handles {
            while h.tx.capacity() < QUEUE && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        drop(self.handles);
        // Give the tasks a moment to finish the record in hand.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct SinkTask {
    name: String,
    metrics: Arc<Metrics>,
}

impl SinkTask {
    fn sent(&self, n: u64) {
        Metrics::bump(&self.metrics.sink_sent, &self.name, n);
    }

    async fn discard(self, mut rx: mpsc::Receiver<Arc<Record>>) {
        while rx.recv().await.is_some() {
            Metrics::bump(&self.metrics.sink_dropped, &self.name, 1);
        }
    }

    async fn stdout(self, mut rx: mpsc::Receiver<Arc<Record>>) {
        let mut out = tokio::io::BufWriter::new(tokio::io::stdout());
        while let Some(r) = rx.recv().await {
            let mut line = serde_json::to_vec(&*r).unwrap_or_default();
            line.push(b'\n');
            if out.write_all(&line).await.is_err() {
                Metrics::bump(&self.metrics.sink_failures, &self.name, 1);
                continue;
            }
            self.sent(1);
            if rx.is_empty() {
                let _ = out.flush().await;
            }
        }
        let _ = out.flush().await;
    }

    /// Retries `attempt` with exponential backoff until it succeeds; counts each failure.
    async fn retry<F, Fut>(&self, mut attempt: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let mut delay = Duration::from_millis(100);
        loop {
            match attempt().await {
                Ok(()) => {
                    self.sent(1);
                    return;
                }
                Err(e) => {
                    Metrics::bump(&self.metrics.sink_failures, &self.name, 1);
                    tracing::warn!(sink = %self.name, retry_in_ms = delay.as_millis() as u64, "Delivery failed: {e}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
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
            self.retry(|| {
                let (client, subject, body) = (client.clone(), subject.clone(), body.clone());
                async move {
                    client
                        .publish(subject, body)
                        .await
                        .map_err(|e| e.to_string())
                }
            })
            .await;
        }
        let _ = client.flush().await;
    }

    async fn webhook(self, mut rx: mpsc::Receiver<Arc<Record>>, url: String) {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        while let Some(r) = rx.recv().await {
            self.retry(|| post(&http, &url, serde_json::to_value(&*r).unwrap_or_default()))
                .await;
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
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        let endpoint = format!("{}/api/v2/alerts", url.trim_end_matches('/'));
        let mut active: HashMap<(String, String, String), serde_json::Value> = HashMap::new();
        let mut resend = tokio::time::interval(Duration::from_secs(60));
        resend.tick().await;
        loop {
            tokio::select! {
                r = rx.recv() => {
                    let Some(r) = r else { break };
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

async fn post(http: &reqwest::Client, url: &str, body: serde_json::Value) -> Result<(), String> {
    let resp = http
        .post(url)
        .json(&body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("{url} answered {}", resp.status()))
    }
}
