//! Guardrails that read live state, against the test Kubernetes API (the fake, over
//! HTTP through a kubeconfig) and a real Alertmanager: the blast-radius floor, the
//! opt-out, the alert interlock and silences each refuse an action that would
//! otherwise run; a pause interrupts a write in flight; and a kill -9 between an
//! intent and its outcome is reconciled at the next start, never repeated.
//!
//! Incidents come from Alertmanager's webhook (firing alerts), so no history is fitted.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::fake_kube::{annotated, node, FakeKube};
use common::{of_kind, verify_log, AgentProcess, Alertmanager, Daemon};
use homeostat::config::Config;
use serde_json::{json, Value};

const TOKEN: &str = "fake-kube-token-guardrails";

/// Drains (or cordons) the node a `NodeBad` alert names.
fn playbook(kind: &str, limits: &str) -> String {
    format!(
        r#"
const PLAYBOOK = #{{
    name: "fence",
    mode: "auto",
    trigger: #{{ alertname: "NodeBad" }},
    allowed: #{{ kinds: ["{kind}"] }},
    group_by: ["node"],
    limits: #{{ {limits} }},
}};
fn plan(alert) {{ [#{{ kind: "{kind}", target: #{{ node: alert.labels.node }} }}] }}
"#
    )
}

/// A config in `dir` acting on the fake through `kubeconfig`; `extra` is appended.
fn config_text(kubeconfig: &Path, extra: &str) -> String {
    format!(
        r#"
playbooks = ["fence.rhai"]
[prometheus]
url = "http://127.0.0.1:9"
[agent]
interval = "1s"
listen = "127.0.0.1:0"
audit_log = "audit.jsonl"
mode = "auto"
[kubernetes]
kubeconfig = "{}"
timeout = "2s"
action_timeout = "20s"
[[signals]]
name = "quiet"
query = 'up'
{extra}
"#,
        kubeconfig.display()
    )
}

struct Setup {
    dir: tempfile::TempDir,
    fake: FakeKube,
    kubeconfig: PathBuf,
}

async fn setup(nodes: &[(&str, bool)], playbook_text: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeKube::new();
    for (n, ready) in nodes {
        fake.add(node(n, *ready));
    }
    fake.require_token(TOKEN);
    let url = fake.serve().await;
    let kubeconfig = FakeKube::write_kubeconfig(dir.path(), &url, TOKEN);
    std::fs::write(dir.path().join("fence.rhai"), playbook_text).unwrap();
    Setup {
        dir,
        fake,
        kubeconfig,
    }
}

impl Setup {
    async fn start(&self, extra: &str) -> Daemon {
        let config = Config::parse(&config_text(&self.kubeconfig, extra), self.dir.path()).unwrap();
        Daemon::start_with(config, Arc::new(common::Empty)).await
    }
}

/// A webhook body with one firing `NodeBad` alert for `node`.
fn node_bad(node: &str) -> String {
    json!({"version": "4", "status": "firing", "receiver": "homeostat", "groupKey": "{}",
        "alerts": [{"status": "firing", "labels": {"alertname": "NodeBad", "node": node},
            "annotations": {}, "startsAt": "2026-12-07T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
            "fingerprint": format!("bad-{node}")}]})
    .to_string()
}

async fn alert(d: &Daemon, node: &str) {
    let resp = reqwest::Client::new()
        .post(d.url("/api/v1/alertmanager"))
        .header("content-type", "application/json")
        .body(node_bad(node))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
}

async fn decided(d: &Daemon) -> Vec<homeostat::audit::AuditRecord> {
    d.wait_for("the step decided", Duration::from_secs(30), |d| {
        !d.kinds("action_outcome").is_empty() || !d.kinds("guardrail_refused").is_empty()
    })
    .await;
    d.kinds("guardrail_refused")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_that_would_leave_too_few_healthy_nodes_is_refused_and_one_that_would_not_runs() {
    // Three Ready nodes at the default floor of 70 %: draining one leaves 2 < 3.
    let s = setup(
        &[("n1", true), ("n2", true), ("n3", true)],
        &playbook("k8s.cordon", ""),
    )
    .await;
    let d = s.start("").await;
    alert(&d, "n1").await;
    let refused = decided(&d).await;
    assert_eq!(refused.len(), 1, "{refused:#?}");
    assert_eq!(refused[0].data["rule"], json!("blast_radius"));
    assert!(
        refused[0].data["message"]
            .as_str()
            .unwrap()
            .contains("2 of 3 would stay healthy"),
        "{refused:#?}"
    );
    assert_eq!(s.fake.writes(), 0, "nothing was sent");
    d.stop().await;

    // With four nodes, one NotReady already, and the playbook's floor at 50 %: it runs.
    let s = setup(
        &[("n1", true), ("n2", true), ("n3", true), ("n4", false)],
        &playbook("k8s.cordon", "min_healthy: 0.5"),
    )
    .await;
    let d = s.start("").await;
    alert(&d, "n1").await;
    assert!(decided(&d).await.is_empty());
    let out = d.kinds("action_outcome");
    assert_eq!(out[0].data["outcome"], json!("done"), "{out:#?}");
    assert_eq!(
        s.fake.object("nodes", "", "n1").unwrap()["spec"]["unschedulable"],
        json!(true)
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_opted_out_is_never_touched() {
    let s = setup(
        &[("n2", true), ("n3", true), ("n4", true)],
        &playbook("k8s.cordon", "min_healthy: 0.1"),
    )
    .await;
    s.fake
        .add(annotated(node("n1", true), "homeostat.io/ignore", "true"));
    let d = s.start("").await;
    alert(&d, "n1").await;
    decided(&d).await;
    let out = d.kinds("action_outcome");
    assert_eq!(out[0].data["outcome"], json!("refused"), "{out:#?}");
    assert_eq!(out[0].data["detail"]["rule"], json!("opt-out"), "{out:#?}");
    assert_eq!(s.fake.writes(), 0);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_firing_interlock_alert_or_a_matching_silence_holds_the_action_back() {
    let am = Alertmanager::start("http://127.0.0.1:9/").await;
    let nodes = [
        ("n1", true),
        ("n2", true),
        ("n3", true),
        ("n4", true),
        ("n5", true),
    ];
    let limits = "interlock: [#{ alertname: \"ClusterUpgrade\" }], min_healthy: 0.5";
    let s = setup(&nodes, &playbook("k8s.cordon", limits)).await;
    let extra = format!("[notify]\nalertmanager_url = \"{}\"", am.url());
    am.fire(
        json!({"alertname": "ClusterUpgrade", "cluster": "c1"}),
        json!({}),
    )
    .await;
    let d = s.start(&extra).await;
    alert(&d, "n1").await;
    let refused = decided(&d).await;
    assert_eq!(refused[0].data["rule"], json!("interlock"), "{refused:#?}");
    assert!(refused[0].data["message"]
        .as_str()
        .unwrap()
        .contains("ClusterUpgrade"));
    assert_eq!(s.fake.writes(), 0);
    d.stop().await;

    // No interlock, but a maintenance silence on node n2.
    let s = setup(&nodes, &playbook("k8s.cordon", "min_healthy: 0.5")).await;
    let silence = json!({
        "matchers": [{"name": "node", "value": "n2", "isRegex": false, "isEqual": true}],
        "startsAt": humantime::format_rfc3339(std::time::SystemTime::now()).to_string(),
        "endsAt": humantime::format_rfc3339(std::time::SystemTime::now() + Duration::from_secs(3600)).to_string(),
        "createdBy": "erin", "comment": "kernel upgrade on n2"
    });
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v2/silences", am.url()))
        .json(&silence)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());
    let d = s.start(&extra).await;
    alert(&d, "n2").await;
    let refused = decided(&d).await;
    assert_eq!(refused[0].data["rule"], json!("silence"), "{refused:#?}");
    assert!(refused[0].data["message"]
        .as_str()
        .unwrap()
        .contains("kernel upgrade on n2"));
    // Another node is not under the silence: it is cordoned.
    alert(&d, "n3").await;
    d.wait_for("n3's cordon", Duration::from_secs(30), |d| {
        !d.kinds("action_outcome").is_empty()
    })
    .await;
    assert_eq!(
        s.fake.object("nodes", "", "n3").unwrap()["spec"]["unschedulable"],
        json!(true)
    );
    assert_eq!(
        s.fake.object("nodes", "", "n2").unwrap()["spec"]["unschedulable"],
        Value::Null
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_interrupts_a_write_in_flight_and_records_what_it_left() {
    let nodes = [("n1", true), ("n2", true), ("n3", true), ("n4", true)];
    let s = setup(&nodes, &playbook("k8s.cordon", "min_healthy: 0.5")).await;
    s.fake.hold_writes();
    let d = s.start("").await;
    alert(&d, "n1").await;
    d.wait_for("the write held", Duration::from_secs(30), |_| {
        s.fake.received_writes().len() == 1
    })
    .await;
    std::fs::write(
        s.dir.path().join("homeostat.pause"),
        r#"{"reason": "stop now"}"#,
    )
    .unwrap();
    d.wait_for("the paused outcome", Duration::from_secs(30), |d| {
        !d.kinds("action_outcome").is_empty()
    })
    .await;
    let out = d.kinds("action_outcome");
    assert_eq!(out[0].data["outcome"], json!("paused"), "{out:#?}");
    assert!(out[0].data["detail"]["message"]
        .as_str()
        .unwrap()
        .contains("stop now"));
    // Nothing further: another incident while paused is refused before any request.
    alert(&d, "n2").await;
    d.wait_for("the refusal", Duration::from_secs(30), |d| {
        !d.kinds("guardrail_refused").is_empty()
    })
    .await;
    assert_eq!(
        d.kinds("guardrail_refused")[0].data["rule"],
        json!("paused")
    );
    s.fake.release_writes();
    assert_eq!(s.fake.received_writes().len(), 1);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_between_intent_and_outcome_is_reconciled_at_restart_and_never_repeated() {
    let nodes = [("n1", true), ("n2", true), ("n3", true), ("n4", true)];
    let s = setup(&nodes, &playbook("k8s.cordon", "min_healthy: 0.5")).await;
    let config = s.dir.path().join("homeostat.toml");
    std::fs::write(&config, config_text(&s.kubeconfig, "")).unwrap();
    let log = s.dir.path().join("audit.jsonl");
    // The API server takes the write but does not answer: the agent waits for it.
    s.fake.hold_writes();
    let mut agent = AgentProcess::spawn(&config);
    let addr = agent.listen_addr().await;
    common::wait_ready(addr).await;
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/api/v1/alertmanager"))
        .header("content-type", "application/json")
        .body(node_bad("n1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    common::wait_until(
        Duration::from_secs(30),
        "the intent, and the write received",
        || {
            let intent = !of_kind(&common::records(&log), "action_intent").is_empty();
            let received = s.fake.received_writes().len() == 1;
            async move { intent && received }
        },
    )
    .await;
    agent.kill9(); // no outcome is written
    assert!(of_kind(&common::records(&log), "action_outcome").is_empty());
    // The held request died with its connection: the node stays as it was. (A real
    // API server may have applied it: either way, the restart must read, not guess.)
    s.fake.release_writes();
    let mut agent = AgentProcess::spawn(&config);
    let addr = agent.listen_addr().await;
    common::wait_ready(addr).await;
    let records = common::records(&log);
    let r = of_kind(&records, "action_reconciled");
    assert_eq!(r.len(), 1, "{records:#?}");
    let intent = of_kind(&records, "action_intent");
    assert_eq!(r[0].data["intent_seq"], json!(intent[0].seq));
    assert_eq!(r[0].data["target"], json!({"node": "n1"}));
    let now = s.fake.object("nodes", "", "n1").unwrap();
    let observed = &r[0].data["observed"];
    assert!(
        r[0].data["error"].is_null() && !observed.is_null(),
        "{:#?}",
        r[0]
    );
    assert_eq!(
        observed["unschedulable"].as_bool().unwrap_or(false),
        now["spec"]["unschedulable"].as_bool().unwrap_or(false),
        "what was read is the node as it is: {:#?}",
        r[0]
    );
    // Reconciled by reading, not by running it again.
    assert_eq!(s.fake.received_writes().len(), 1);
    assert!(of_kind(&records, "action_outcome").is_empty());
    assert_eq!(agent.terminate().code(), Some(0), "{}", agent.logs());
    verify_log(&log);
}
