//! Shared helpers for integration tests: a real Prometheus process (backfilled with
//! promtool), a live exporter it scrapes, the homeostat binary as a child process.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Finds a server binary; fails (never skips) when it is missing.
pub fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not found: run scripts/test.sh, which installs it (apt-get install prometheus)"))
}

/// Unix time now, in seconds.
pub fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// OpenMetrics text of one gauge family for `promtool tsdb create-blocks-from openmetrics`.
pub fn openmetrics_gauge(name: &str, series: &[(&str, Vec<(f64, f64)>)]) -> String {
    let mut s = format!("# TYPE {name} gauge\n");
    for (labels, points) in series {
        for (t, v) in points {
            s.push_str(&format!("{name}{{{labels}}} {v} {t:.3}\n"));
        }
    }
    s.push_str("# EOF\n");
    s
}

/// A live `/metrics` endpoint whose values the test sets.
pub struct Exporter {
    addr: String,
    values: Arc<Mutex<BTreeMap<String, f64>>>,
}

impl Exporter {
    /// Serves on a free loopback port.
    pub async fn start() -> Exporter {
        let values: Arc<Mutex<BTreeMap<String, f64>>> = Arc::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let v = values.clone();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let v = v.clone();
                async move {
                    let mut body = String::new();
                    let mut typed = std::collections::BTreeSet::new();
                    for (series, value) in v.lock().unwrap().iter() {
                        let name = series.split('{').next().unwrap().to_string();
                        if typed.insert(name.clone()) {
                            body.push_str(&format!("# TYPE {name} gauge\n"));
                        }
                        body.push_str(&format!("{series} {value}\n"));
                    }
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4",
                        )],
                        body,
                    )
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Exporter { addr, values }
    }

    /// `127.0.0.1:PORT`, for a scrape config.
    pub fn addr(&self) -> String {
        self.addr.clone()
    }

    /// Sets a series (`name{labels}`) to a value.
    pub fn set(&self, series: &str, value: f64) {
        self.values
            .lock()
            .unwrap()
            .insert(series.to_string(), value);
    }
}

/// How to start a Prometheus.
pub struct PromOptions {
    /// OpenMetrics history to backfill before start.
    pub history_openmetrics: Option<String>,
    /// `host:port` targets of one job `test`.
    pub scrape_targets: Vec<String>,
    /// Global scrape interval, e.g. `"1s"`.
    pub scrape_interval: &'static str,
    /// A fixed port; a free one when `None`.
    pub port: Option<u16>,
}

