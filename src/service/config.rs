//! `flowcast.yaml`: the service's configuration. Every setting has a default, so `flowcast run
//! --models models` needs no file at all; unknown keys are errors that name their position.
//! Durations are written as in `.flow` files (`30s`, `5m`).

use serde::{Deserialize, Deserializer};
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
        }
    }
}

/// Where messages come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Source {
    /// A JSONL file, or stdin with `-`: needs no server. The service stops at its end.
    File { path: PathBuf },
    /// A core NATS subscription (at most once).
    Nats {
        #[serde(default = "default_subjects")]
        subjects: Vec<String>,
        #[serde(default)]
        queue_group: Option<String>,
    },
    /// A durable JetStream pull consumer: nothing lost, nothing counted twice.
    Jetstream {
        stream: String,
        #[serde(default = "default_subjects")]
        subjects: Vec<String>,
        #[serde(default = "default_consumer")]
        consumer: String,
        /// Create the stream and the consumer if they do not exist.
        #[serde(default = "yes")]
        create: bool,
        /// How long an unacknowledged message waits before redelivery.
        #[serde(default = "default_ack_wait", deserialize_with = "duration")]
        ack_wait_ms: i64,
    },
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
fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Nats {
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
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Sink {
    /// JSON lines on stdout. (A struct variant, so that unknown keys are refused.)
    Stdout {},
    /// Published to `<prefix>.<flow>` on the NATS connection.
    Nats {
        #[serde(default = "default_prefix")]
        prefix: String,
    },
    /// Each record POSTed as JSON.
    Webhook { url: String },
    /// Alerts and resolutions as Alertmanager v2 alerts (`POST /api/v2/alerts`).
    Alertmanager {
        url: String,
        #[serde(default)]
        generator_url: Option<String>,
    },
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
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum Clock {
    /// The machine's clock, held back by `lateness` so that messages stamped a little in the
    /// past are not late (a watermark). Messages without a timestamp take the arrival time.
    Wall {
        #[serde(default = "default_lateness", deserialize_with = "duration")]
        lateness_ms: i64,
        #[serde(default = "default_max_future", deserialize_with = "duration")]
        max_future_ms: i64,
    },
    /// Message timestamps only, as in replay: the same input gives the same records. When no
    /// message has come for `idle_after`, time moves on with the wall clock so that timeouts
    /// still fire in a quiet cloud (`0` never).
    Event {
        #[serde(default = "default_idle", deserialize_with = "duration_or_zero")]
        idle_after_ms: i64,
        #[serde(default = "default_max_future", deserialize_with = "duration")]
        max_future_ms: i64,
    },
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

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let text = String::deserialize(d)?;
    match crate::syntax::parse_duration_ms(&text) {
        Some(ms) if ms > 0 => Ok(ms),
        _ => Err(serde::de::Error::custom(format!(
            "`{text}` is not a positive duration (like `500ms`, `30s`, `5m`)"
        ))),
    }
}

fn duration_or_zero<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let text = String::deserialize(d)?;
    if text == "0" {
        return Ok(0);
    }
    match crate::syntax::parse_duration_ms(&text) {
        Some(ms) if ms >= 0 => Ok(ms),
        _ => Err(serde::de::Error::custom(format!(
            "`{text}` is not a duration (like `10s`, or `0`)"
        ))),
    }
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
            Some(l) => format!("{}:{}: {e}", l.line(), l.column()),
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
            Source::File { .. } => &[],
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
