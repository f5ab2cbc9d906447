//! `flowcast.yaml`: the service's configuration. Every setting has a default, so `flowcast run
//! --models models` needs no file at all; unknown keys are errors that name their position.
//! Durations are written as in `.flow` files (`30s`, `5m`).

use serde::de::{self, value::MapAccessDeserializer, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory (or file) of `.flow` definitions, watched for changes.
    pub models: PathBuf,
    /// Where snapshots live; none: nothing survives a restart.
    pub state_dir: Option<PathBuf>,
    /// How often the state is snapshotted (also on shutdown).
    #[serde(deserialize_with = "duration")]
    pub snapshot_interval_ms: i64,
    pub source: Source,
    pub nats: Nats,
    pub sinks: Vec<Sink>,
    /// How each sink delivers: the per-request timeout and the retries per record.
    pub delivery: Delivery,
    pub http: Http,
    pub clock: Clock,
    /// Batches of at most this many messages go to the engine at once.
    pub batch_size: usize,
    /// Watch the models directory and reload on change (SIGHUP always reloads).
    pub watch: bool,
    /// How long a flow missing from the files after a reload keeps its learned counts and
    /// objects (engine time), in case it comes back.
    #[serde(deserialize_with = "duration")]
    pub reload_grace_ms: i64,
    pub limits: Limits,
    /// `live` (default): every flow learns from what it sees. `frozen`: nothing is learned;
    /// predictions and surprise use the counts restored from `state_dir` (a baseline learned
    /// from healthy operation with `flowcast replay --state-dir`), so failures never teach the
    /// model that failures are normal.
    pub learning: Learning,
    /// A worker of a cluster (`service/cluster.rs`): the source is the partition stream, read
    /// through one pinned consumer per partition; `source` is not used.
    pub cluster: Option<Cluster>,
}

/// `cluster:` in `flowcast run`'s configuration: the partitions this worker may own.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cluster {
    /// P, fixed per deployment: the routers' `--partitions`.
    pub partitions: u32,
    /// The partition stream and its subject prefix (`<prefix>.<p>`), as the routers write them.
    pub stream: String,
    pub prefix: String,
    /// Consumer `<consumer_prefix>-<p>` per partition, priority group `group`.
    pub consumer_prefix: String,
    pub group: String,
    /// A worker that has not pulled for this long loses its partitions to another.
    #[serde(deserialize_with = "duration")]
    pub pin_ttl_ms: i64,
    /// A delivery not acknowledged within this is sent again (acknowledged once a snapshot
    /// covering it is written, so it must exceed `snapshot_interval_ms` by far).
    #[serde(deserialize_with = "duration")]
    pub ack_wait_ms: i64,
    /// The KV bucket of the partitions' snapshots (key `part-<p>`).
    pub state_bucket: String,
    /// Where a snapshot too big for one message (over the server's `max_payload`) goes: an
    /// object store; the KV entry then names the object.
    pub state_objects: String,
    /// The records (outcomes, alerts) go, deduplicated, to `<records_prefix>.<p>` on this stream.
    pub records_stream: String,
    pub records_prefix: String,
    /// How long the records stream remembers a record's id (a failover must come within it).
    #[serde(deserialize_with = "duration")]
    pub records_dedup_ms: i64,
    /// Replicas of the streams and the bucket created here.
    pub replicas: usize,
    /// This worker's name, in logs, snapshots and `/api/cluster` (default: `worker-<pid>`).
    pub worker: String,
    /// Messages asked for per pull.
    pub pull_batch: usize,
    /// Deliveries per partition not yet acknowledged (not yet covered by a snapshot) before
    /// the server holds back: what a worker buffers, and, over `snapshot_interval_ms`, the
    /// most a partition can take per second.
    pub max_ack_pending: u64,
    /// The KV bucket where each live worker says how many partitions it owns (an entry per
    /// worker, expiring after `worker_ttl_ms` without a refresh).
    pub workers_bucket: String,
    #[serde(deserialize_with = "duration")]
    pub worker_ttl_ms: i64,
    /// A worker owning two or more partitions more than another live worker hands one over
    /// (final snapshot, unpin), one at a time, until the counts differ by one at most.
    pub rebalance: bool,
    /// Partitions share what they learn: each partition's learned steps go to
    /// `<learned_prefix>.<p>` on `learned_stream` at its snapshots, and every partition folds
    /// the others' in at its own, so every partition predicts from the counts of the whole
    /// stream (within about two snapshot intervals).
    pub share_learned: bool,
    pub learned_stream: String,
    pub learned_prefix: String,
    /// How long the learned stream keeps a batch: a partition whose snapshot is older than this
    /// when it is restored misses what the others learned in between.
    #[serde(deserialize_with = "duration")]
    pub learned_max_age_ms: i64,
}

