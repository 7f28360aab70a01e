//! End to end against a real Prometheus (started here on a free loopback port,
//! backfilled with promtool, scraping a live exporter this test controls), with the
//! homeostat binary running as a child process.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{
    free_port, http_get, noisy_history, of_kind, prometheus_with, sample, verify_log, wait_metric,
    wait_ready, wait_until, Agent, Exporter, PromOptions, Prometheus,
};
use homeostat::audit::AuditRecord;

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
    listen: String,
}

impl Setup {
    fn new(prom_port: u16, max_backoff: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("restart.rhai"), PLAYBOOK).unwrap();
        let listen = format!("127.0.0.1:{}", free_port());
        let config = dir.path().join("homeostat.toml");
        std::fs::write(
            &config,
            format!(
                r#"
playbooks = ["restart.rhai"]
[prometheus]
url = "http://127.0.0.1:{prom_port}"
timeout = "2s"
[agent]
interval = "1s"
listen = "{listen}"
audit_log = "audit.jsonl"
max_backoff = "{max_backoff}"
[detection]
history = "1d"
history_step = "1m"
[[signals]]
name = "latency"
query = 'max by (pod) (hs_test_latency)'
direction = "up"
[[signals]]
name = "nothing"
query = 'hs_metric_that_does_not_exist'
"#
            ),
        )
        .unwrap();
        Setup {
            dir,
            config,
            listen,
        }
    }

    fn audit_log(&self) -> PathBuf {
        self.dir.path().join("audit.jsonl")
    }

    fn records(&self) -> Vec<AuditRecord> {
        common::records(&self.audit_log())
    }

    async fn metrics(&self) -> String {
        http_get(&format!("http://{}/metrics", self.listen))
            .await
            .map(|(_, b)| b)
            .unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_spiky_series_opens_an_anomaly_and_gets_a_dry_run_plan() {
    let exporter = Exporter::start().await;
    exporter.set("hs_test_latency{pod=\"spiky\"}", 100.5);
    exporter.set("hs_test_latency{pod=\"clean\"}", 99.5);
    let prom = prometheus_with(history(), &exporter, "max by (pod) (hs_test_latency)", 2).await;

    let setup = Setup::new(prom.port(), "5s");
    let mut agent = Agent::spawn(&setup.config);
    wait_ready(&setup.listen).await;
    // Both series were fitted from history: they are scored (not warming up) and quiet.
    let m = setup.metrics().await;
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
    // A few more ticks, to give the clean twin every chance to misfire.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let m = setup.metrics().await;
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

    let status = agent.terminate();
    assert!(
        status.success(),
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
    assert_eq!(
        records.last().unwrap().kind,
        "agent_stopped",
        "shutdown is audited"
    );

    verify_log(&setup.audit_log());
    assert!(
        agent.logs().contains("plan from playbook restart-slow-pod"),
        "the plan is shown: {}",
        agent.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_down_means_no_anomaly_and_the_agent_recovers_when_it_returns() {
    let prom_port = free_port();
    let setup = Setup::new(prom_port, "2s");
    let mut agent = Agent::spawn(&setup.config);
    let health = format!("http://{}/healthz", setup.listen);

    // Nothing listens on the Prometheus port: queries fail, the agent stays up.
    wait_metric(
        &setup.listen,
        "homeostat_query_errors_total{signal=\"latency\",kind=\"request\"}",
        2.0,
    )
    .await;
    assert!(agent.is_running(), "{}", agent.logs());
    assert_eq!(http_get(&health).await.map(|(s, _)| s), Some(200));
    let m = setup.metrics().await;
    assert_eq!(
        sample(&m, "homeostat_signal_up{signal=\"latency\"}"),
        Some(0.0),
        "{m}"
    );

    // Prometheus comes back, with history and live data for both series.
    let exporter = Exporter::start().await;
    exporter.set("hs_test_latency{pod=\"spiky\"}", 100.0);
    exporter.set("hs_test_latency{pod=\"clean\"}", 100.0);
    let prom = Prometheus::start(PromOptions {
        history_openmetrics: Some(history()),
        scrape_targets: vec![exporter.addr()],
        scrape_interval: "1s",
        port: Some(prom_port),
    })
    .await;
    prom.wait_for_series("max by (pod) (hs_test_latency)", 2, Duration::from_secs(15))
        .await;
    wait_until(
        Duration::from_secs(30),
        "the signal to recover with both series scored",
        || {
            let setup = &setup;
            async move {
                let m = setup.metrics().await;
                sample(&m, "homeostat_signal_up{signal=\"latency\"}") == Some(1.0)
                    && sample(
                        &m,
                        "homeostat_series_stale{signal=\"latency\",pod=\"clean\"}",
                    ) == Some(0.0)
                    && sample(
                        &m,
                        "homeostat_anomaly_score{signal=\"latency\",pod=\"clean\"}",
                    )
                    .is_some()
            }
        },
    )
    .await;
    assert!(agent.logs().contains("query recovered"), "{}", agent.logs());
    assert!(agent.terminate().success());
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
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().fallback(|| async {
        (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":"oops"}]}}"#,
        )
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let setup = Setup::new(port, "1s");
    let mut agent = Agent::spawn(&setup.config);
    wait_metric(
        &setup.listen,
        "homeostat_query_errors_total{signal=\"latency\",kind=\"request\"}",
        2.0,
    )
    .await;
    assert!(agent.is_running());
    assert!(agent.logs().contains("query failed"), "{}", agent.logs());
    assert!(agent.terminate().success());
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
    let prom = prometheus_with(history(), &exporter, "max by (pod) (hs_test_latency)", 2).await;
    let setup = Setup::new(prom.port(), "5s");

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
    let mut agent = Agent::spawn(&setup.config);
    wait_ready(&setup.listen).await;
    assert!(
        agent.logs().contains("loaded saved models"),
        "{}",
        agent.logs()
    );
    assert!(agent.terminate().success());
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert!(
        again["saved_at"].as_f64() > saved["saved_at"].as_f64(),
        "saved again at shutdown"
    );
    assert!(again["updated_to"].as_f64() >= saved["updated_to"].as_f64());
}