/// A real Prometheus process on loopback, killed on drop.
pub struct Prometheus {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Backfills, starts, and waits until `/-/ready`.
    pub async fn start(opts: PromOptions) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        if let Some(history) = &opts.history_openmetrics {
            let file = dir.path().join("history.om");
            std::fs::write(&file, history).unwrap();
            let out = Command::new(tool("promtool"))
                .args(["tsdb", "create-blocks-from", "openmetrics"])
                .arg(&file)
                .arg(&data)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "promtool failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut yml = format!(
            "global:\n  scrape_interval: {0}\n  evaluation_interval: {0}\n",
            opts.scrape_interval
        );
        if !opts.scrape_targets.is_empty() {
            let targets: Vec<String> = opts
                .scrape_targets
                .iter()
                .map(|t| format!("\"{t}\""))
                .collect();
            yml.push_str(&format!(
                "scrape_configs:\n  - job_name: test\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ));
        }
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, yml).unwrap();
        let port = opts.port.unwrap_or_else(free_port);
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--storage.tsdb.retention.time=30d")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starts prometheus");
        let prom = Prometheus {
            child: Some(child),
            port,
            dir,
        };
        let ready = format!("{}/-/ready", prom.url());
        let started = Instant::now();
        loop {
            if matches!(http_get(&ready).await, Some((200, _))) {
                break;
            }
            if started.elapsed() > Duration::from_secs(30) {
                panic!("prometheus not ready after 30s:\n{}", prom.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        prom
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn log_tail(&self) -> String {
        let log =
            std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default();
        log.lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until an instant query returns at least `n` series.
    pub async fn wait_for_series(&self, query: &str, n: usize, timeout: Duration) {
        let url = reqwest::Url::parse_with_params(
            &format!("{}/api/v1/query", self.url()),
            &[("query", query)],
        )
        .unwrap();
        let what = format!("{n} series from {query}");
        wait_until(timeout, &what, || {
            let url = url.to_string();
            async move {
                let Some((200, body)) = http_get(&url).await else {
                    return false;
                };
                let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                v["data"]["result"].as_array().is_some_and(|r| r.len() >= n)
            }
        })
        .await;
    }

    /// Stops the process.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The homeostat daemon as a child process, output captured to files.
pub struct Agent {
    child: Child,
    dir: tempfile::TempDir,
}

impl Agent {
    /// Runs `homeostat run --config CONFIG`.
    pub fn spawn(config: &Path) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let out = std::fs::File::create(dir.path().join("stdout")).unwrap();
        let err = std::fs::File::create(dir.path().join("stderr")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_homeostat"))
            .arg("run")
            .arg("--config")
            .arg(config)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("starts homeostat");
        Agent { child, dir }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits up to 10 s for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let ok = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(ok.success(), "kill -TERM failed");
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if started.elapsed() > Duration::from_secs(10) {
                panic!(
                    "homeostat still running 10s after SIGTERM:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Everything it printed so far (stdout, then stderr).
    pub fn logs(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
        format!("{}{}", read("stdout"), read("stderr"))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// GET with a 2 s timeout; `None` when the connection fails.
pub async fn http_get(url: &str) -> Option<(u16, String)> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let resp = client.get(url).send().await.ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.text().await.unwrap_or_default()))
}

/// Polls `f` every 200 ms until it holds; panics after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while !f().await {
        if started.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A real Alertmanager process on loopback whose only receiver is a webhook.
pub struct Alertmanager {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Alertmanager {
    /// Starts it with every alert routed to `webhook` after a 1 s group wait.
    pub async fn start(webhook: &str) -> Alertmanager {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(
            &config,
            format!(
                "route:\n  receiver: homeostat\n  group_by: ['...']\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\n\
                 receivers:\n  - name: homeostat\n    webhook_configs:\n      - url: {webhook}\n        send_resolved: true\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("alertmanager.log")).unwrap();
        let child = Command::new(tool("prometheus-alertmanager"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            // A single instance: no gossip port, nothing beyond loopback.
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starts alertmanager");
        let am = Alertmanager {
            child: Some(child),
            port,
            dir,
        };
        let ready = format!("{}/-/ready", am.url());
        let started = Instant::now();
        while !matches!(http_get(&ready).await, Some((200, _))) {
            if started.elapsed() > Duration::from_secs(30) {
                let log = std::fs::read_to_string(am.dir.path().join("alertmanager.log"))
                    .unwrap_or_default();
                panic!("alertmanager not ready after 30s:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        am
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Fires an alert through Alertmanager's v2 API, as Prometheus would.
    pub async fn fire(&self, labels: serde_json::Value, annotations: serde_json::Value) {
        let body = serde_json::json!([{ "labels": labels, "annotations": annotations }]);
        let resp = reqwest::Client::new()
            .post(format!("{}/api/v2/alerts", self.url()))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(
            resp.status().is_success(),
            "alertmanager refused the alert: {}",
            resp.status()
        );
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Deterministic noise in [-1, 1], so history and live values look alike.
pub fn noise(i: usize) -> f64 {
    ((i as f64 * 12.9898).sin() * 43758.5453).fract() * 2.0 - 1.0
}

/// `points` samples a minute apart of a gauge around 100 ± 2, one series per
/// `(labels, seed)`, ending two minutes ago (Prometheus' head block stays free).
pub fn noisy_history(name: &str, series: &[(&str, usize)], points: usize) -> String {
    let end = now_secs() - 120.0;
    let all: Vec<(&str, Vec<(f64, f64)>)> = series
        .iter()
        .map(|&(labels, seed)| {
            (
                labels,
                (0..points)
                    .map(|i| {
                        (
                            end - (points - 1 - i) as f64 * 60.0,
                            100.0 + 2.0 * noise(i * 7 + seed),
                        )
                    })
                    .collect(),
            )
        })
        .collect();
    openmetrics_gauge(name, &all)
}

/// A Prometheus backfilled with `history` and scraping `exporter` every second, once
/// `query` returns `series` series.
pub async fn prometheus_with(
    history: String,
    exporter: &Exporter,
    query: &str,
    series: usize,
) -> Prometheus {
    let prom = Prometheus::start(PromOptions {
        history_openmetrics: Some(history),
        scrape_targets: vec![exporter.addr()],
        scrape_interval: "1s",
        port: None,
    })
    .await;
    prom.wait_for_series(query, series, Duration::from_secs(15))
        .await;
    prom
}

/// Waits until the agent listening on `listen` is ready.
pub async fn wait_ready(listen: &str) {
    let url = format!("http://{listen}/readyz");
    wait_until(Duration::from_secs(30), "the agent to be ready", || {
        let url = url.clone();
        async move { matches!(http_get(&url).await, Some((200, _))) }
    })
    .await;
}

/// The records of an audit log (none before it exists).
pub fn records(log: &Path) -> Vec<homeostat::audit::AuditRecord> {
    if log.exists() {
        homeostat::audit::read_records(log).unwrap()
    } else {
        Vec::new()
    }
}

/// The records of one kind.
pub fn of_kind<'a>(
    records: &'a [homeostat::audit::AuditRecord],
    kind: &str,
) -> Vec<&'a homeostat::audit::AuditRecord> {
    records.iter().filter(|r| r.kind == kind).collect()
}

/// `homeostat audit verify` must pass on the log.
pub fn verify_log(log: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_homeostat"))
        .args(["audit", "verify", "--log", log.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of one exported sample line, by its exact name and labels.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.trim().parse().ok())
    })
}

/// Waits until the agent's `/metrics` shows `series` at `at_least` or more.
pub async fn wait_metric(listen: &str, series: &str, at_least: f64) {
    let url = format!("http://{listen}/metrics");
    let what = format!("{series} >= {at_least}");
    wait_until(Duration::from_secs(20), &what, || {
        let url = url.clone();
        async move {
            http_get(&url)
                .await
                .and_then(|(_, m)| sample(&m, series))
                .unwrap_or(0.0)
                >= at_least
        }
    })
    .await;
}