impl Default for Cluster {
    fn default() -> Cluster {
        Cluster {
            partitions: 64,
            stream: "FLOWCAST_PARTS".into(),
            prefix: "flowcast.part".into(),
            consumer_prefix: "part".into(),
            group: "owner".into(),
            pin_ttl_ms: 10_000,
            ack_wait_ms: 120_000,
            state_bucket: "FLOWCAST_STATE".into(),
            records_stream: "FLOWCAST_RECORDS".into(),
            records_prefix: "flowcast.records".into(),
            records_dedup_ms: 600_000,
            replicas: 1,
            worker: format!("worker-{}", std::process::id()),
            pull_batch: 500,
            max_ack_pending: 200_000,
            workers_bucket: "FLOWCAST_WORKERS".into(),
            worker_ttl_ms: 10_000,
            rebalance: true,
            share_learned: true,
            learned_stream: "FLOWCAST_LEARNED".into(),
            state_objects: "FLOWCAST_SNAPSHOTS".into(),
            learned_prefix: "flowcast.learned".into(),
            learned_max_age_ms: 24 * 3_600_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Learning {
    #[default]
    Live,
    Frozen,
}

/// Memory limits, in bytes (`engine::Limits`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// A message whose key is longer is malformed (`key_too_long`).
    pub max_key_bytes: usize,
    /// Remembering finished objects (to recognise late messages), all flows together.
    pub finished_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        let d = crate::engine::Limits::default();
        Limits {
            max_key_bytes: d.max_key_bytes,
            finished_bytes: d.finished_bytes,
        }
    }
}

impl Limits {
    pub fn engine(&self) -> crate::engine::Limits {
        crate::engine::Limits {
            max_key_bytes: self.max_key_bytes,
            finished_bytes: self.finished_bytes,
        }
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            models: PathBuf::from("models"),
            state_dir: None,
            snapshot_interval_ms: 30_000,
            source: Source::default(),
            nats: Nats::default(),
            sinks: vec![Sink::Stdout {}],
            delivery: Delivery::default(),
            http: Http::default(),
            clock: Clock::default(),
            batch_size: 1024,
            watch: true,
            limits: Limits::default(),
            reload_grace_ms: crate::engine::snapshot::RETIRE_GRACE_MS,
            learning: Learning::Live,
            cluster: None,
        }
    }
}

/// Where messages come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A JSONL file, or stdin with `-`: needs no server. The service stops at its end.
    File { path: PathBuf },
    /// A core NATS subscription (at most once).
    Nats {
        subjects: Vec<String>,
        queue_group: Option<String>,
    },
    /// A durable JetStream pull consumer: nothing lost, nothing counted twice.
    Jetstream {
        stream: String,
        subjects: Vec<String>,
        consumer: String,
        /// Create the stream and the consumer if they do not exist.
        create: bool,
        /// How long an unacknowledged message waits before redelivery.
        ack_wait_ms: i64,
    },
    /// oslo.messaging notifications from RabbitMQ (AMQP 0-9-1): flowcast's own durable queue,
    /// bound to the services' exchanges, acknowledged once the state that applied a message is
    /// saved.
    Amqp(Box<Amqp>),
}

