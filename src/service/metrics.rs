//! The service's metrics, rendered in the Prometheus text format. Written by the engine task
//! after each batch and by the sinks; read by `/metrics`. Plain atomics and one mutex for the
//! labelled families: nothing here is on the per-message path except the latency histogram.

use crate::engine::Stats;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// Upper bounds of the processing latency buckets, seconds.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
];

#[derive(Default)]
pub struct Metrics {
    pub stats: Mutex<Stats>,
    pub in_flight: Mutex<BTreeMap<String, u64>>,
    /// Per flow with `learn { features on }`: (transitions kept, states with fitted weights).
    pub feature_models: Mutex<BTreeMap<String, (u64, u64)>>,
    /// Per flow with the self-tuning model, per member: (weight, recent log-loss).
    pub model_members: Mutex<BTreeMap<(String, String), (f64, f64)>>,
    pub reload_success: AtomicI64,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    pub last_reload_unix: AtomicI64,
    /// The diagnostics of the last reload that failed, rendered; `None` once one succeeds.
    pub reload_error: Mutex<Option<String>>,
    pub nats_connected: AtomicI64,
    pub nats_events: Mutex<BTreeMap<String, u64>>,
    pub amqp_connected: AtomicI64,
    pub amqp_events: Mutex<BTreeMap<String, u64>>,
    /// AMQP: messages applied and not yet acknowledged (waiting for the snapshot that covers
    /// them).
    pub amqp_unacked: AtomicI64,
    pub sink_sent: Mutex<BTreeMap<String, u64>>,
    pub sink_failures: Mutex<BTreeMap<String, u64>>,
    /// Records a sink gave up, by (sink, reason).
    pub sink_dropped: Mutex<BTreeMap<(String, String), u64>>,
    pub redeliveries_skipped: AtomicU64,
    /// JetStream: times deliveries were lost on the way and the stream was read again.
    pub jetstream_gaps: AtomicU64,
    /// Cluster: learned batches a partition never folded (gone from the learned stream, past
    /// `learned_max_age_ms`, before it got to them).
    pub learned_missed: AtomicU64,
    /// JetStream: times the stream read was not the one the saved position belonged to.
    pub stream_resets: AtomicU64,
    pub snapshots_ok: AtomicU64,
    pub snapshots_failed: AtomicU64,
    pub last_snapshot_unix: AtomicI64,
    latency: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    latency_sum_ns: AtomicU64,
    latency_count: AtomicU64,
    pub ready: AtomicI64,
    /// A cluster worker's view of the partitions (`service/cluster.rs`), by partition.
    pub cluster: Mutex<Option<ClusterView>>,
}

/// What a cluster worker shows on `/api/cluster` and `/metrics`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ClusterView {
    pub worker: String,
    pub partitions: BTreeMap<u32, PartitionView>,
    /// The live workers (this one too) and the partitions each says it owns, from the
    /// workers bucket at the last heartbeat.
    pub workers: BTreeMap<String, usize>,
    /// Partitions this worker handed over to rebalance.
    pub released: u64,
    /// Learned batches this worker published (its partitions' steps) and folded in (the
    /// other partitions', once per owned partition), and the largest time from a batch's
    /// publish to its fold at the last snapshot that folded any (the model-merge delay, to
    /// which the wait for the publishing partition's snapshot adds up to one interval).
    pub learned_published: u64,
    pub learned_folded: u64,
    pub merge_delay_ms: Option<i64>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PartitionView {
    /// Whether the server has pinned this partition's consumer to this worker.
    pub owned: bool,
    /// Messages of the partition not yet delivered (the server's count, from the last
    /// delivery or pull).
    pub lag: u64,
    /// The last partition-stream sequence applied here, and the last one a saved snapshot
    /// covers.
    pub applied: u64,
    pub saved: u64,
    /// Times this worker was pinned on the partition.
    pub pinned_times: u64,
    /// With shared learned counts: the learned-stream sequence this partition has folded up
    /// to, and the partition-stream sequence it must apply before it folds again (after a
    /// takeover: what the last owner may have applied past its snapshot), 0 when none.
    pub learned_folded: u64,
    pub folds_after: u64,
}

impl Metrics {
    pub fn observe_latency(&self, seconds: f64) {
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.latency[i].fetch_add(1, Relaxed);
        self.latency_sum_ns
            .fetch_add((seconds * 1e9) as u64, Relaxed);
        self.latency_count.fetch_add(1, Relaxed);
    }

