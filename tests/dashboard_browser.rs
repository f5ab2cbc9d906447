//! The dashboard in a real browser: Debian's chromium, headless, driven through chromedriver
//! (WebDriver, spoken here over reqwest: a handful of JSON commands), against a real
//! `flowcast run` fed by a real nats-server. One browser session for the whole scenario, to
//! keep CI time down. Screenshots go to `target/dashboard/` for a person to look at.
//!
//! `scripts/test.sh` installs `chromium` and `chromium-driver` when missing.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const VOLUME: &str = "examples/nova_volume_attach/events.jsonl";

/// A chromedriver process and one session of headless chromium.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
}

impl Browser {
    fn start() -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian's chromium-driver; scripts/test.sh installs it)");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut b = Browser {
            driver,
            base: format!("http://127.0.0.1:{port}"),
            session: String::new(),
            rt,
            client: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while b.raw("GET", "/status", None).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/lib/chromium/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1400,1000"],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let v = b
            .raw("POST", "/session", Some(caps))
            .expect("a browser session");
        b.session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_string();
        b
    }

    fn raw(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        self.rt.block_on(async {
            let req = match method {
                "GET" => self.client.get(&url),
                "DELETE" => self.client.delete(&url),
                _ => self.client.post(&url).json(&body.unwrap_or(json!({}))),
            };
            let r = req
                .timeout(Duration::from_secs(60))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let ok = r.status().is_success();
            let v: Value = r.json().await.map_err(|e| e.to_string())?;
            if ok {
                Ok(v["value"].clone())
            } else {
                Err(v.to_string())
            }
        })
    }

    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        self.raw(method, &path, body)
            .unwrap_or_else(|e| panic!("WebDriver {path}: {e}"))
    }

    fn go(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url })));
    }

    /// Runs a script in the page (its `return` value back as JSON).
    fn js(&self, script: &str) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
    }

    /// The visible text of the first element matching `css` ("" when there is none).
    fn text(&self, css: &str) -> String {
        let s = format!(
            "const e = document.querySelector({}); return e ? e.innerText : '';",
            json!(css)
        );
        self.js(&s).as_str().unwrap_or("").to_string()
    }

    fn count(&self, css: &str) -> u64 {
        let s = format!("return document.querySelectorAll({}).length;", json!(css));
        self.js(&s).as_u64().unwrap_or(0)
    }

    /// Polls `check` for up to 30 s; fails with a screenshot and the page's text.
    fn wait(&self, what: &str, mut check: impl FnMut(&Browser) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !check(self) {
            if Instant::now() > deadline {
                self.screenshot(&format!("failed-{}", what.replace(' ', "-")));
                panic!(
                    "timed out waiting for {what}; the page says:\n{}",
                    self.text("main")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn screenshot(&self, name: &str) -> PathBuf {
        use base64_png::decode;
        let v = self.cmd("GET", "/screenshot", None);
        let png = decode(v.as_str().unwrap_or(""));
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dashboard");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// Focuses the element and presses keys there (WebDriver "Element Send Keys"). The page
    /// redraws itself when the data changes: an element replaced between being found and being
    /// typed into is found again.
    fn keys(&self, css: &str, keys: &str) {
        let session = format!("/session/{}", self.session);
        let mut last = String::new();
        for _ in 0..10 {
            let found = self.raw(
                "POST",
                &format!("{session}/element"),
                Some(json!({"using": "css selector", "value": css})),
            );
            let id = found.ok().and_then(|e| {
                e.as_object()
                    .and_then(|o| o.values().next())
                    .and_then(|v| v.as_str())
                    .map(str::to_string)
            });
            if let Some(id) = id {
                match self.raw(
                    "POST",
                    &format!("{session}/element/{id}/value"),
                    Some(json!({ "text": keys })),
                ) {
                    Ok(_) => return,
                    Err(e) => last = e,
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("could not type into {css}: {last}");
    }

    /// The browser's console messages since the last call.
    fn console(&self) -> Vec<Value> {
        self.cmd("POST", "/se/log", Some(json!({"type": "browser"})))
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.raw("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Standard base64 to bytes (the screenshot), without a crate for 20 lines.
mod base64_png {
    pub fn decode(s: &str) -> Vec<u8> {
        let val = |c: u8| -> Option<u32> {
            Some(match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                _ => return None,
            } as u32)
        };
        let digits: Vec<u32> = s.bytes().filter_map(val).collect();
        let mut out = Vec::with_capacity(digits.len() * 3 / 4);
        for chunk in digits.chunks(4) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, d)| acc | (d << (18 - 6 * i)));
            let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            out.extend_from_slice(&bytes[..chunk.len().saturating_sub(1)]);
        }
        out
    }
}

/// Messages for the patent flow that leave four requests in flight: r1 at Y (FIG. 11: at risk),
/// r2 at process_start, r3 at Z, r4 just requested.
fn patent_in_flight(path: &Path) {
    let mut lines = String::new();
    let steps: [(&str, &[&str]); 4] = [
        (
            "r1",
            &["disk.attach.request", "xyz.start", "xyz.x", "xyz.y"],
        ),
        ("r2", &["disk.attach.request", "xyz.start"]),
        (
            "r3",
            &["disk.attach.request", "xyz.start", "xyz.x", "xyz.z"],
        ),
        ("r4", &["disk.attach.request"]),
    ];
    let mut t = 0;
    for (key, events) in steps {
        for e in events {
            t += 1;
            lines.push_str(
                &json!({
                    "event_type": e,
                    "timestamp": format!("2026-11-04 09:00:{t:02}.000000"),
                    "payload": {"request_id": key},
                })
                .to_string(),
            );
            lines.push('\n');
        }
    }
    std::fs::write(path, lines).unwrap();
}

/// Console entries that are errors (SEVERE), ignoring the event stream's reconnection notices
/// when the service stops.
fn errors(entries: &[Value]) -> Vec<String> {
    entries
        .iter()
        .filter(|e| e["level"] == "SEVERE")
        .map(|e| e["message"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn the_dashboard_shows_alerts_flows_timelines_and_reload_errors_live() {
    let nats = NatsServer::start(false);
    let dir = tempfile::tempdir().unwrap();
    // The flows are copied: the test breaks one of them.
    let models = dir.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    for e in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("models")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, models.join(p.file_name().unwrap())).unwrap();
    }
    let svc = Service::start(
        dir.path(),
        &format!(
            "models: {:?}\nsource: {{ kind: nats, subjects: [\"notifications.>\"] }}\nnats: {{ url: \"{}\" }}\nclock: {{ mode: event, idle_after_ms: \"0\" }}",
            models.display().to_string(),
            nats.url()
        ),
    );
    let base = format!("http://127.0.0.1:{}", svc.http_port);
    let browser = Browser::start();

    // The console check below can fail: an error logged in the page is seen.
    browser.go(&format!("{base}/#/alerts"));
    browser.js("console.error('flowcast-probe'); return 0;");
    assert!(
        errors(&browser.console())
            .iter()
            .any(|e| e.contains("flowcast-probe")),
        "the browser's console cannot be read"
    );

    // Alerts, as they fire: the page is open before the first message is published.
    browser.wait("the alerts page", |b| b.count("#firing") == 1);
    browser.wait("the live event stream", |b| b.text("#live") == "live");
    publish(&nats, Path::new(VOLUME), "notifications.nova", false);
    let alert_rows = "#firing tr[data-kind=alert], #resolved tr[data-kind=alert]";
    browser.wait("five alerts", |b| b.count(alert_rows) == 5);
    browser.wait("five alerts in the live log", |b| {
        b.count("#live-log .tag.alert") == 5
    });
    browser.screenshot("alerts");

    // The patent flow's page: FIG. 11 at Y (nothing observed yet: the patent's figures).
    browser.go(&format!("{base}/#/flows/patent_disk_attach"));
    browser.wait("the FIG. 11 table", |b| {
        b.count("#fig11 tr[data-state=y]") == 1
    });
    let y = browser.text("#fig11 tr[data-state=y]");
    assert!(y.contains("0.1000") && y.contains("0.1333"), "at Y: {y}");
    assert!(browser.count("#flow-graph svg g.node") >= 10);
    assert!(browser.text("#flow-graph").contains("0.1333"));
    browser.screenshot("flow-patent");

    // Objects at risk, then one object's timeline, opened from the keyboard.
    let inflight = dir.path().join("inflight.jsonl");
    patent_in_flight(&inflight);
    publish(&nats, &inflight, "notifications.patent", false);
    browser.go(&format!("{base}/#/objects?flow=patent_disk_attach"));
    browser.wait("four objects in flight", |b| {
        b.count("#objects tbody tr") == 4
    });
    // Riskiest first: r1 sits at Y.
    assert_eq!(
        browser
            .js("return document.querySelector('#objects tbody tr').dataset.object;")
            .as_str(),
        Some("r1")
    );
    browser.screenshot("objects");
    browser.keys("#objects tbody tr[data-object=r1] a", "\u{E007}");
    browser.wait("the timeline of r1", |b| b.count("#timeline tbody tr") >= 4);
    assert_eq!(browser.count("#risk-plot circle") as usize, {
        // One point per step with a risk after it.
        browser
            .js("return [...document.querySelectorAll('#timeline tbody tr')].filter(r => r.cells[5].innerText !== '–').length;")
            .as_u64()
            .unwrap_or(0) as usize
    });
    assert!(browser.text("#timeline").contains("moved"));
    browser.screenshot("object-r1");

    // A broken flow file: its diagnostic on the overview; fixed, it goes.
    browser.go(&format!("{base}/#/"));
    browser.wait("the overview", |b| b.count("#flows tbody tr") == 5);
    let broken = models.join("broken.flow");
    std::fs::write(
        &broken,
        "flow broken {\n    key payload.id\n    initial a\n    on \"x\" -> nowhere\n}\n",
    )
    .unwrap();
    browser.wait("the reload diagnostic", |b| {
        b.text("#reload-error").contains("nowhere")
    });
    assert!(browser.text("#reload-status").contains("failed"));
    browser.screenshot("overview-broken-flow");
    std::fs::write(&broken, "flow broken {\n    key payload.id\n    initial a\n    terminal b\n    on \"x\" -> a\n    on \"y\" -> b\n}\n").unwrap();
    browser.wait("the diagnostic to clear", |b| {
        b.count("#reload-error") == 0 && b.text("#reload-status").contains("without errors")
    });
    browser.wait("the fixed flow listed", |b| b.count("#flows tbody tr") == 6);
    browser.screenshot("overview");

    let errs = errors(&browser.console());
    assert!(errs.is_empty(), "errors in the browser console: {errs:#?}");
    drop(browser);
    svc.stop();
}