/// The `amqp` source's settings (see `docs/openstack.md`).
#[derive(Debug, Clone, PartialEq)]
pub struct Amqp {
    /// `amqp://user:password@host:5672/vhost` or `amqps://...` (the vhost URL-encoded: `%2F`
    /// for `/`).
    pub url: String,
    /// Override the URL's user and password (the password may come from a file).
    pub user: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    /// CA certificate (PEM) for `amqps://`.
    pub tls_ca: Option<PathBuf>,
    /// The services' `control_exchange`s to bind to.
    pub exchanges: Vec<String>,
    /// oslo's routing keys: `<topic>.<priority>`, topic-exchange patterns.
    pub routing_keys: Vec<String>,
    /// flowcast's own queue: it receives copies, never another consumer's messages.
    pub queue: String,
    pub queue_type: QueueType,
    /// Unacknowledged messages the broker may have out to flowcast at once.
    pub prefetch: u16,
    /// `x-message-ttl`: a message waiting longer in the queue is dropped by the broker.
    pub message_ttl_ms: Option<i64>,
    /// `x-max-length` / `x-max-length-bytes`: the queue's bound while flowcast is down.
    pub max_length: Option<u64>,
    pub max_length_bytes: Option<u64>,
    /// Messages that can never be applied are rejected to this exchange (`x-dead-letter-
    /// exchange`) instead of being acknowledged and counted only.
    pub dead_letter_exchange: Option<String>,
    /// Declare missing service exchanges as durable (oslo's `amqp_durable_queues`).
    pub durable_exchanges: bool,
    /// How many message ids are remembered (and saved in the snapshot) to skip redeliveries.
    pub dedup_window: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueType {
    Classic,
    Quorum,
}

impl Amqp {
    fn validate(&self) -> Result<(), String> {
        let tls = self.url.starts_with("amqps://");
        if !tls && !self.url.starts_with("amqp://") {
            return Err(format!(
                "an `amqp` source's `url` starts with `amqp://` or `amqps://`, not `{}`",
                self.url.split("://").next().unwrap_or_default()
            ));
        }
        if self.tls_ca.is_some() && !tls {
            return Err("`tls_ca` needs an `amqps://` url".into());
        }
        if self.password.is_some() && self.password_file.is_some() {
            return Err("`password` and `password_file`: give one or the other".into());
        }
        if self.exchanges.is_empty() || self.exchanges.iter().any(|e| e.is_empty()) {
            return Err("`exchanges` lists the services' exchanges (`nova`, `cinder`...); it is empty or has an empty name".into());
        }
        if self.routing_keys.is_empty() {
            return Err("`routing_keys` is empty: nothing would be received".into());
        }
        if self.queue.is_empty() || self.queue.starts_with("amq.") {
            return Err(format!(
                "`queue` `{}`: a name is needed, and `amq.` is the broker's own prefix",
                self.queue
            ));
        }
        if self.prefetch == 0 {
            return Err("`prefetch` is at least 1 (0 would mean unlimited)".into());
        }
        if self.dedup_window < self.prefetch as usize {
            return Err(format!(
                "`dedup_window` ({}) is at least `prefetch` ({}): every message the broker may redeliver must be remembered",
                self.dedup_window, self.prefetch
            ));
        }
        if self.message_ttl_ms.is_some_and(|t| t <= 0) {
            return Err("`message_ttl_ms` is a positive duration".into());
        }
        Ok(())
    }

