//! Shared helpers for integration tests: real Prometheus and Alertmanager processes on
//! ports they chose themselves (read back from their logs, never guessed free), a live
//! exporter they scrape, the agent in the test's runtime with a listener handed over,
//! and the homeostat binary as a child process.
#![allow(dead_code)]

pub mod fake_kube;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use homeostat::agent::{self, AgentError};
use homeostat::audit::AuditRecord;
use homeostat::config::Config;
use homeostat::metrics::Metrics;
use homeostat::playbook::Limits;
use homeostat::source::{BoxFuture, PromSource, Source, SourceError};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::instrument::WithSubscriber;

/// How long a real server (Prometheus, Alertmanager, the agent) may take to come up: an
/// upper bound for a loaded machine, not an expected duration.
pub const STARTUP: Duration = Duration::from_secs(30);

/// How often a condition on a real server is looked at again.
const POLL: Duration = Duration::from_millis(25);

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

/// The last `n` lines of a file (empty when it cannot be read).
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The port in a `msg="Listening on" address=HOST:PORT` line, which Prometheus and
/// Alertmanager both write once their listener is bound.
fn listening_on(line: &str) -> Option<u16> {
    if !line.contains("msg=\"Listening on\"") {
        return None;
    }
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("address="))?;
    addr.rsplit_once(':')?.1.parse().ok()
}