    /// Counts `n` records that `sink` gave up, for `reason` (`queue_full`, `rejected`,
    /// `retries_exhausted`, `timeout`, `shutdown`, `no_connection`, `write_error`).
    pub fn dropped(&self, sink: &str, reason: &str, n: u64) {
        let mut m = self.sink_dropped.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((sink.to_string(), reason.to_string())).or_default() += n;
    }

    pub fn bump(map: &Mutex<BTreeMap<String, u64>>, label: &str, by: u64) {
        let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(label.to_string()).or_default() += by;
    }

    /// The Prometheus text exposition (version 0.0.4).
    pub fn render(&self) -> String {
        let mut o = String::with_capacity(4096);
        let s = self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(c) = self
            .cluster
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            render_cluster(&mut o, &c);
        }
        family(
            &mut o,
            "flowcast_messages_total",
            "counter",
            "Messages received, by what became of them.",
        );
        for (result, v) in [
            ("matched", s.matched),
            ("unmatched", s.unmatched),
            ("missing_key", s.missing_key),
            ("malformed", s.malformed),
        ] {
            let _ = writeln!(o, "flowcast_messages_total{{result=\"{result}\"}} {v}");
        }
        for (name, help, v) in [
            (
                "flowcast_messages_late_total",
                "Messages older than one already seen (handled at the current time; dwell still learned from their own times).",
                s.late,
            ),
            (
                "flowcast_messages_future_total",
                "Messages stamped further ahead of this machine's clock than clock.max_future allows: handled at the current time, never moving it.",
                s.future,
            ),
            (
                "flowcast_messages_key_too_long_total",
                "Malformed messages whose key was longer than limits.max_key_bytes.",
                s.key_too_long,
            ),
            (
                "flowcast_messages_after_end_total",
                "Messages about objects that had finished.",
                s.after_end,
            ),
            (
                "flowcast_messages_multi_flow_total",
                "Messages matched by more than one flow.",
                s.multi_flow,
            ),
            (
                "flowcast_transitions_total",
                "State transitions observed.",
                s.transitions,
            ),
            (
                "flowcast_transitions_unexpected_total",
                "Transitions the flow does not list (unlisted report).",
                s.unexpected,
            ),
            ("flowcast_alerts_fired_total", "Alerts fired.", s.alerts),
            (
                "flowcast_anomalies_total",
                "Anomaly records: objects whose path the model found improbable.",
                s.anomalies,
            ),
            (
                "flowcast_surprise_steps_total",
                "Steps scored for surprise.",
                s.scored_steps,
            ),
            (
                "flowcast_alerts_resolved_total",
                "Alerts resolved.",
                s.resolved,
            ),
            (
                "flowcast_outcomes_total",
                "Objects that reached a terminal state or artifact, or expired.",
                s.outcomes,
            ),
            (
                "flowcast_timeouts_total",
                "Objects that reached a timeout artifact.",
                s.timeouts,
            ),
            (
                "flowcast_objects_expired_total",
                "Objects evicted after not being seen for their flow's expire time.",
                s.expired,
            ),
            (
                "flowcast_redeliveries_skipped_total",
                "Messages sent again and skipped because they were already applied (JetStream: by stream sequence; AMQP: by oslo message id).",
                self.redeliveries_skipped.load(Relaxed),
            ),
            (
                "flowcast_learned_batches_missed_total",
                "Cluster: learned batches a partition never folded because they were gone from the learned stream (older than learned_max_age_ms) when it got to them; its model lacks what the others learned then.",
                self.learned_missed.load(Relaxed),
            ),
            (
                "flowcast_jetstream_gaps_total",
                "Times JetStream deliveries were lost on the way (a server or client restart) and the stream was read again from the last message handed over.",
                self.jetstream_gaps.load(Relaxed),
            ),
            (
                "flowcast_stream_resets_total",
                "Times the JetStream stream was not the one the saved position belonged to (deleted and created again) and was read from its start.",
                self.stream_resets.load(Relaxed),
            ),
            (
                "flowcast_snapshots_total",
                "Snapshots written.",
                self.snapshots_ok.load(Relaxed),
            ),
            (
                "flowcast_snapshot_failures_total",
                "Snapshots that could not be written.",
                self.snapshots_failed.load(Relaxed),
            ),
        ] {
            family(&mut o, name, "counter", help);
            let _ = writeln!(o, "{name} {v}");
        }
        series(
            &mut o,
            "flowcast_objects_in_flight",
            "gauge",
            "Objects being tracked, per flow.",
            "flow",
            self.in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(f, v)| (f.as_str(), *v)),
        );
        let features = self
            .feature_models
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if !features.is_empty() {
            series(
                &mut o,
                "flowcast_feature_model_transitions",
                "gauge",
                "Transitions the feature model is fitted on, per flow with `features on`.",
                "flow",
                features.iter().map(|(f, (n, _))| (f.as_str(), *n)),
            );
            series(
                &mut o,
                "flowcast_feature_model_fitted_states",
                "gauge",
                "States whose next step the feature model's fitted weights predict, per flow.",
                "flow",
                features.iter().map(|(f, (_, k))| (f.as_str(), *k)),
            );
        }
        let members = self
            .model_members
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if !members.is_empty() {
            family(
                &mut o,
                "flowcast_model_member_weight",
                "gauge",
                "Flow-wide weight of each member of the self-tuning model (learn { model auto }).",
            );
            for ((flow, member), (w, _)) in &members {
                let _ = writeln!(
                    o,
                    "flowcast_model_member_weight{{flow=\"{}\",member=\"{}\"}} {w}",
                    escape(flow),
                    escape(member)
                );
            }
            family(
                &mut o,
                "flowcast_model_member_log_loss",
                "gauge",
                "Mean log-loss (natural log) of each member over its recent predictions.",
            );
            for ((flow, member), (_, l)) in &members {
                let _ = writeln!(
                    o,
                    "flowcast_model_member_log_loss{{flow=\"{}\",member=\"{}\"}} {l}",
                    escape(flow),
                    escape(member)
                );
            }
        }
        family(
            &mut o,
            "flowcast_reload_success",
            "gauge",
            "1 if the last reload of the flow files succeeded.",
        );
        let _ = writeln!(
            o,
            "flowcast_reload_success {}",
            self.reload_success.load(Relaxed)
        );
        family(
            &mut o,
            "flowcast_reloads_total",
            "counter",
            "Reloads of the flow files, by result.",
        );
        let _ = writeln!(
            o,
            "flowcast_reloads_total{{result=\"success\"}} {}",
            self.reloads_ok.load(Relaxed)
        );
        let _ = writeln!(
            o,
            "flowcast_reloads_total{{result=\"failure\"}} {}",
            self.reloads_failed.load(Relaxed)
        );
        family(
            &mut o,
            "flowcast_last_reload_timestamp_seconds",
            "gauge",
            "When the flow files were last loaded successfully.",
        );
        let _ = writeln!(
            o,
            "flowcast_last_reload_timestamp_seconds {}",
            self.last_reload_unix.load(Relaxed)
        );
        family(
            &mut o,
            "flowcast_last_snapshot_timestamp_seconds",
            "gauge",
            "When the state was last snapshotted.",
        );
        let _ = writeln!(
            o,
            "flowcast_last_snapshot_timestamp_seconds {}",
            self.last_snapshot_unix.load(Relaxed)
        );
        family(
            &mut o,
            "flowcast_nats_connected",
            "gauge",
            "1 while connected to NATS.",
        );
        let _ = writeln!(
            o,
            "flowcast_nats_connected {}",
            self.nats_connected.load(Relaxed)
        );
        labelled(
            &mut o,
            "flowcast_nats_events_total",
            "NATS connection events.",
            "event",
            &self.nats_events,
        );
        family(
            &mut o,
            "flowcast_amqp_connected",
            "gauge",
            "1 while connected to RabbitMQ (an amqp source).",
        );
        let _ = writeln!(
            o,
            "flowcast_amqp_connected {}",
            self.amqp_connected.load(Relaxed)
        );
        labelled(
            &mut o,
            "flowcast_amqp_events_total",
            "RabbitMQ connection events (connected, disconnected, connect_failed, ack_failed).",
            "event",
            &self.amqp_events,
        );
        family(
            &mut o,
            "flowcast_amqp_unacknowledged",
            "gauge",
            "Messages applied and not yet acknowledged to RabbitMQ: acknowledged once the snapshot covering them is written.",
        );
        let _ = writeln!(
            o,
            "flowcast_amqp_unacknowledged {}",
            self.amqp_unacked.load(Relaxed)
        );
        labelled(
            &mut o,
            "flowcast_sink_records_total",
            "Records delivered, per sink.",
            "sink",
            &self.sink_sent,
        );
        labelled(
            &mut o,
            "flowcast_sink_failures_total",
            "Failed delivery attempts, per sink.",
            "sink",
            &self.sink_failures,
        );
        family(
            &mut o,
            "flowcast_sink_dropped_total",
            "counter",
            "Records a sink gave up, per sink and reason.",
        );
        for ((sink, reason), v) in self
            .sink_dropped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                o,
                "flowcast_sink_dropped_total{{sink=\"{}\",reason=\"{}\"}} {v}",
                escape(sink),
                escape(reason)
            );
        }
        family(
            &mut o,
            "flowcast_processing_seconds",
            "histogram",
            "Time from receiving a message to its state update being applied.",
        );
        let mut cum = 0;
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            cum += self.latency[i].load(Relaxed);
            let _ = writeln!(o, "flowcast_processing_seconds_bucket{{le=\"{b}\"}} {cum}");
        }
        cum += self.latency[LATENCY_BUCKETS.len()].load(Relaxed);
        let _ = writeln!(o, "flowcast_processing_seconds_bucket{{le=\"+Inf\"}} {cum}");
        let _ = writeln!(
            o,
            "flowcast_processing_seconds_sum {}",
            self.latency_sum_ns.load(Relaxed) as f64 / 1e9
        );
        let _ = writeln!(
            o,
            "flowcast_processing_seconds_count {}",
            self.latency_count.load(Relaxed)
        );
        o
    }
}