    /// The password, from `password` or `password_file` (an unreadable or empty file is an
    /// error).
    pub fn password(&self) -> anyhow::Result<Option<String>> {
        let Some(path) = &self.password_file else {
            return Ok(self.password.clone());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("source.password_file {}: {e}", path.display()))?;
        match text.trim_end_matches(['\r', '\n']) {
            "" => anyhow::bail!("source.password_file {} is empty", path.display()),
            p => Ok(Some(p.to_string())),
        }
    }
}

/// Every setting of any source, read as it comes so that an error points at its own line
/// (serde's internally tagged enums buffer the mapping and lose the position), then checked
/// against the `kind`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceFields {
    kind: SourceKind,
    path: Option<PathBuf>,
    subjects: Option<Vec<String>>,
    queue_group: Option<String>,
    stream: Option<String>,
    consumer: Option<String>,
    create: Option<bool>,
    #[serde(default, deserialize_with = "some_duration")]
    ack_wait_ms: Option<i64>,
    url: Option<String>,
    user: Option<String>,
    password: Option<String>,
    password_file: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    exchanges: Option<Vec<String>>,
    routing_keys: Option<Vec<String>>,
    queue: Option<String>,
    queue_type: Option<QueueType>,
    prefetch: Option<u16>,
    #[serde(default, deserialize_with = "some_duration")]
    message_ttl_ms: Option<i64>,
    max_length: Option<u64>,
    max_length_bytes: Option<u64>,
    dead_letter_exchange: Option<String>,
    durable_exchanges: Option<bool>,
    dedup_window: Option<usize>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum SourceKind {
    File,
    Nats,
    Jetstream,
    Amqp,
}

impl SourceFields {
    fn into_source(self) -> Result<Source, String> {
        let set = [
            ("path", self.path.is_some()),
            ("subjects", self.subjects.is_some()),
            ("queue_group", self.queue_group.is_some()),
            ("stream", self.stream.is_some()),
            ("consumer", self.consumer.is_some()),
            ("create", self.create.is_some()),
            ("ack_wait_ms", self.ack_wait_ms.is_some()),
            ("url", self.url.is_some()),
            ("user", self.user.is_some()),
            ("password", self.password.is_some()),
            ("password_file", self.password_file.is_some()),
            ("tls_ca", self.tls_ca.is_some()),
            ("exchanges", self.exchanges.is_some()),
            ("routing_keys", self.routing_keys.is_some()),
            ("queue", self.queue.is_some()),
            ("queue_type", self.queue_type.is_some()),
            ("prefetch", self.prefetch.is_some()),
            ("message_ttl_ms", self.message_ttl_ms.is_some()),
            ("max_length", self.max_length.is_some()),
            ("max_length_bytes", self.max_length_bytes.is_some()),
            ("dead_letter_exchange", self.dead_letter_exchange.is_some()),
            ("durable_exchanges", self.durable_exchanges.is_some()),
            ("dedup_window", self.dedup_window.is_some()),
        ];
        let subjects = self.subjects.unwrap_or_else(default_subjects);
        Ok(match self.kind {
            SourceKind::File => {
                only_settings("a `file` source", &set, &["path"])?;
                Source::File {
                    path: self
                        .path
                        .ok_or("a `file` source needs a `path` (`-`: stdin)")?,
                }
            }
            SourceKind::Nats => {
                only_settings("a `nats` source", &set, &["subjects", "queue_group"])?;
                Source::Nats {
                    subjects,
                    queue_group: self.queue_group,
                }
            }
            SourceKind::Jetstream => {
                only_settings(
                    "a `jetstream` source",
                    &set,
                    &["stream", "subjects", "consumer", "create", "ack_wait_ms"],
                )?;
                Source::Jetstream {
                    stream: self.stream.ok_or("a `jetstream` source needs a `stream`")?,
                    subjects,
                    consumer: self.consumer.unwrap_or_else(default_consumer),
                    create: self.create.unwrap_or(true),
                    ack_wait_ms: self.ack_wait_ms.unwrap_or_else(default_ack_wait),
                }
            }
            SourceKind::Amqp => {
                only_settings(
                    "an `amqp` source",
                    &set,
                    &[
                        "url",
                        "user",
                        "password",
                        "password_file",
                        "tls_ca",
                        "exchanges",
                        "routing_keys",
                        "queue",
                        "queue_type",
                        "prefetch",
                        "message_ttl_ms",
                        "max_length",
                        "max_length_bytes",
                        "dead_letter_exchange",
                        "durable_exchanges",
                        "dedup_window",
                    ],
                )?;
                let a = Amqp {
                    url: self
                        .url
                        .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2F".into()),
                    user: self.user,
                    password: self.password,
                    password_file: self.password_file,
                    tls_ca: self.tls_ca,
                    exchanges: self.exchanges.unwrap_or_else(|| {
                        [
                            "nova",
                            "cinder",
                            "neutron",
                            "glance",
                            "keystone",
                            "openstack",
                        ]
                        .map(String::from)
                        .to_vec()
                    }),
                    routing_keys: self.routing_keys.unwrap_or_else(|| {
                        ["notifications.*", "versioned_notifications.*"]
                            .map(String::from)
                            .to_vec()
                    }),
                    queue: self.queue.unwrap_or_else(default_consumer),
                    queue_type: self.queue_type.unwrap_or(QueueType::Classic),
                    prefetch: self.prefetch.unwrap_or(20_000),
                    message_ttl_ms: self.message_ttl_ms,
                    max_length: self.max_length,
                    max_length_bytes: self.max_length_bytes,
                    dead_letter_exchange: self.dead_letter_exchange,
                    durable_exchanges: self.durable_exchanges.unwrap_or(false),
                    dedup_window: self.dedup_window.unwrap_or(100_000),
                };
                a.validate()?;
                Source::Amqp(Box::new(a))
            }
        })
    }
}

impl<'de> Deserialize<'de> for Source {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Source, D::Error> {
        located(
            d,
            "a source (a mapping with a `kind`)",
            SourceFields::into_source,
        )
    }
}

/// An error for the settings that are `set` but not among those `what` has.
fn only_settings(what: &str, set: &[(&str, bool)], allowed: &[&str]) -> Result<(), String> {
    match set.iter().find(|(k, on)| *on && !allowed.contains(k)) {
        None => Ok(()),
        Some((k, _)) => Err(format!(
            "`{k}` is not a setting of {what} (it has: {})",
            allowed
                .iter()
                .map(|a| format!("`{a}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Deserializes a mapping into `F` as it streams, then converts it: an error inside the mapping
/// keeps its own position (the deserializer marks it where it arises), and an error of the
/// conversion is raised while the mapping is being read, so it points at the mapping.
fn located<'de, D, F, T>(
    d: D,
    what: &'static str,
    convert: fn(F) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    F: Deserialize<'de>,
{
    struct V<F, T> {
        what: &'static str,
        convert: fn(F) -> Result<T, String>,
    }
    impl<'de, F: Deserialize<'de>, T> Visitor<'de> for V<F, T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(self.what)
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            let fields = F::deserialize(MapAccessDeserializer::new(map))?;
            (self.convert)(fields).map_err(de::Error::custom)
        }
    }
    d.deserialize_map(V { what, convert })
}

impl Default for Source {
    fn default() -> Source {
        Source::File {
            path: PathBuf::from("-"),
        }
    }
}

fn default_subjects() -> Vec<String> {
    vec!["notifications.>".into()]
}
fn default_consumer() -> String {
    "flowcast".into()
}
fn default_ack_wait() -> i64 {
    30_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Nats {
    /// `nats://host:4222`, or several servers of one cluster comma-separated (the client also
    /// learns the others from the server it reaches).
    pub url: String,
    pub token: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    /// An nkey seed (`SU...`).
    pub nkey: Option<String>,
    /// A `.creds` file (JWT + nkey).
    pub creds: Option<PathBuf>,
    /// CA certificate for TLS; setting it requires TLS.
    pub tls_ca: Option<PathBuf>,
    pub name: String,
}

impl Default for Nats {
    fn default() -> Nats {
        Nats {
            url: "nats://127.0.0.1:4222".into(),
            token: None,
            user: None,
            password: None,
            nkey: None,
            creds: None,
            tls_ca: None,
            name: "flowcast".into(),
        }
    }
}

/// Where records go. Each sink has its own queue: a slow or failing sink retries with backoff
/// and drops (and counts) what overflows its queue, but never slows the intake.
#[derive(Debug, Clone, PartialEq)]
pub enum Sink {
    /// JSON lines on stdout. (A struct variant, so that unknown keys are refused.)
    Stdout {},
    /// Published to `<prefix>.<flow>` on the NATS connection.
    Nats { prefix: String },
    /// Each record POSTed as JSON.
    Webhook { url: String },
    /// Alerts and resolutions as Alertmanager v2 alerts (`POST /api/v2/alerts`).
    Alertmanager {
        url: String,
        generator_url: Option<String>,
    },
}

/// Every setting of any sink, as for `SourceFields`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SinkFields {
    kind: SinkKind,
    prefix: Option<String>,
    url: Option<String>,
    generator_url: Option<String>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum SinkKind {
    Stdout,
    Nats,
    Webhook,
    Alertmanager,
}

impl SinkFields {
    fn into_sink(self) -> Result<Sink, String> {
        let set = [
            ("prefix", self.prefix.is_some()),
            ("url", self.url.is_some()),
            ("generator_url", self.generator_url.is_some()),
        ];
        Ok(match self.kind {
            SinkKind::Stdout => {
                only_settings("a `stdout` sink", &set, &[])?;
                Sink::Stdout {}
            }
            SinkKind::Nats => {
                only_settings("a `nats` sink", &set, &["prefix"])?;
                Sink::Nats {
                    prefix: self.prefix.unwrap_or_else(default_prefix),
                }
            }
            SinkKind::Webhook => {
                only_settings("a `webhook` sink", &set, &["url"])?;
                Sink::Webhook {
                    url: self.url.ok_or("a `webhook` sink needs a `url`")?,
                }
            }
            SinkKind::Alertmanager => {
                only_settings("an `alertmanager` sink", &set, &["url", "generator_url"])?;
                Sink::Alertmanager {
                    url: self.url.ok_or("an `alertmanager` sink needs a `url`")?,
                    generator_url: self.generator_url,
                }
            }
        })
    }
}

impl<'de> Deserialize<'de> for Sink {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Sink, D::Error> {
        located(d, "a sink (a mapping with a `kind`)", SinkFields::into_sink)
    }
}

fn default_prefix() -> String {
    "flowcast.alerts".into()
}

/// Delivery rules shared by the sinks. A record that fails with a transient error (no
/// connection, HTTP 5xx, 408, 429) is retried with backoff at most `max_retries` times; a
/// permanent error (HTTP 4xx, a record over NATS `max_payload`) drops it at once; a request
/// that times out is not retried (the receiver may have it). Every drop is counted by reason.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Delivery {
    /// How long one HTTP request (or one NATS publish) may take.
    #[serde(deserialize_with = "duration")]
    pub timeout_ms: i64,
    /// Retries of one record after its first attempt, for transient errors.
    pub max_retries: u32,
}

impl Default for Delivery {
    fn default() -> Delivery {
        Delivery {
            timeout_ms: 10_000,
            max_retries: 10,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    /// `host:port`; loopback by default. Empty disables the server.
    pub listen: String,
    /// A bearer token required by the POST endpoints (`/-/reload`, `/-/snapshot`).
    pub token: Option<String>,
    /// The same, read from a file (first line), so that it need not be in the configuration.
    pub token_file: Option<PathBuf>,
    /// A connection that has not sent a whole request head within this time is closed (also
    /// an idle keep-alive connection).
    #[serde(deserialize_with = "duration")]
    pub header_timeout_ms: i64,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for Http {
    fn default() -> Http {
        Http {
            listen: "127.0.0.1:9464".into(),
            token: None,
            token_file: None,
            header_timeout_ms: 10_000,
            max_connections: 256,
        }
    }
}

impl Http {
    /// The POST token, from `token` or `token_file`; an unreadable or empty file is an error.
    pub fn bearer_token(&self) -> anyhow::Result<Option<String>> {
        if let Some(t) = &self.token {
            return Ok(Some(t.clone()));
        }
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("http.token_file {}: {e}", path.display()))?;
        match text.lines().next().map(str::trim) {
            Some(t) if !t.is_empty() => Ok(Some(t.to_string())),
            _ => anyhow::bail!("http.token_file {} is empty", path.display()),
        }
    }
}

/// Which clock drives timers (timeouts, risk that grows with time in a state).
#[derive(Debug, Clone)]
pub enum Clock {
    /// The machine's clock, held back by `lateness` so that messages stamped a little in the
    /// past are not late (a watermark). Messages without a timestamp take the arrival time.
    Wall {
        lateness_ms: i64,
        max_future_ms: i64,
    },
    /// Message timestamps only, as in replay: the same input gives the same records. When no
    /// message has come for `idle_after`, time moves on with the wall clock so that timeouts
    /// still fire in a quiet cloud (`0` never).
    Event {
        idle_after_ms: i64,
        max_future_ms: i64,
    },
}

/// Every setting of any clock, as for `SourceFields`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClockFields {
    mode: ClockMode,
    #[serde(default, deserialize_with = "some_duration")]
    lateness_ms: Option<i64>,
    #[serde(default, deserialize_with = "some_duration_or_zero")]
    idle_after_ms: Option<i64>,
    #[serde(default, deserialize_with = "some_duration")]
    max_future_ms: Option<i64>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum ClockMode {
    Wall,
    Event,
}

impl ClockFields {
    fn into_clock(self) -> Result<Clock, String> {
        let set = [
            ("lateness_ms", self.lateness_ms.is_some()),
            ("idle_after_ms", self.idle_after_ms.is_some()),
        ];
        let max_future_ms = self.max_future_ms.unwrap_or_else(default_max_future);
        Ok(match self.mode {
            ClockMode::Wall => {
                only_settings("the `wall` clock", &set, &["lateness_ms"])?;
                Clock::Wall {
                    lateness_ms: self.lateness_ms.unwrap_or_else(default_lateness),
                    max_future_ms,
                }
            }
            ClockMode::Event => {
                only_settings("the `event` clock", &set, &["idle_after_ms"])?;
                Clock::Event {
                    idle_after_ms: self.idle_after_ms.unwrap_or_else(default_idle),
                    max_future_ms,
                }
            }
        })
    }
}

impl<'de> Deserialize<'de> for Clock {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Clock, D::Error> {
        located(
            d,
            "a clock (a mapping with a `mode`)",
            ClockFields::into_clock,
        )
    }
}

impl Clock {
    /// How far ahead of this machine's clock a message's own time may be (both modes): a
    /// message stamped later is counted as `future` and handled at the current time.
    pub fn max_future_ms(&self) -> i64 {
        match self {
            Clock::Wall { max_future_ms, .. } | Clock::Event { max_future_ms, .. } => {
                *max_future_ms
            }
        }
    }
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::Wall {
            lateness_ms: default_lateness(),
            max_future_ms: default_max_future(),
        }
    }
}

fn default_lateness() -> i64 {
    2_000
}
fn default_max_future() -> i64 {
    5 * 60_000
}
fn default_idle() -> i64 {
    10_000
}

/// A duration as in `.flow` files (`500ms`, `30s`, `5m`), read by a visitor so that an error
/// is raised inside the deserializer and carries the value's line and column. A bare number
/// has no unit and is refused, saying what a duration looks like; `0` is allowed where zero
/// means "never" (`zero_ok`), quoted or not.
struct DurationVisitor {
    zero_ok: bool,
}

impl DurationVisitor {
    fn parse<E: de::Error>(&self, text: &str) -> Result<i64, E> {
        let text = text.trim();
        if self.zero_ok && text == "0" {
            return Ok(0);
        }
        let example = if self.zero_ok {
            "like `10s`, `500ms`, `5m`, or `0`"
        } else {
            "like `500ms`, `30s`, `5m`"
        };
        let number = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit() || b == b'.');
        if number && text.bytes().all(|b| b == b'0' || b == b'.') {
            return Err(E::custom(format!(
                "`{text}` is not a positive duration ({example})"
            )));
        }
        if number {
            return Err(E::custom(format!(
                "`{text}` has no unit: write a duration with its unit, {example} \
                 (`{text}ms` for milliseconds)"
            )));
        }
        match crate::syntax::parse_duration_ms(text) {
            Some(ms) if ms > 0 || (ms == 0 && self.zero_ok) => Ok(ms),
            _ if self.zero_ok => Err(E::custom(format!("`{text}` is not a duration ({example})"))),
            _ => Err(E::custom(format!(
                "`{text}` is not a positive duration ({example})"
            ))),
        }
    }
}

impl<'de> Visitor<'de> for DurationVisitor {
    type Value = i64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a duration with its unit, like `30s`")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<i64, E> {
        self.parse(v)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
        self.parse(&v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
        self.parse(&v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<i64, E> {
        self.parse(&v.to_string())
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    d.deserialize_str(DurationVisitor { zero_ok: false })
}

fn some_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    duration(d).map(Some)
}

fn some_duration_or_zero<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    d.deserialize_str(DurationVisitor { zero_ok: true })
        .map(Some)
}

impl Config {
    /// Reads a YAML file. Errors name the file, line and column.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Config::parse(&text).map_err(|e| anyhow::anyhow!("{}:{e}", path.display()))
    }

    /// Parses YAML text; the error starts with `line:column: ` when the position is known.
    pub fn parse(text: &str) -> Result<Config, String> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        let mut c: Config = serde_norway::from_str(text).map_err(|e| match e.location() {
            // The position leads, as in a compiler's message; serde_norway's own suffix goes.
            Some(l) => {
                let (line, column) = (l.line(), l.column());
                let message = e.to_string();
                let suffix = format!(" at line {line} column {column}");
                let message = message.strip_suffix(&suffix).unwrap_or(&message);
                format!("{line}:{column}: {message}")
            }
            None => format!(" {e}"),
        })?;
        c.normalise();
        c.validate()?;
        Ok(c)
    }

    fn normalise(&mut self) {
        if self.batch_size == 0 {
            self.batch_size = 1;
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        let needs_nats = matches!(self.source, Source::Nats { .. } | Source::Jetstream { .. })
            || self.sinks.iter().any(|s| matches!(s, Sink::Nats { .. }));
        if needs_nats && self.nats.url.is_empty() {
            return Err(" nats.url is empty but a NATS source or sink is configured".into());
        }
        if self.http.token.is_some() && self.http.token_file.is_some() {
            return Err(" http.token and http.token_file: give one or the other".into());
        }
        if self.http.token.as_deref() == Some("") {
            return Err(" http.token is empty".into());
        }
        if self.nats.user.is_some() != self.nats.password.is_some() {
            return Err(" nats.user and nats.password go together".into());
        }
        let source_subjects = match &self.source {
            Source::Nats { subjects, .. } | Source::Jetstream { subjects, .. } => &subjects[..],
            Source::File { .. } | Source::Amqp(_) => &[],
        };
        for s in &self.sinks {
            if let Sink::Nats { prefix } = s {
                if let Some(p) = source_subjects.iter().find(|p| reads_sink(p, prefix)) {
                    return Err(format!(
                        " the nats sink publishes to `{prefix}.<flow>`, which the source subject `{p}` reads: flowcast reads its own records. Choose a prefix outside the source's subjects"
                    ));
                }
            }
            if let Sink::Webhook { url } | Sink::Alertmanager { url, .. } = s {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(format!(
                        " sink url `{url}` must start with http:// or https://"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Whether the NATS subject pattern `pattern` (`*` one token, `>` the rest) matches a subject
/// `<prefix>.<flow>` for some flow name: the last token can be anything.
fn reads_sink(pattern: &str, prefix: &str) -> bool {
    let subject: Vec<Option<&str>> = prefix
        .split('.')
        .map(Some)
        .chain(std::iter::once(None))
        .collect();
    let mut pattern = pattern.split('.');
    for token in &subject {
        match (pattern.next(), token) {
            (Some(">"), _) => return true,
            (Some("*"), _) | (Some(_), None) => {}
            (Some(p), Some(t)) if p == *t => {}
            _ => return false,
        }
    }
    pattern.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_has_a_default() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.models, PathBuf::from("models"));
        assert_eq!(c.sinks, vec![Sink::Stdout {}]);
        assert!(matches!(c.source, Source::File { .. }));
    }

    #[test]
    fn limits_are_in_bytes_and_default_to_the_engine_s() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.limits.engine(), crate::engine::Limits::default());
        let c =
            Config::parse("limits: { max_key_bytes: 4096, finished_bytes: 1000000 }\n").unwrap();
        assert_eq!(c.limits.max_key_bytes, 4096);
        assert_eq!(c.limits.finished_bytes, 1_000_000);
        assert!(Config::parse("limits: { max_keys: 1 }\n").is_err());
    }

    #[test]
    fn an_amqp_source_has_oslo_s_defaults_and_takes_every_setting() {
        let c = Config::parse("source: { kind: amqp }\n").unwrap();
        let Source::Amqp(a) = c.source else {
            panic!("{:?}", c.source)
        };
        assert_eq!(a.url, "amqp://guest:guest@127.0.0.1:5672/%2F");
        assert_eq!(a.queue, "flowcast");
        assert_eq!(
            a.routing_keys,
            ["notifications.*", "versioned_notifications.*"]
        );
        assert!(a.exchanges.iter().any(|e| e == "nova") && a.exchanges.len() == 6);
        assert_eq!((a.prefetch, a.dedup_window), (20_000, 100_000));
        assert_eq!(a.queue_type, QueueType::Classic);
        let c = Config::parse(
            "source: { kind: amqp, url: \"amqps://h:5671/os\", tls_ca: /ca.pem, exchanges: [nova], \
             routing_keys: [\"notifications.error\"], queue: fc, queue_type: quorum, prefetch: 50, \
             message_ttl_ms: 6h, max_length: 10, max_length_bytes: 1000, dead_letter_exchange: dlx, \
             durable_exchanges: true, dedup_window: 50, user: u, password_file: /p }\n",
        )
        .unwrap();
        let Source::Amqp(a) = c.source else {
            panic!("{:?}", c.source)
        };
        assert_eq!(a.message_ttl_ms, Some(6 * 3_600_000));
        assert_eq!(a.queue_type, QueueType::Quorum);
        assert_eq!(a.dead_letter_exchange.as_deref(), Some("dlx"));
        // Settings that contradict each other are refused with their reason.
        for (bad, why) in [
            (
                "url: \"amqp://h/\", tls_ca: /ca.pem",
                "`tls_ca` needs an `amqps://` url",
            ),
            ("password: a, password_file: /p", "give one or the other"),
            ("queue: amq.x", "`amq.` is the broker's own prefix"),
            ("routing_keys: []", "`routing_keys` is empty"),
            ("message_ttl_ms: 0s", "positive"),
        ] {
            let e = Config::parse(&format!("source: {{ kind: amqp, {bad} }}\n")).unwrap_err();
            assert!(e.to_string().contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn a_full_file_parses() {
        let c = Config::parse(
            r#"
models: /etc/flowcast/models
state_dir: /var/lib/flowcast
snapshot_interval_ms: 10s
source: { kind: jetstream, stream: NOTIFICATIONS, subjects: ["notifications.>"], ack_wait_ms: 1m }
nats: { url: "nats://10.0.0.1:4222", user: flowcast, password: secret }
sinks:
  - kind: stdout
  - kind: nats
  - kind: alertmanager
    url: http://127.0.0.1:9093
clock: { mode: event, idle_after_ms: "0" }
"#,
        )
        .unwrap();
        assert!(matches!(
            c.source,
            Source::Jetstream {
                ack_wait_ms: 60_000,
                ..
            }
        ));
        assert_eq!(c.snapshot_interval_ms, 10_000);
        assert!(matches!(
            c.clock,
            Clock::Event {
                idle_after_ms: 0,
                ..
            }
        ));
        assert_eq!(c.sinks.len(), 3);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_their_position() {
        let e = Config::parse("models: m\nsnapshot_intervall_ms: 5s\n").unwrap_err();
        assert!(e.starts_with("2:1:"), "{e}");
        assert!(e.contains("unknown field `snapshot_intervall_ms`"), "{e}");
        let e = Config::parse("snapshot_interval_ms: soon\n").unwrap_err();
        assert!(e.contains("not a positive duration"), "{e}");
        let e = Config::parse("sinks: [{kind: webhook, url: ftp://x}]\n").unwrap_err();
        assert!(e.contains("http://"), "{e}");
    }
}
