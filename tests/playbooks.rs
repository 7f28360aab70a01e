//! The playbook layer end to end, with the agent in this test's runtime (a listener
//! handed over, real time): hostile scripts inside the running agent, verification
//! against a real Prometheus, alerts through a real Alertmanager to the webhook, hot
//! reload, and one plan per incident across restarts.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{http_get, noisy_history, of_kind, prometheus_with, Alertmanager, Daemon, Exporter};
use homeostat::audit::AuditRecord;
use homeostat::config::Config;
use serde_json::json;

const QUERY: &str = "max by (pod) (hs_test_latency)";

/// Where no Prometheus runs (the discard port): for tests that need none.
const NO_PROMETHEUS: &str = "http://127.0.0.1:9";

fn history() -> String {
    noisy_history("hs_test_latency", &[("pod=\"spiky\"", 1)], 1440)
}

/// A config file in `dir` for an agent watching `prometheus`. It names no listen
/// address: the test hands the agent its listener.
fn write_config(dir: &Path, prometheus: &str, playbooks: &[&str]) -> PathBuf {
    let list: Vec<String> = playbooks.iter().map(|p| format!("\"{p}\"")).collect();
    let config = dir.join("homeostat.toml");
    std::fs::write(
        &config,
        format!(
            r#"
playbooks = [{}]
[prometheus]
url = "{prometheus}"
timeout = "2s"
[agent]
interval = "1s"
audit_log = "audit.jsonl"
max_backoff = "2s"
playbook_timeout = "5s"
[detection]
history = "1d"
history_step = "1m"
[[signals]]
name = "latency"
query = '{QUERY}'
direction = "up"
"#,
            list.join(", ")
        ),
    )
    .unwrap();
    config
}