fn render_cluster(o: &mut String, c: &ClusterView) {
    family(
        o,
        "flowcast_cluster_workers",
        "gauge",
        "Live workers of the cluster, this one included, as the workers bucket says.",
    );
    let _ = writeln!(o, "flowcast_cluster_workers {}", c.workers.len());
    family(
        o,
        "flowcast_cluster_worker_partitions",
        "gauge",
        "Partitions each live worker says it owns (at its last heartbeat).",
    );
    for (w, n) in &c.workers {
        let _ = writeln!(
            o,
            "flowcast_cluster_worker_partitions{{worker=\"{}\"}} {n}",
            escape(w)
        );
    }
    family(
        o,
        "flowcast_partitions_released_total",
        "counter",
        "Partitions this worker handed over to another to rebalance.",
    );
    let _ = writeln!(o, "flowcast_partitions_released_total {}", c.released);
    family(
        o,
        "flowcast_learned_batches_published_total",
        "counter",
        "Batches of learned steps this worker's partitions shared with the others.",
    );
    let _ = writeln!(
        o,
        "flowcast_learned_batches_published_total {}",
        c.learned_published
    );
    family(
        o,
        "flowcast_learned_batches_folded_total",
        "counter",
        "Other partitions' learned batches folded into this worker's partitions (once each).",
    );
    let _ = writeln!(
        o,
        "flowcast_learned_batches_folded_total {}",
        c.learned_folded
    );
    if let Some(ms) = c.merge_delay_ms {
        family(
            o,
            "flowcast_model_merge_delay_seconds",
            "gauge",
            "At the last fold: the longest time from a learned batch's publish to its fold here.",
        );
        let _ = writeln!(
            o,
            "flowcast_model_merge_delay_seconds {:.3}",
            ms as f64 / 1000.0
        );
    }
    family(
        o,
        "flowcast_partition_owned",
        "gauge",
        "1 for a partition whose consumer the server has pinned to this worker.",
    );
    for (p, v) in &c.partitions {
        let _ = writeln!(
            o,
            "flowcast_partition_owned{{partition=\"{p}\"}} {}",
            u8::from(v.owned)
        );
    }
    family(
        o,
        "flowcast_partition_lag",
        "gauge",
        "Messages of an owned partition not yet delivered to this worker.",
    );
    for (p, v) in c.partitions.iter().filter(|(_, v)| v.owned) {
        let _ = writeln!(o, "flowcast_partition_lag{{partition=\"{p}\"}} {}", v.lag);
    }
    family(
        o,
        "flowcast_partition_applied_sequence",
        "gauge",
        "The last partition-stream sequence applied, per owned partition.",
    );
    for (p, v) in c.partitions.iter().filter(|(_, v)| v.owned) {
        let _ = writeln!(
            o,
            "flowcast_partition_applied_sequence{{partition=\"{p}\"}} {}",
            v.applied
        );
    }
}

fn family(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}");
    let _ = writeln!(o, "# TYPE {name} {kind}");
}

/// One metric family with one series per label value.
fn series<'a>(
    o: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    label: &str,
    rows: impl IntoIterator<Item = (&'a str, u64)>,
) {
    family(o, name, kind, help);
    for (k, v) in rows {
        let _ = writeln!(o, "{name}{{{label}=\"{}\"}} {v}", escape(k));
    }
}

fn labelled(
    o: &mut String,
    name: &str,
    help: &str,
    label: &str,
    map: &Mutex<BTreeMap<String, u64>>,
) {
    let map = map.lock().unwrap_or_else(|e| e.into_inner());
    series(
        o,
        name,
        "counter",
        help,
        label,
        map.iter().map(|(k, v)| (k.as_str(), *v)),
    );
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
