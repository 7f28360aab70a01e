//! End to end against a real Prometheus (on a port it chose, backfilled with promtool,
//! scraping a live exporter this test controls). The agent runs in this test's runtime
//! with a listener handed over, except in the first test, which runs the `homeostat run`
//! binary, finds its port in its start line and stops it with SIGTERM.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{
    http_get, noisy_history, of_kind, prometheus_with, sample, verify_log, wait_ready, wait_until,
    AgentProcess, Daemon, Exporter, PromOptions, Prometheus,
};
use homeostat::audit::AuditRecord;
use homeostat::config::Config;

/// The ensemble's default threshold: the config these tests write leaves it alone.
fn default_threshold() -> f64 {
    homeostat::config::DetectionConfig::default().threshold
}

/// A day of history at one minute for `pod="spiky"` and `pod="clean"`, ending two minutes ago.
fn history() -> String {
    noisy_history(
        "hs_test_latency",
        &[("pod=\"spiky\"", 1), ("pod=\"clean\"", 2)],
        1440,
    )
}

const QUERY: &str = "max by (pod) (hs_test_latency)";

const PLAYBOOK: &str = r#"
const PLAYBOOK = #{
    name: "restart-slow-pod",
    mode: "dry-run",
    trigger: #{ signal: "latency", labels: #{ pod: "=~.+" }, min_score: 0.999, min_duration: "0s" },
    allowed: #{ kinds: ["k8s.rollout_restart"], targets: #{ namespace: "test" } },
};
fn plan(anomaly) {
    [#{ kind: "k8s.rollout_restart", target: #{ namespace: "test", deployment: anomaly.labels.pod } }]
}
"#;

struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Setup {
    /// A config file for an agent watching `prometheus`; it listens where the kernel
    /// chooses (the binary says where; in process the listener is handed over anyway).
    fn new(prometheus: &str, max_backoff: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("restart.rhai"), PLAYBOOK).unwrap();
        let config = dir.path().join("homeostat.toml");
        std::fs::write(
            &config,
            format!(
                r#"
playbooks = ["restart.rhai"]
[prometheus]
url = "{prometheus}"
timeout = "2s"
[agent]
interval = "1s"
listen = "127.0.0.1:0"
audit_log = "audit.jsonl"
max_backoff = "{max_backoff}"
[detection]
history = "1d"
history_step = "1m"
[[signals]]
name = "latency"
query = '{QUERY}'
direction = "up"
[[signals]]
name = "nothing"
query = 'hs_metric_that_does_not_exist'
"#
            ),
        )
        .unwrap();
        Setup { dir, config }
    }

    fn load(&self) -> Config {
        Config::load(&self.config).unwrap()
    }

    fn audit_log(&self) -> PathBuf {
        self.dir.path().join("audit.jsonl")
    }

    fn records(&self) -> Vec<AuditRecord> {
        common::records(&self.audit_log())
    }
}