fn load(config: &Path) -> Config {
    Config::load(config).unwrap()
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

/// The sandbox's limits inside the running agent. The verify-and-escalate path is
/// covered in `tests/daemon.rs`; here it runs once more because `prom::back_to_normal`
/// builds PromQL that only a real Prometheus can evaluate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_playbooks_fail_alone_while_a_good_one_verifies_and_escalates() {
    let exporter = Exporter::start().await;
    exporter.set("hs_test_latency{pod=\"spiky\"}", 100.0);
    let prom = prometheus_with(history(), &exporter).await;

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
    let config = write_config(
        d,
        &prom.url(),
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
    let agent = Daemon::start(load(&config)).await;

    exporter.set("hs_test_latency{pod=\"spiky\"}", 400.0);
    agent
        .wait_for(
            "the good playbook's incident to end and the five hostile ones to fail",
            Duration::from_secs(40),
            // Each hostile script runs to its own limit on a thread of its own: on a busy
            // machine the last may fail after the good incident is over.
            |a| !a.kinds("incident_done").is_empty() && a.kinds("playbook_failed").len() >= 5,
        )
        .await;
    assert!(agent.is_running(), "{}", agent.logs.text());
    assert_eq!(
        http_get(&agent.url("/healthz")).await.map(|r| r.0),
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

    agent.stop().await;
    verify_log(d);
}

/// The agent's HTTP surface over the handed-over listener: `/readyz`, `/healthz`,
/// `/metrics`, and the webhook as a real Alertmanager calls it.
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
    // No Prometheus at all: alerts do not need it.
    let config = write_config(d, NO_PROMETHEUS, &["reboot.rhai"]);
    let agent = Daemon::start(load(&config)).await;
    for path in ["/readyz", "/healthz"] {
        assert_eq!(
            http_get(&agent.url(path)).await.map(|r| r.0),
            Some(200),
            "{path}"
        );
    }

    // A malformed body is answered 400 and counted, and changes nothing.
    let resp = reqwest::Client::new()
        .post(agent.url("/api/v1/alertmanager"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);

    let am = Alertmanager::start(&agent.url("/api/v1/alertmanager")).await;
    am.fire(
        json!({"alertname": "InstanceDown", "server_id": "9f1c2d3e", "severity": "critical"}),
        json!({"summary": "web-3 down"}),
    )
    .await;
    agent
        .wait_for("the alert's plan", Duration::from_secs(30), |a| {
            !a.kinds("action_outcome").is_empty()
        })
        .await;

    let recs = records(d);
    let received = of_kind(&recs, "alert_received");
    assert_eq!(received[0].data["status"], "firing");
    assert_eq!(received[0].data["labels"]["server_id"], "9f1c2d3e");
    let plan = &of_kind(&recs, "plan")[0].data;
    assert_eq!(plan["playbook"], "reboot");
    assert_eq!(plan["actions"][0]["target"]["server"], "9f1c2d3e");
    let (status, metrics) = http_get(&agent.url("/metrics")).await.unwrap();
    assert_eq!(status, 200);
    for line in [
        "homeostat_webhook_requests_total{result=\"malformed\"} 1",
        "homeostat_playbook_runs_total{playbook=\"reboot\",result=\"planned\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    agent.stop().await;
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
    let config = write_config(d, NO_PROMETHEUS, &["p.rhai"]);
    let agent = Daemon::start(load(&config)).await;
    let active = |a: &Daemon, sha: &str| {
        a.metrics.encode().contains(&format!(
            "homeostat_playbook_info{{playbook=\"p\",sha256=\"{sha}\"}} 1"
        ))
    };
    let v1 = sha(&version(1));
    agent
        .wait_for("version 1 active", Duration::from_secs(10), |a| {
            active(a, &v1)
        })
        .await;

    std::fs::write(&file, version(2)).unwrap();
    let v2 = sha(&version(2));
    agent
        .wait_for("version 2 active", Duration::from_secs(10), |a| {
            active(a, &v2)
        })
        .await;

    let broken = "const PLAYBOOK = #{ name: \"p\" ;\nfn plan(a) { [ }";
    std::fs::write(&file, broken).unwrap();
    agent
        .wait_for(
            "the broken edit to be rejected",
            Duration::from_secs(10),
            |a| a.kinds("playbook_rejected").len() == 1,
        )
        .await;
    assert!(active(&agent, &v2), "version 2 stays active");

    // SIGHUP reloads too, and does not stop the daemon. The agent runs in this process,
    // so the signal goes here; its handler is installed before the agent is ready, and
    // other agents of this test binary that get it find their playbooks unchanged.
    std::fs::write(&file, version(3)).unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let v3 = sha(&version(3));
    agent
        .wait_for("version 3 active", Duration::from_secs(10), |a| {
            active(a, &v3)
        })
        .await;
    assert!(agent.is_running());
    agent.stop().await;

    let recs = records(d);
    let reloaded = of_kind(&recs, "playbook_reloaded");
    assert_eq!(reloaded.len(), 2, "{recs:#?}");
    assert_eq!(reloaded[0].data["old_sha256"], v1);
    assert_eq!(reloaded[0].data["new_sha256"], v2);
    let rejected = &of_kind(&recs, "playbook_rejected")[0].data;
    assert_eq!(rejected["new_sha256"], sha(broken));
    assert_eq!(rejected["old_sha256"], v2);
    assert!(
        rejected["error"].as_str().unwrap().contains("syntax"),
        "{rejected}"
    );
    assert_eq!(reloaded[1].data["new_sha256"], v3);
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
    let set = |v: f64| {
        exporter.set("hs_test_latency{pod=\"cart-1\",app=\"cart\"}", v);
        exporter.set("hs_test_latency{pod=\"cart-2\",app=\"cart\"}", v);
    };
    set(100.0);
    let prom = prometheus_with(history, &exporter).await;

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
    let config = write_config(d, &prom.url(), &["restart.rhai"]);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(QUERY, "max by (pod, app) (hs_test_latency)")
        .replace("[detection]", "[detection]\nclose_after = 3");
    std::fs::write(&config, text).unwrap();
    let agent = Daemon::start(load(&config)).await;

    // Both pods of one app go bad together: one incident.
    set(500.0);
    agent
        .wait_for(
            "both anomalies to be handled",
            Duration::from_secs(30),
            |a| {
                let r = a.records();
                of_kind(&r, "anomaly_opened").len() == 2
                    && of_kind(&r, "plan").len() + of_kind(&r, "playbook_suppressed").len() == 2
            },
        )
        .await;
    agent.stop().await;
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
    let agent = Daemon::start(load(&config)).await;
    agent
        .wait_for(
            "both anomalies to be resumed",
            Duration::from_secs(30),
            |a| a.kinds("anomaly_resumed").len() == 2,
        )
        .await;
    set(100.0);
    agent
        .wait_for("both anomalies to close", Duration::from_secs(30), |a| {
            a.kinds("anomaly_closed").len() == 2
        })
        .await;
    agent.stop().await;
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
    let agent = Daemon::start(load(&config)).await;
    set(5000.0);
    agent
        .wait_for(
            "an anomaly after the restart to be handled",
            Duration::from_secs(30),
            |a| a.kinds("playbook_suppressed").len() >= 2,
        )
        .await;
    agent.stop().await;
    let recs = records(d);
    assert_eq!(of_kind(&recs, "agent_started").len(), 3, "{recs:#?}");
    assert_eq!(of_kind(&recs, "plan").len(), 1, "{recs:#?}");
    assert!(of_kind(&recs, "anomaly_opened").len() > 2);
    let after_restart = &of_kind(&recs, "playbook_suppressed")[1].data;
    assert_eq!(after_restart["group"], "app=cart");
    assert_eq!(after_restart["reason"], "cooldown");
    verify_log(d);
}
