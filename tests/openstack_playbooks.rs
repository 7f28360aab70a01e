//! The shipped `disable-dead-compute-service` playbook, unchanged, against the real Nova
//! and Keystone and a real Alertmanager: a `NovaComputeDown` alert makes a plan that
//! waits for approval (the playbook's mode); an SRE approves it by its hash over the
//! API; the compute service is disabled in Nova with the playbook's reason, and the
//! operators are told in Alertmanager.

mod common;

use std::time::Duration;

use common::{verify_log, Alertmanager, Daemon};
use homeostat::config::Config;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_compute_playbook_waits_for_approval_then_disables_the_service_in_nova() {
    let cloud = cloud_or_skip!();
    let am = Alertmanager::start("http://127.0.0.1:9/").await;
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("playbooks/disable-dead-compute-service.rhai");
    std::fs::copy(&shipped, dir.path().join("compute.rhai")).unwrap();
    let text = format!(
        r#"
playbooks = ["compute.rhai"]
[prometheus]
url = "http://127.0.0.1:9"
[agent]
interval = "1s"
audit_log = "audit.jsonl"
mode = "auto"
[openstack]
cloud = "homeostat-admin-appcred"
clouds_file = "{}"
timeout = "20s"
action_timeout = "60s"
[notify]
alertmanager_url = "{}"
[guardrails]
# Two compute hosts: disabling one leaves half.
min_healthy = 0.5
[[signals]]
name = "nova_agent_state"
query = 'up'
"#,
        cloud.clouds_yaml.display(),
        am.url()
    );
    let config = Config::parse(&text, dir.path()).unwrap();
    let log = config.agent.audit_log.clone();
    let d = Daemon::start_with(config, std::sync::Arc::new(common::Empty)).await;
    let host = cloud.computes[0].clone();
    let body = json!({"version": "4", "status": "firing", "receiver": "homeostat", "groupKey": "{}",
        "alerts": [{"status": "firing", "labels": {"alertname": "NovaComputeDown", "hostname": host},
            "annotations": {}, "startsAt": "2026-12-07T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
            "fingerprint": "compute-down"}]});
    let http = reqwest::Client::new();
    let resp = http
        .post(d.url("/api/v1/alertmanager"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    d.wait_for("the approval request", Duration::from_secs(60), |d| {
        !d.kinds("approval_requested").is_empty()
    })
    .await;
    assert_eq!(
        cloud.admin().await.service(&host).await["status"],
        json!("enabled"),
        "nothing done before the approval"
    );
    let list: Vec<Value> = http
        .get(d.url("/api/v1/approvals"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (id, hash) = (
        list[0]["id"].as_str().unwrap(),
        list[0]["plan_hash"].as_str().unwrap(),
    );
    let resp = http
        .post(d.url(&format!("/api/v1/approvals/{id}/approve")))
        .json(&json!({"hash": hash, "by": "frank", "reason": "compute1 is dead"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        200,
        "{}",
        resp.text().await.unwrap()
    );
    d.wait_for("both steps", Duration::from_secs(90), |d| {
        d.kinds("action_outcome").len() == 2
    })
    .await;
    let outcomes = d.kinds("action_outcome");
    assert_eq!(outcomes[0].data["kind"], json!("openstack.service_disable"));
    assert_eq!(outcomes[0].data["outcome"], json!("done"), "{outcomes:#?}");
    assert_eq!(outcomes[1].data["kind"], json!("notify.alertmanager"));
    assert_eq!(outcomes[1].data["outcome"], json!("done"), "{outcomes:#?}");
    let service = cloud.admin().await.service(&host).await;
    assert_eq!(service["status"], json!("disabled"), "{service}");
    assert!(
        service["disabled_reason"]
            .as_str()
            .unwrap_or("")
            .starts_with("homeostat: nova-compute down"),
        "{service}"
    );
    let intent = d.kinds("action_intent");
    assert_eq!(intent[0].data["effective_mode"], json!("auto"));
    assert_eq!(intent[0].data["requests"][0]["method"], json!("PUT"));
    d.stop().await;
    verify_log(&log);
    // The cloud is this binary's own, but leave it as found.
    let (status, _) = cloud
        .admin()
        .await
        .call(
            "PUT",
            &format!(
                "/os-services/{}",
                service["id"].as_str().unwrap_or_default()
            ),
            Some(json!({"status": "enabled"})),
        )
        .await;
    assert_eq!(status, 200);
}