/// The one test of `homeostat run` itself: the binary's config loading, its bind of
/// `127.0.0.1:0`, HTTP, and SIGTERM handling, around the whole detect-and-plan path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_spiky_series_opens_an_anomaly_and_gets_a_dry_run_plan() {
    let exporter = Exporter::start().await;
    exporter.set("hs_test_latency{pod=\"spiky\"}", 100.5);
    exporter.set("hs_test_latency{pod=\"clean\"}", 99.5);
    let prom = prometheus_with(history(), &exporter).await;

    let setup = Setup::new(&prom.url(), "5s");
    let mut agent = AgentProcess::spawn(&setup.config);
    let addr = agent.listen_addr().await;
    wait_ready(addr).await;
    let metrics = || async move {
        http_get(&format!("http://{addr}/metrics"))
            .await
            .map(|(_, b)| b)
            .unwrap_or_default()
    };
    // Both series were fitted from history: their live values are scored (not warming
    // up) and quiet.
    let m = metrics().await;
    let clean_score = sample(
        &m,
        "homeostat_anomaly_score{signal=\"latency\",pod=\"clean\"}",
    )
    .expect("clean is scored");
    assert!(clean_score < default_threshold(), "{m}");
    assert!(
        sample(
            &m,
            "homeostat_expected_upper{signal=\"latency\",pod=\"clean\"}"
        )
        .is_some(),
        "band exported: {m}"
    );
    assert!(
        of_kind(&setup.records(), "anomaly_opened").is_empty(),
        "no anomaly before the spike"
    );

    exporter.set("hs_test_latency{pod=\"spiky\"}", 300.0);
    wait_until(
        Duration::from_secs(30),
        "a dry-run outcome in the audit log",
        || {
            let done = !of_kind(&setup.records(), "action_outcome").is_empty();
            async move { done }
        },
    )
    .await;
    // Three more ticks, to give the clean twin every chance to misfire.
    let ticks = |m: &str| sample(m, "homeostat_ticks_total").unwrap_or(0.0);
    let after = ticks(&metrics().await) + 3.0;
    wait_until(Duration::from_secs(15), "three more ticks", || async move {
        ticks(&metrics().await) >= after
    })
    .await;

    let m = metrics().await;
    let score = sample(
        &m,
        "homeostat_anomaly_score{signal=\"latency\",pod=\"spiky\"}",
    )
    .expect("spiky score exported");
    assert!(score >= default_threshold(), "score {score}\n{m}");
    assert_eq!(
        sample(
            &m,
            "homeostat_anomaly_open{signal=\"latency\",pod=\"spiky\"}"
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "homeostat_anomaly_open{signal=\"latency\",pod=\"clean\"}"
        ),
        Some(0.0),
        "{m}"
    );
    assert!(
        sample(&m, "homeostat_empty_results_total{signal=\"nothing\"}").unwrap_or(0.0) >= 1.0,
        "empty result counted: {m}"
    );
    assert_eq!(
        sample(&m, "homeostat_signal_up{signal=\"nothing\"}"),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        http_get(&format!("http://{addr}/healthz"))
            .await
            .map(|(s, _)| s),
        Some(200)
    );

    let status = agent.terminate();
    assert_eq!(
        status.code(),
        Some(0),
        "clean exit on SIGTERM: {status:?}\n{}",
        agent.logs()
    );

    let records = setup.records();
    let opened = of_kind(&records, "anomaly_opened");
    assert_eq!(opened.len(), 1, "{records:#?}");
    assert_eq!(opened[0].data["labels"]["pod"], "spiky");
    assert_eq!(opened[0].data["signal"], "latency");
    // Why it opened: a spike is far from the level and from the previous point alike.
    let evidence = opened[0].data["evidence"].as_str().unwrap_or("");
    assert!(["level", "jump"].contains(&evidence), "{:?}", opened[0]);
    let id = opened[0].data["id"].as_str().unwrap();

    let plans = of_kind(&records, "plan");
    assert_eq!(
        plans.len(),
        1,
        "one plan per anomaly per playbook: {records:#?}"
    );
    assert_eq!(plans[0].data["anomaly_id"], id);
    assert_eq!(plans[0].data["playbook"], "restart-slow-pod");
    assert_eq!(plans[0].data["actions"][0]["kind"], "k8s.rollout_restart");
    assert_eq!(plans[0].data["actions"][0]["target"]["deployment"], "spiky");

    let intent = of_kind(&records, "action_intent");
    let outcome = of_kind(&records, "action_outcome");
    assert_eq!((intent.len(), outcome.len()), (1, 1));
    assert!(
        intent[0].seq < outcome[0].seq,
        "intent is recorded before the outcome"
    );
    assert_eq!(outcome[0].data["outcome"], "dry_run");
    let last = records.last().unwrap();
    assert_eq!(last.kind, "agent_stopped", "shutdown is audited");
    assert_eq!(last.data["reason"], "signal");

    verify_log(&setup.audit_log());
    assert!(
        agent.logs().contains("plan from playbook restart-slow-pod"),
        "the plan is shown: {}",
        agent.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_down_means_no_anomaly_and_the_agent_recovers_when_it_returns() {
    let exporter = Exporter::start().await;
    exporter.set("hs_test_latency{pod=\"spiky\"}", 100.0);
    exporter.set("hs_test_latency{pod=\"clean\"}", 100.0);
    // Started once for a port and its backfilled data, then stopped before the agent
    // starts: nothing listens there.
    let mut prom = Prometheus::start(PromOptions {
        history_openmetrics: Some(history()),
        scrape_targets: vec![exporter.addr()],
        scrape_interval: "1s",
    })
    .await;
    prom.stop();
    let setup = Setup::new(&prom.url(), "2s");
    let d = Daemon::start(setup.load()).await;

    // Queries fail, the agent stays up.
    d.wait_for("two failed queries", Duration::from_secs(20), |d| {
        d.metric("homeostat_query_errors_total{signal=\"latency\",kind=\"request\"}")
            .unwrap_or(0.0)
            >= 2.0
    })
    .await;
    assert!(d.is_running(), "{}", d.logs.text());
    assert_eq!(
        http_get(&d.url("/healthz")).await.map(|(s, _)| s),
        Some(200)
    );
    assert_eq!(
        d.metric("homeostat_signal_up{signal=\"latency\"}"),
        Some(0.0)
    );

    // Prometheus comes back on the same port, with its data: history for both series.
    prom.restart().await;
    d.wait_for(
        "the signal to recover with both series scored",
        Duration::from_secs(30),
        |d| {
            let snap = d.metrics.snapshot();
            snap.signals.get("latency").is_some_and(|s| s.up)
                && d.metric("homeostat_series_stale{signal=\"latency\",pod=\"clean\"}") == Some(0.0)
                && d.metric("homeostat_anomaly_score{signal=\"latency\",pod=\"clean\"}")
                    .is_some()
        },
    )
    .await;
    assert!(
        d.logs.text().contains("query recovered"),
        "{}",
        d.logs.text()
    );
    d.stop().await;
    let records = setup.records();
    assert!(
        of_kind(&records, "anomaly_opened").is_empty(),
        "an outage is not an anomaly: {records:#?}"
    );
    assert!(of_kind(&records, "plan").is_empty());
    verify_log(&setup.audit_log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_response_is_logged_and_skipped() {
    // A server that speaks HTTP but not the Prometheus API.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(|| async {
        (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":"oops"}]}}"#,
        )
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let setup = Setup::new(&format!("http://{addr}"), "1s");
    let d = Daemon::start(setup.load()).await;
    d.wait_for("two failed queries", Duration::from_secs(20), |d| {
        d.metric("homeostat_query_errors_total{signal=\"latency\",kind=\"request\"}")
            .unwrap_or(0.0)
            >= 2.0
    })
    .await;
    assert!(d.is_running());
    assert!(d.logs.text().contains("query failed"), "{}", d.logs.text());
    d.stop().await;
    let records = setup.records();
    assert!(of_kind(&records, "anomaly_opened").is_empty());
    assert_eq!(records.first().unwrap().kind, "agent_started");
    assert_eq!(records.last().unwrap().kind, "agent_stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fit_saves_models_that_the_daemon_loads_and_saves_again() {
    let exporter = Exporter::start().await;
    exporter.set("hs_test_latency{pod=\"spiky\"}", 100.5);
    exporter.set("hs_test_latency{pod=\"clean\"}", 99.5);
    // Fitting needs history only: no wait for the first scrape.
    let prom = Prometheus::start(PromOptions {
        history_openmetrics: Some(history()),
        scrape_targets: vec![exporter.addr()],
        scrape_interval: "1s",
    })
    .await;
    let setup = Setup::new(&prom.url(), "5s");

    // `homeostat fit`: one file per signal; a signal without data is a listed failure.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_homeostat"))
        .args(["fit", "--config", setup.config.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("[1/2] latency: 2 series, "), "{stderr}");
    assert!(stderr.contains("[2/2] nothing: FAILED"), "{stderr}");
    let file = setup.dir.path().join("models/latency.json");
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(saved["schema"], homeostat::models::SCHEMA);
    assert_eq!(saved["series"].as_array().unwrap().len(), 2);
    assert_eq!(saved["series"][0]["model"]["engine"], "ensemble");

    // The daemon starts from them, and saves what it learned when it stops.
    let d = Daemon::start(setup.load()).await;
    assert!(
        d.logs.text().contains("loaded saved models"),
        "{}",
        d.logs.text()
    );
    d.stop().await;
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert!(
        again["saved_at"].as_f64() > saved["saved_at"].as_f64(),
        "saved again at shutdown"
    );
    assert!(again["updated_to"].as_f64() >= saved["updated_to"].as_f64());
}
