//! Alarms and notifications against a real Alertmanager: an anomaly that opens is an
//! alert there (read back from `GET /api/v2/alerts`), resolved when it closes; a plan's
//! `notify.alertmanager` step posts one with the plan and its audit sequence number.

mod common;

use std::time::Duration;

use common::{
    noisy_history, of_kind, prometheus_with, verify_log, wait_until, Alertmanager, Daemon, Exporter,
};
use homeostat::config::Config;
use serde_json::Value;

const PLAYBOOK: &str = r#"
const PLAYBOOK = #{
    name: "page-on-latency",
    mode: "auto",
    trigger: #{ signal: "latency", labels: #{ pod: "=~.+" }, min_duration: "0s" },
    allowed: #{ kinds: ["notify.alertmanager"] },
};
fn plan(anomaly) {
    [#{ kind: "notify.alertmanager",
        params: #{ alertname: "LatencyRemediation", severity: "page", summary: `latency of ${anomaly.labels.pod}` } }]
}
"#;

/// The alerts Alertmanager holds active, as its API v2 lists them.
async fn active_alerts(am: &Alertmanager) -> Vec<Value> {
    let Some((200, body)) = common::http_get(&format!("{}/api/v2/alerts", am.url())).await else {
        return Vec::new();
    };
    serde_json::from_str::<Vec<Value>>(&body).unwrap_or_default()
}

fn named<'a>(alerts: &'a [Value], name: &str) -> Vec<&'a Value> {
    alerts
        .iter()
        .filter(|a| a["labels"]["alertname"] == name)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anomaly_fires_an_alarm_that_resolves_when_it_closes_and_a_plan_notifies() {
    let exporter = Exporter::start().await;
    exporter.set("hs_alarm_latency{pod=\"spiky\"}", 100.5);
    let prom = prometheus_with(
        noisy_history("hs_alarm_latency", &[("pod=\"spiky\"", 1)], 1440),
        &exporter,
    )
    .await;
    // Alertmanager's own receiver is of no interest here: nothing listens there.
    let am = Alertmanager::start("http://127.0.0.1:9/").await;

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("page.rhai"), PLAYBOOK).unwrap();
    let text = format!(
        r#"
playbooks = ["page.rhai"]
[prometheus]
url = "{}"
timeout = "2s"
[agent]
interval = "1s"
audit_log = "audit.jsonl"
mode = "auto"
[notify]
alertmanager_url = "{}"
resend_every = "2s"
generator_url = "http://homeostat.example:9184/"
[detection]
history = "1d"
history_step = "1m"
[[signals]]
name = "latency"
query = 'max by (pod) (hs_alarm_latency)'
direction = "up"
severity = "critical"
close_after = 2
"#,
        prom.url(),
        am.url()
    );
    let config = Config::parse(&text, dir.path()).unwrap();
    let log = config.agent.audit_log.clone();
    let daemon = Daemon::start(config).await;

    exporter.set("hs_alarm_latency{pod=\"spiky\"}", 300.0);
    wait_until(
        Duration::from_secs(30),
        "the alarm in Alertmanager",
        || async { !named(&active_alerts(&am).await, "HomeostatAnomaly").is_empty() },
    )
    .await;
    let records = common::records(&log);
    let opened = of_kind(&records, "anomaly_opened");
    assert_eq!(opened.len(), 1, "{records:#?}");
    let alerts = active_alerts(&am).await;
    let alarm = named(&alerts, "HomeostatAnomaly")[0];
    assert_eq!(alarm["labels"]["signal"], "latency");
    assert_eq!(alarm["labels"]["pod"], "spiky");
    assert_eq!(alarm["labels"]["severity"], "critical");
    assert_eq!(alarm["annotations"]["anomaly_id"], opened[0].data["id"]);
    assert_eq!(
        alarm["annotations"]["audit_seq"],
        opened[0].seq.to_string(),
        "the alarm names the record that opened it"
    );
    assert_eq!(alarm["annotations"]["evidence"], opened[0].data["evidence"]);
    assert_eq!(alarm["generatorURL"], "http://homeostat.example:9184/");

    // The plan's notification: audited with its exact request, then delivered.
    wait_until(
        Duration::from_secs(15),
        "the notification's outcome",
        || {
            let done = !of_kind(&common::records(&log), "action_outcome").is_empty();
            async move { done }
        },
    )
    .await;
    let records = common::records(&log);
    let intent = of_kind(&records, "action_intent");
    let outcome = of_kind(&records, "action_outcome");
    assert_eq!(outcome[0].data["outcome"], "done", "{records:#?}");
    assert!(intent[0].seq < outcome[0].seq);
    let request = &intent[0].data["requests"][0];
    assert_eq!(request["method"], "POST");
    assert_eq!(request["path"], "/api/v2/alerts");
    let plan_seq = of_kind(&records, "plan")[0].seq.to_string();
    assert_eq!(request["body"][0]["annotations"]["audit_seq"], plan_seq);
    let alerts = active_alerts(&am).await;
    let note = named(&alerts, "LatencyRemediation");
    assert_eq!(note.len(), 1, "{alerts:#?}");
    assert_eq!(note[0]["labels"]["severity"], "page");
    assert_eq!(note[0]["labels"]["playbook"], "page-on-latency");
    assert_eq!(note[0]["annotations"]["summary"], "latency of spiky");
    assert_eq!(note[0]["annotations"]["audit_seq"], plan_seq);
    assert!(note[0]["annotations"]["plan"]
        .as_str()
        .unwrap()
        .contains("notify.alertmanager"));

    // Back to normal: the anomaly closes and its alarm is resolved in Alertmanager.
    exporter.set("hs_alarm_latency{pod=\"spiky\"}", 100.5);
    wait_until(Duration::from_secs(60), "the alarm resolved", || async {
        named(&active_alerts(&am).await, "HomeostatAnomaly").is_empty()
    })
    .await;
    assert_eq!(
        of_kind(&common::records(&log), "anomaly_closed").len(),
        1,
        "resolved because it closed"
    );
    let m = daemon.metrics.encode();
    assert!(
        common::sample(&m, "homeostat_alarms_total{result=\"sent\"}").unwrap_or(0.0) >= 2.0,
        "{m}"
    );
    daemon.stop().await;
    verify_log(&log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alertmanager_down_never_holds_detection_up() {
    let exporter = Exporter::start().await;
    exporter.set("hs_alarm_down{pod=\"spiky\"}", 100.5);
    let prom = prometheus_with(
        noisy_history("hs_alarm_down", &[("pod=\"spiky\"", 1)], 1440),
        &exporter,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on: every send fails at once.
    let text = format!(
        r#"
[prometheus]
url = "{}"
timeout = "2s"
[agent]
interval = "1s"
audit_log = "audit.jsonl"
[notify]
alertmanager_url = "http://127.0.0.1:9"
resend_every = "1s"
retries = 0
[detection]
history = "1d"
history_step = "1m"
[[signals]]
name = "latency"
query = 'max by (pod) (hs_alarm_down)'
direction = "up"
"#,
        prom.url()
    );
    let config = Config::parse(&text, dir.path()).unwrap();
    let log = config.agent.audit_log.clone();
    let daemon = Daemon::start(config).await;
    exporter.set("hs_alarm_down{pod=\"spiky\"}", 300.0);
    wait_until(
        Duration::from_secs(30),
        "the anomaly and failed sends",
        || {
            let opened = !of_kind(&common::records(&log), "anomaly_opened").is_empty();
            let m = daemon.metrics.encode();
            let failed = common::sample(&m, "homeostat_alarms_total{result=\"send_failed\"}")
                .unwrap_or(0.0)
                >= 2.0;
            async move { opened && failed }
        },
    )
    .await;
    // Ticks go on while every send fails.
    let ticks = |m: &str| common::sample(m, "homeostat_ticks_total").unwrap_or(0.0);
    let after = ticks(&daemon.metrics.encode()) + 2.0;
    wait_until(Duration::from_secs(10), "two more ticks", || {
        let t = ticks(&daemon.metrics.encode());
        async move { t >= after }
    })
    .await;
    daemon.stop().await;
}
