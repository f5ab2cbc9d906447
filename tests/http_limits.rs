//! The HTTP API against a hostile client: idle and half-open connections are closed after the
//! header timeout and capped in number, so the server keeps answering; the POST endpoints
//! require the bearer token when one is configured.

mod common;

use common::*;
use std::io::{Read, Write as _};
use std::net::TcpStream;
use std::time::Duration;

fn config(http: &str) -> String {
    format!(
        "models: models\nsource: {{ kind: file, path: \"-\" }}\nsinks: []\nhttp: {{ listen: \"127.0.0.1:0\", {http} }}"
    )
}

/// Open file descriptors of a process.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn idle_connections_are_closed_after_the_header_timeout_and_capped_in_number() {
    const IDLE: usize = 2_000;
    const MAX: usize = 1_500;
    let dir = tempfile::tempdir().unwrap();
    let (svc, stdin) = start_with_stdin(
        dir.path(),
        &config(&format!("header_timeout_ms: 1s, max_connections: {MAX}")),
    );
    let port = svc.http_port;
    svc.wait_until("ready", || http(port, "GET", "/readyz").0 == 200);
    let before = fds(svc.pid());
    // 2,000 connections that never send a byte, and one that sends half a request head.
    let mut idle: Vec<TcpStream> = (0..IDLE)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let mut half = TcpStream::connect(("127.0.0.1", port)).unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    idle.push(half);
    // Never more connections held than the limit allows.
    let held = fds(svc.pid());
    assert!(
        held <= before + MAX + 16,
        "{held} file descriptors with {} idle connections open (before: {before})",
        idle.len()
    );
    // The server keeps answering while the idle sockets are still open on our side.
    svc.wait_until("/healthz", || http(port, "GET", "/healthz").0 == 200);
    // And it closes every one of them: a read sees the end of the stream.
    for (i, s) in idle.iter_mut().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf);
        assert!(
            matches!(n, Ok(0))
                || matches!(&n, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "idle connection {i} was not closed by the server: {n:?}"
        );
    }
    svc.wait_until("the descriptors released", || fds(svc.pid()) <= before + 16);
    drop(stdin); // the end of the input ends the service
    svc.stop();
}

/// A POST with an optional `Authorization` header: the status.
fn post(port: u16, path: &str, auth: Option<&str>) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "POST {path} HTTP/1.0\r\nHost: localhost\r\n{auth}Content-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn post_endpoints_require_the_bearer_token_when_one_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let (svc, stdin) = start_with_stdin(
        dir.path(),
        &config(&format!(
            "token_file: {:?}",
            token_file.display().to_string()
        )),
    );
    let port = svc.http_port;
    svc.wait_until("ready", || http(port, "GET", "/readyz").0 == 200);
    for path in ["/-/reload", "/-/snapshot"] {
        assert_eq!(post(port, path, None), 401, "{path} without a token");
        assert_eq!(post(port, path, Some("Bearer wrong")), 401, "{path}");
        assert_eq!(post(port, path, Some("Basic s3cret-token")), 401, "{path}");
        assert_eq!(post(port, path, Some("Bearer s3cret-token")), 202, "{path}");
    }
    // Reading needs no token.
    assert_eq!(http(port, "GET", "/healthz").0, 200);
    assert_eq!(http(port, "GET", "/api/flows").0, 200);
    svc.wait_until("the authorised reload", || {
        svc.metric("flowcast_reloads_total{result=\"success\"}") >= 2.0
    });
    drop(stdin); // the end of the input ends the service
    svc.stop();
}

#[test]
fn post_endpoints_are_open_without_a_token_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let (svc, stdin) = start_with_stdin(dir.path(), &config("header_timeout_ms: 5s"));
    let port = svc.http_port;
    svc.wait_until("ready", || http(port, "GET", "/readyz").0 == 200);
    assert_eq!(post(port, "/-/snapshot", None), 202);
    assert!(!svc.log().contains("without a token"), "{}", svc.log());
    drop(stdin); // the end of the input ends the service
    svc.stop();
}
