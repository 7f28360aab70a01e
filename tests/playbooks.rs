//! The playbook layer end to end: hostile scripts inside the running agent,
//! verification and escalation against a real Prometheus, alerts from a real
//! Alertmanager, hot reload, and the offline `playbook test` runner.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{
    free_port, http_get, noisy_history, of_kind, prometheus_with, wait_ready, wait_until, Agent,
    Alertmanager, Exporter,
};
use homeostat::audit::AuditRecord;
use serde_json::json;

fn history() -> String {
    noisy_history("hs_test_latency", &[("pod=\"spiky\"", 1)], 1440)
}

fn write_config(dir: &Path, prom_port: u16, listen: &str, playbooks: &[&str]) -> PathBuf {
    let list: Vec<String> = playbooks.iter().map(|p| format!("\"{p}\"")).collect();
    let config = dir.join("homeostat.toml");
    std::fs::write(
        &config,
        format!(
            r#"
playbooks = [{}]
[prometheus]
url = "http://127.0.0.1:{prom_port}"
timeout = "2s"
[agent]
interval = "1s"
listen = "{listen}"
audit_log = "audit.jsonl"
max_backoff = "2s"
playbook_timeout = "5s"
[detection]
history = "1d"
history_step = "1m"
[[signals]]
name = "latency"
query = 'max by (pod) (hs_test_latency)'
direction = "up"
"#,
            list.join(", ")
        ),
    )
    .unwrap();
    config
}

fn records(dir: &Path) -> Vec<AuditRecord> {
    common::records(&dir.join("audit.jsonl"))
}

fn failure_of<'a>(records: &'a [AuditRecord], playbook: &str) -> Option<&'a str> {
    records
        .iter()
        .find(|r| r.kind == "playbook_failed" && r.data["playbook"] == playbook)
        .and_then(|r| r.data["error"].as_str())
}

fn verify_log(dir: &Path) {
    common::verify_log(&dir.join("audit.jsonl"));
}