/// Waits until `child`'s log says which port it listens on; panics with the log's tail
/// when it exits first or says nothing within [`STARTUP`].
pub async fn listening_port(name: &str, child: &mut Child, log: &Path) -> u16 {
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(port) = text.lines().find_map(listening_on) {
            return port;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "{name} exited ({status}) before listening:\n{}",
                tail(log, 20)
            );
        }
        if started.elapsed() > STARTUP {
            panic!(
                "{name} named no listening port within {STARTUP:?}:\n{}",
                tail(log, 20)
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until `url` answers 200; panics with `log`'s tail after [`STARTUP`].
async fn wait_ok(name: &str, url: &str, log: &Path) {
    let started = Instant::now();
    while !matches!(http_get(url).await, Some((200, _))) {
        if started.elapsed() > STARTUP {
            panic!("{name} not ready after {STARTUP:?}:\n{}", tail(log, 20));
        }
        tokio::time::sleep(POLL).await;
    }
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
    /// Serves on a loopback listener it binds and keeps.
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
}

/// A real Prometheus process on loopback, killed on drop.
pub struct Prometheus {
    child: Option<Child>,
    /// The port it chose at its first start; a restart asks for it again.
    port: u16,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Backfills, starts on a port of its choosing, and waits until `/-/ready`.
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
        std::fs::write(dir.path().join("prometheus.yml"), yml).unwrap();
        let mut prom = Prometheus {
            child: None,
            port: 0,
            dir,
        };
        prom.launch(0).await;
        prom
    }

    /// Starts it again after [`stop`](Self::stop), with its data, on the port it had.
    pub async fn restart(&mut self) {
        self.stop();
        let port = self.port;
        self.launch(port).await;
        assert_eq!(self.port, port, "restarted on another port");
    }

    /// Spawns the process on `port` (0: its choice), reads the port back from its log,
    /// and waits until it is ready.
    async fn launch(&mut self, port: u16) {
        let log = self.log();
        let child = Command::new(tool("prometheus"))
            .arg(format!(
                "--config.file={}",
                self.dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--storage.tsdb.retention.time=30d")
            .stdout(Stdio::null())
            // A new log each time: the listening line read is this process's.
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starts prometheus");
        let child = self.child.insert(child);
        self.port = listening_port("prometheus", child, &log).await;
        wait_ok("prometheus", &format!("{}/-/ready", self.url()), &log).await;
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("prometheus.log")
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
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

    /// Waits until `targets` scrape targets are up. Until then a query sees only the
    /// backfilled history (within the 5 min lookback), and Prometheus 2.42 first applies
    /// its targets some 5 s after it starts.
    pub async fn wait_for_scrape(&self, targets: usize) {
        self.wait_for_series("up == 1", targets, Duration::from_secs(20))
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

/// A real Alertmanager process on loopback whose only receiver is a webhook.
pub struct Alertmanager {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Alertmanager {
    /// Starts it on a port of its choosing, with every alert routed to `webhook` after a
    /// 1 s group wait, and waits until `/-/ready`.
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
        let log = dir.path().join("alertmanager.log");
        let child = Command::new(tool("prometheus-alertmanager"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg("--web.listen-address=127.0.0.1:0")
            // A single instance: no gossip port, nothing beyond loopback.
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starts alertmanager");
        let mut am = Alertmanager {
            child: Some(child),
            port: 0,
            dir,
        };
        am.port = listening_port("alertmanager", am.child.as_mut().unwrap(), &log).await;
        wait_ok("alertmanager", &format!("{}/-/ready", am.url()), &log).await;
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

/// What the in-process agent logged at info and above, for assertions on log lines.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    /// Everything captured so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(PoisonError::into_inner)).into()
    }

    /// A subscriber writing into these logs, as the binary formats its lines.
    fn subscriber(&self) -> impl tracing::Subscriber + Send + Sync + 'static {
        let logs = self.clone();
        tracing_subscriber::fmt()
            .with_writer(move || logs.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The agent running in the test's runtime, in real time, against the configured
/// Prometheus, serving HTTP on a listener the test bound and handed over.
pub struct Daemon {
    /// Its metrics and health, as `/metrics` would show them.
    pub metrics: Arc<Metrics>,
    /// Where it serves HTTP.
    pub addr: SocketAddr,
    /// What it logged from its loop. Tasks it spawns (the HTTP server, playbook runs)
    /// log elsewhere.
    pub logs: Logs,
    audit_log: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), AgentError>>,
}

impl Daemon {
    /// Starts the agent as `homeostat run` would (minus the bind: the listener is
    /// handed over) and waits until it is ready.
    pub async fn start(config: Config) -> Daemon {
        let source =
            Arc::new(PromSource::new(&config.prometheus.url, config.prometheus.timeout).unwrap());
        Daemon::start_with(config, source).await
    }

    /// [`Daemon::start`] with metrics read from `source` instead of the configured store.
    pub async fn start_with(config: Config, source: Arc<dyn Source>) -> Daemon {
        let limits = Limits {
            timeout: config.agent.playbook_timeout,
            ..Default::default()
        };
        let (playbooks, rejected) = homeostat::load_playbooks(&config, &limits);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new(agent::liveness_window(&config)));
        let logs = Logs::default();
        let audit_log = config.agent.audit_log.clone();
        let (stop, stopped) = oneshot::channel();
        let effectors = homeostat::act::connect(&config).await.unwrap();
        let run = agent::run(
            agent::Agent {
                config,
                playbooks,
                rejected,
                source,
                metrics: metrics.clone(),
                effectors,
            },
            listener,
            async move {
                let _ = stopped.await;
            },
        );
        // Scoped to this agent's future: tests running side by side keep their own logs.
        let task = tokio::spawn(run.with_subscriber(logs.subscriber()));
        let d = Daemon {
            metrics,
            addr,
            logs,
            audit_log,
            stop: Some(stop),
            task,
        };
        d.wait_for("readiness", STARTUP, |d| d.metrics.is_ready())
            .await;
        d
    }

    /// Shuts it down as SIGTERM would, and checks it stopped cleanly.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let result = tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .unwrap_or_else(|_| panic!("still running 10s after shutdown:\n{}", self.logs.text()))
            .unwrap();
        assert!(result.is_ok(), "{result:?}\n{}", self.logs.text());
    }

    /// Whether its loop still runs.
    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }

    /// `http://ADDR/path`, on the handed-over listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The value of one exported sample, by its exact name and labels.
    pub fn metric(&self, series: &str) -> Option<f64> {
        sample(&self.metrics.encode(), series)
    }

    /// The audit log's records.
    pub fn records(&self) -> Vec<AuditRecord> {
        records(&self.audit_log)
    }

    /// The audit log's records of one kind.
    pub fn kinds(&self, kind: &str) -> Vec<AuditRecord> {
        of_kind(&self.records(), kind)
            .into_iter()
            .cloned()
            .collect()
    }

    /// Waits until `cond` holds; panics after `limit` (an upper bound for real servers;
    /// in virtual time where the test has paused the clock) with the audit log and the
    /// agent's log.
    pub async fn wait_for(&self, what: &str, limit: Duration, cond: impl Fn(&Daemon) -> bool) {
        let deadline = tokio::time::Instant::now() + limit;
        while !cond(self) {
            if tokio::time::Instant::now() > deadline || self.task.is_finished() {
                let kinds: Vec<String> = self.records().into_iter().map(|r| r.kind).collect();
                panic!(
                    "no {what} within {limit:?} (agent running: {});\naudit: {kinds:?}\nlog:\n{}",
                    self.is_running(),
                    self.logs.text()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// The homeostat binary (`homeostat run`) as a child process, output captured to files.
pub struct AgentProcess {
    child: Child,
    dir: tempfile::TempDir,
}

impl AgentProcess {
    /// Runs `homeostat run --config CONFIG`.
    pub fn spawn(config: &Path) -> AgentProcess {
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
        AgentProcess { child, dir }
    }

    /// The address it serves HTTP on, as its start line names it
    /// (`homeostat started listen=Some(ADDR)`): with `listen = "127.0.0.1:0"` the
    /// kernel chose it.
    pub async fn listen_addr(&mut self) -> SocketAddr {
        let started = Instant::now();
        loop {
            let logs = self.logs();
            let addr = logs
                .lines()
                .filter(|l| l.contains("homeostat started"))
                .find_map(|l| l.split_once("listen=Some(")?.1.split_once(')'))
                .map(|(addr, _)| addr.parse().expect("a socket address"));
            if let Some(addr) = addr {
                return addr;
            }
            assert!(self.is_running(), "homeostat exited:\n{logs}");
            assert!(
                started.elapsed() < STARTUP,
                "homeostat named no listen address within {STARTUP:?}:\n{logs}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Sends SIGTERM and waits up to 10 s for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
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
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: it stops where it is, writing nothing more.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
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

impl Drop for AgentProcess {
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

/// Checks `f` until it holds; panics after `timeout`.
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
        tokio::time::sleep(POLL).await;
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

/// A Prometheus backfilled with `history` and scraping `exporter` every second, once it
/// has scraped it: live values flow before the test goes on.
pub async fn prometheus_with(history: String, exporter: &Exporter) -> Prometheus {
    let prom = Prometheus::start(PromOptions {
        history_openmetrics: Some(history),
        scrape_targets: vec![exporter.addr()],
        scrape_interval: "1s",
    })
    .await;
    prom.wait_for_scrape(1).await;
    prom
}

/// Waits until the agent serving on `addr` answers `/readyz` with 200.
pub async fn wait_ready(addr: SocketAddr) {
    let url = format!("http://{addr}/readyz");
    wait_until(STARTUP, "the agent to be ready", || {
        let url = url.clone();
        async move { matches!(http_get(&url).await, Some((200, _))) }
    })
    .await;
}

/// The records of an audit log (none before it exists).
pub fn records(log: &Path) -> Vec<AuditRecord> {
    if !log.exists() {
        return Vec::new();
    }
    // The agent may be appending a line as it is read: a torn last line is read again.
    let mut tries = 0;
    loop {
        match homeostat::audit::read_records(log) {
            Ok(records) => return records,
            Err(_) if tries < 50 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("{}: {e}", log.display()),
        }
    }
}

/// The records of one kind.
pub fn of_kind<'a>(records: &'a [AuditRecord], kind: &str) -> Vec<&'a AuditRecord> {
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
pub mod openstack;

/// A plan step of `kind` on `target` with `params` (an object), stopping the plan on
/// failure: what the effector tests run.
pub fn action(
    kind: &str,
    target: &[(&str, &str)],
    params: serde_json::Value,
) -> homeostat::playbook::Action {
    homeostat::playbook::Action {
        kind: kind.into(),
        target: target
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        params: params.as_object().cloned().unwrap_or_default(),
        verify: None,
        on_failure: homeostat::playbook::OnFailure::Stop,
    }
}

/// A store with no data: the agent runs, fits nothing and ticks (tests driven by
/// alerts, or of the HTTP side).
pub struct Empty;

impl Source for Empty {
    fn instant_at<'a>(
        &'a self,
        _: &'a str,
        _: Option<f64>,
    ) -> BoxFuture<'a, Result<Vec<homeostat::source::Point>, SourceError>> {
        Box::pin(async { Ok(vec![]) })
    }

    fn range<'a>(
        &'a self,
        _: &'a str,
        _: f64,
        _: Duration,
        _: Duration,
    ) -> BoxFuture<'a, Result<Vec<homeostat::source::History>, SourceError>> {
        Box::pin(async { Ok(vec![]) })
    }
}