fn hostile(name: &str, body: &str) -> String {
    format!(
        r#"const PLAYBOOK = #{{ name: "{name}", trigger: #{{ signal: "latency", min_score: 0.999 }},
            allowed: #{{ kinds: ["k8s.rollout_restart"] }} }};
        {body}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_playbooks_fail_alone_while_a_good_one_verifies_and_escalates() {
    let exporter = Exporter::start().await;
    exporter.set("hs_test_latency{pod=\"spiky\"}", 100.0);
    let prom = prometheus_with(history(), &exporter, "max by (pod) (hs_test_latency)", 1).await;

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("good.rhai"),
        r#"
        const PLAYBOOK = #{ name: "good", trigger: #{ signal: "latency", min_score: 0.999 },
            allowed: #{ kinds: ["k8s.rollout_restart", "notify.alertmanager"] } };
        fn plan(anomaly) {
            [#{ kind: "k8s.rollout_restart", target: #{ namespace: "test", deployment: anomaly.labels.pod },
                verify: #{ query: prom::back_to_normal(anomaly), within: "3s" }, on_failure: "escalate" }]
        }
        fn on_result(anomaly, results) {
            if results[0].escalated { [#{ kind: "notify.alertmanager", params: #{ summary: "restart did not help" } }] } else { [] }
        }"#,
    )
    .unwrap();
    let scripts = [
        ("loop", "fn plan(a) { loop { } }"),
        (
            "recurse",
            "fn deeper(n) { deeper(n + 1) } fn plan(a) { deeper(0) }",
        ),
        (
            "big_string",
            "fn plan(a) { let s = \"x\"; loop { s += s; } }",
        ),
        (
            "big_array",
            "fn plan(a) { let v = []; loop { v.push(v.len()); } }",
        ),
        ("import", "fn plan(a) { import \"os\" as os; [] }"),
        ("eval", "fn plan(a) { eval(\"[]\") }"),
    ];
    for (name, body) in scripts {
        std::fs::write(d.join(format!("{name}.rhai")), hostile(name, body)).unwrap();
    }
    let listen = format!("127.0.0.1:{}", free_port());
    let config = write_config(
        d,
        prom.port(),
        &listen,
        &[
            "good.rhai",
            "loop.rhai",
            "recurse.rhai",
            "big_string.rhai",
            "big_array.rhai",
            "import.rhai",
            "eval.rhai",
        ],
    );
    let mut agent = Agent::spawn(&config);
    wait_ready(&listen).await;

    exporter.set("hs_test_latency{pod=\"spiky\"}", 400.0);
    wait_until(
        Duration::from_secs(40),
        "the good playbook's incident to end",
        || {
            let done = !of_kind(&records(d), "incident_done").is_empty();
            async move { done }
        },
    )
    .await;
    assert!(agent.is_running(), "{}", agent.logs());
    assert_eq!(
        http_get(&format!("http://{listen}/healthz"))
            .await
            .map(|r| r.0),
        Some(200),
        "still serving"
    );

    let recs = records(d);
    let expect = [
        ("loop", "operation limit"),
        ("recurse", "call depth limit"),
        ("big_string", "string"),
        ("big_array", "array"),
        ("import", "module"),
    ];
    for (name, what) in expect {
        let err = failure_of(&recs, name)
            .unwrap_or_else(|| panic!("no playbook_failed for {name}: {recs:#?}"));
        assert!(err.to_lowercase().contains(what), "{name}: {err}");
    }
    // `eval` is refused when the file loads: the others still run.
    let started = &of_kind(&recs, "agent_started")[0].data;
    let rejected = started["rejected_playbooks"].to_string();
    assert!(
        rejected.contains("eval.rhai") && rejected.contains("eval"),
        "{rejected}"
    );

    // The good one: plan, dry-run, verification against Prometheus fails (the spike
    // stays), escalation to on_result, whose follow-up plan runs as round 1.
    let verification = of_kind(&recs, "verification");
    assert_eq!(
        verification[0].data["passed"],
        json!(false),
        "{verification:#?}"
    );
    let plans = of_kind(&recs, "plan");
    assert_eq!(plans.len(), 2, "{plans:#?}");
    assert_eq!(plans[1].data["round"], json!(1));
    assert_eq!(plans[1].data["actions"][0]["kind"], "notify.alertmanager");
    assert!(plans[1].seq > verification[0].seq);

    assert!(agent.terminate().success());
    verify_log(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_firing_alert_from_alertmanager_runs_its_playbook() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("reboot.rhai"),
        r#"
        const PLAYBOOK = #{ name: "reboot", trigger: #{ alertname: "InstanceDown", labels: #{ server_id: "=~.+" } },
            allowed: #{ kinds: ["openstack.server_reboot"] }, group_by: ["server_id"] };
        fn plan(alert) {
            [#{ kind: "openstack.server_reboot", target: #{ server: alert.labels.server_id }, params: #{ type: "soft" } }]
        }"#,
    )
    .unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    // No Prometheus at all: alerts do not need it.
    let config = write_config(d, free_port(), &listen, &["reboot.rhai"]);
    let mut agent = Agent::spawn(&config);
    let health = format!("http://{listen}/healthz");
    wait_until(Duration::from_secs(20), "the agent to listen", || {
        let health = health.clone();
        async move { http_get(&health).await.is_some() }
    })
    .await;

    // A malformed body is answered 400 and counted, and changes nothing.
    let resp = reqwest::Client::new()
        .post(format!("http://{listen}/api/v1/alertmanager"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);

    let am = Alertmanager::start(&format!("http://{listen}/api/v1/alertmanager")).await;
    am.fire(
        json!({"alertname": "InstanceDown", "server_id": "9f1c2d3e", "severity": "critical"}),
        json!({"summary": "web-3 down"}),
    )
    .await;
    wait_until(Duration::from_secs(30), "the alert's plan", || {
        let done = !of_kind(&records(d), "action_outcome").is_empty();
        async move { done }
    })
    .await;

    let recs = records(d);
    let received = of_kind(&recs, "alert_received");
    assert_eq!(received[0].data["status"], "firing");
    assert_eq!(received[0].data["labels"]["server_id"], "9f1c2d3e");
    let plan = &of_kind(&recs, "plan")[0].data;
    assert_eq!(plan["playbook"], "reboot");
    assert_eq!(plan["actions"][0]["target"]["server"], "9f1c2d3e");
    let metrics = http_get(&format!("http://{listen}/metrics"))
        .await
        .unwrap()
        .1;
    assert!(
        metrics.contains("homeostat_webhook_requests_total{result=\"malformed\"} 1"),
        "{metrics}"
    );
    assert!(agent.terminate().success());
    verify_log(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn playbooks_hot_reload_and_a_broken_edit_keeps_the_previous_version() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let version = |n: u32| {
        format!(
            r#"const PLAYBOOK = #{{ name: "p", description: "version {n}", trigger: #{{ signal: "latency" }},
                allowed: #{{ kinds: ["k8s.rollout_restart"] }} }};
            fn plan(a) {{ [] }}"#
        )
    };
    let sha = |s: &str| {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(s.as_bytes()))
    };
    let file = d.join("p.rhai");
    std::fs::write(&file, version(1)).unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let config = write_config(d, free_port(), &listen, &["p.rhai"]);
    let mut agent = Agent::spawn(&config);
    let metrics_url = format!("http://{listen}/metrics");
    let active = |want: String| {
        let url = metrics_url.clone();
        move || {
            let (url, want) = (url.clone(), want.clone());
            async move {
                http_get(&url).await.is_some_and(|(_, m)| {
                    m.contains(&format!(
                        "homeostat_playbook_info{{playbook=\"p\",sha256=\"{want}\"}} 1"
                    ))
                })
            }
        }
    };
    wait_until(
        Duration::from_secs(20),
        "version 1 active",
        active(sha(&version(1))),
    )
    .await;

    std::fs::write(&file, version(2)).unwrap();
    wait_until(
        Duration::from_secs(10),
        "version 2 active",
        active(sha(&version(2))),
    )
    .await;

    let broken = "const PLAYBOOK = #{ name: \"p\" ;\nfn plan(a) { [ }";
    std::fs::write(&file, broken).unwrap();
    wait_until(
        Duration::from_secs(10),
        "the broken edit to be rejected",
        || {
            let n = of_kind(&records(d), "playbook_rejected").len();
            async move { n == 1 }
        },
    )
    .await;
    assert!(
        http_get(&metrics_url)
            .await
            .unwrap()
            .1
            .contains(&sha(&version(2))),
        "version 2 stays active"
    );

    // SIGHUP reloads too, and does not stop the daemon.
    std::fs::write(&file, version(3)).unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", &agent.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    wait_until(
        Duration::from_secs(10),
        "version 3 active",
        active(sha(&version(3))),
    )
    .await;
    assert!(agent.is_running());
    assert!(agent.terminate().success());

    let recs = records(d);
    let reloaded = of_kind(&recs, "playbook_reloaded");
    assert_eq!(reloaded.len(), 2, "{recs:#?}");
    assert_eq!(reloaded[0].data["old_sha256"], sha(&version(1)));
    assert_eq!(reloaded[0].data["new_sha256"], sha(&version(2)));
    let rejected = &of_kind(&recs, "playbook_rejected")[0].data;
    assert_eq!(rejected["new_sha256"], sha(broken));
    assert_eq!(rejected["old_sha256"], sha(&version(2)));
    assert!(
        rejected["error"].as_str().unwrap().contains("syntax"),
        "{rejected}"
    );
    assert_eq!(reloaded[1].data["new_sha256"], sha(&version(3)));
    verify_log(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_incident_gets_one_plan_however_many_series_it_spans() {
    let exporter = Exporter::start().await;
    let history = noisy_history(
        "hs_test_latency",
        &[
            ("pod=\"cart-1\",app=\"cart\"", 1),
            ("pod=\"cart-2\",app=\"cart\"", 2),
        ],
        1440,
    );
    exporter.set("hs_test_latency{pod=\"cart-1\",app=\"cart\"}", 100.0);
    exporter.set("hs_test_latency{pod=\"cart-2\",app=\"cart\"}", 100.0);
    let prom = prometheus_with(history, &exporter, "hs_test_latency", 2).await;

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("restart.rhai"),
        r#"
        const PLAYBOOK = #{ name: "restart-app", trigger: #{ signal: "latency", min_score: 0.999 },
            allowed: #{ kinds: ["k8s.rollout_restart"] }, group_by: ["app"], cooldown: "10m" };
        fn plan(a) { [#{ kind: "k8s.rollout_restart", target: #{ namespace: "test", deployment: a.labels.app } }] }"#,
    )
    .unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let config = write_config(d, prom.port(), &listen, &["restart.rhai"]);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(
            "max by (pod) (hs_test_latency)",
            "max by (pod, app) (hs_test_latency)",
        )
        .replace("[detection]", "[detection]\nclose_after = 3");
    std::fs::write(&config, text).unwrap();
    let mut agent = Agent::spawn(&config);
    wait_ready(&listen).await;

    // Both pods of one app go bad together: one incident.
    exporter.set("hs_test_latency{pod=\"cart-1\",app=\"cart\"}", 500.0);
    exporter.set("hs_test_latency{pod=\"cart-2\",app=\"cart\"}", 500.0);
    wait_until(
        Duration::from_secs(30),
        "both anomalies to be handled",
        || {
            let r = records(d);
            let done = of_kind(&r, "anomaly_opened").len() == 2
                && of_kind(&r, "plan").len() + of_kind(&r, "playbook_suppressed").len() == 2;
            async move { done }
        },
    )
    .await;
    assert!(agent.terminate().success());
    let recs = records(d);
    assert_eq!(of_kind(&recs, "plan").len(), 1, "{recs:#?}");
    let suppressed = &of_kind(&recs, "playbook_suppressed")[0].data;
    assert_eq!(suppressed["group"], "app=cart");
    assert_eq!(suppressed["reason"], "cooldown");

    // A restart (a deploy, a crash loop) in the middle of the incident goes on with it:
    // the same anomalies, resumed from the audit log, no new plan, and they close.
    let ids: Vec<String> = of_kind(&recs, "anomaly_opened")
        .iter()
        .map(|r| r.data["id"].as_str().unwrap().to_string())
        .collect();
    let mut agent = Agent::spawn(&config);
    wait_ready(&listen).await;
    wait_until(
        Duration::from_secs(30),
        "both anomalies to be resumed",
        || {
            let done = of_kind(&records(d), "anomaly_resumed").len() == 2;
            async move { done }
        },
    )
    .await;
    exporter.set("hs_test_latency{pod=\"cart-1\",app=\"cart\"}", 100.0);
    exporter.set("hs_test_latency{pod=\"cart-2\",app=\"cart\"}", 100.0);
    wait_until(Duration::from_secs(30), "both anomalies to close", || {
        let done = of_kind(&records(d), "anomaly_closed").len() == 2;
        async move { done }
    })
    .await;
    assert!(agent.terminate().success());
    let recs = records(d);
    let ids_of = |kind: &str| {
        let mut v: Vec<String> = of_kind(&recs, kind)
            .iter()
            .map(|r| r.data["id"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    let mut opened = ids.clone();
    opened.sort();
    assert_eq!(ids_of("anomaly_opened"), opened, "{recs:#?}");
    assert_eq!(ids_of("anomaly_resumed"), opened);
    assert_eq!(ids_of("anomaly_closed"), opened);
    assert_eq!(of_kind(&recs, "plan").len(), 1, "{recs:#?}");
    assert_eq!(of_kind(&recs, "playbook_suppressed").len(), 1, "{recs:#?}");

    // Restarted again, a new incident of the same app: new anomalies, and the cooldown
    // read back from the audit log holds them.
    let mut agent = Agent::spawn(&config);
    wait_ready(&listen).await;
    exporter.set("hs_test_latency{pod=\"cart-1\",app=\"cart\"}", 5000.0);
    exporter.set("hs_test_latency{pod=\"cart-2\",app=\"cart\"}", 5000.0);
    wait_until(
        Duration::from_secs(30),
        "an anomaly after the restart to be handled",
        || {
            let r = records(d);
            let done = of_kind(&r, "playbook_suppressed").len() >= 2;
            async move { done }
        },
    )
    .await;
    assert!(agent.terminate().success());
    let recs = records(d);
    assert_eq!(of_kind(&recs, "agent_started").len(), 3, "{recs:#?}");
    assert_eq!(of_kind(&recs, "plan").len(), 1, "{recs:#?}");
    assert!(of_kind(&recs, "anomaly_opened").len() > 2);
    let after_restart = &of_kind(&recs, "playbook_suppressed")[1].data;
    assert_eq!(after_restart["group"], "app=cart");
    assert_eq!(after_restart["reason"], "cooldown");
    verify_log(d);
}
