//! End to end with OpenStack: a VM's heartbeat drops in a real Prometheus, the agent
//! opens an anomaly, a variant of `reboot-unresponsive-vm` plans a soft reboot, the
//! executor sends it to the real Nova (through the real Keystone, with an application
//! credential), verification holds once the heartbeat is back, and the audit chain has
//! the intent with the exact request, the outcome and the verification. The same with
//! `agent.mode = "dry-run"` records the request and leaves Nova alone. Neither the audit
//! log nor the agent's log holds a password, a secret or a Keystone token.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::openstack::Cloud;
use common::{noisy_history, of_kind, prometheus_with, verify_log, Daemon, Exporter};
use homeostat::audit::AuditRecord;
use homeostat::config::Config;
use serde_json::{json, Value};

/// The shipped playbook's plan, triggered by an anomaly (not an alert) so that the test
/// drives it from Prometheus.
fn playbook(within: &str) -> String {
    format!(
        r#"
const PLAYBOOK = #{{
    name: "reboot-unresponsive-vm",
    mode: "auto",
    trigger: #{{ signal: "vm_heartbeat", labels: #{{ server_id: "=~.+" }}, min_score: 0.999,
                min_duration: "0s", direction: "down" }},
    allowed: #{{ kinds: ["openstack.server_reboot"] }},
}};
fn plan(anomaly) {{
    let id = anomaly.labels.server_id;
    let server = openstack::server(id);
    if server == () || server.status != "ACTIVE" {{ return []; }}
    [#{{ kind: "openstack.server_reboot", target: #{{ server: id }}, params: #{{ type: "soft" }},
        verify: #{{ query: `hs_vm_heartbeat{{server_id="${{id}}"}} > 50`, within: "{within}" }} }}]
}}
"#
    )
}

struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Setup {
    fn new(cloud: &Cloud, prometheus: &str, mode: &str, within: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("reboot.rhai"), playbook(within)).unwrap();
        let config = dir.path().join("homeostat.toml");
        std::fs::write(
            &config,
            format!(
                r#"
playbooks = ["reboot.rhai"]
[prometheus]
url = "{prometheus}"
timeout = "2s"
[agent]
interval = "1s"
listen = "127.0.0.1:0"
audit_log = "audit.jsonl"
mode = "{mode}"
[detection]
history = "1d"
history_step = "1m"
[openstack]
cloud = "homeostat-appcred"
clouds_file = "{clouds}"
timeout = "20s"
action_timeout = "60s"
# min: the backfilled history (no job/instance labels) stays in Prometheus' lookback
# beside the live series for a few minutes; the drop must win.
[[signals]]
name = "vm_heartbeat"
query = 'min by (server_id) (hs_vm_heartbeat)'
direction = "down"
"#,
                clouds = cloud.clouds_yaml.display()
            ),
        )
        .unwrap();
        Setup { dir, config }
    }

    fn audit_log(&self) -> PathBuf {
        self.dir.path().join("audit.jsonl")
    }

    fn records(&self) -> Vec<AuditRecord> {
        common::records(&self.audit_log())
    }
}

/// Instance actions Nova recorded for a server (`create`, `reboot`, ...).
async fn nova_actions(cloud: &Cloud, id: &str) -> Vec<String> {
    cloud.member().await.actions(id).await
}

/// No credential in the audit log or the agent's log: the harness' passwords and
/// secrets, and no Keystone (fernet) token.
fn assert_no_secrets(cloud: &Cloud, setup: &Setup, d: &Daemon) {
    let audit = std::fs::read_to_string(setup.audit_log()).unwrap();
    let logs = d.logs.text();
    for (what, text) in [("audit log", &audit), ("agent log", &logs)] {
        for s in &cloud.secrets {
            assert!(!text.contains(s.as_str()), "a secret in the {what}");
        }
        assert!(!text.contains("gAAAAA"), "a fernet token in the {what}");
        assert!(
            !text.to_lowercase().contains("x-auth-token"),
            "{what}: {text}"
        );
    }
}

/// Boots the VM, starts Prometheus with its heartbeat's history and the agent.
async fn start(
    cloud: &Cloud,
    name: &str,
    mode: &str,
    within: &str,
) -> (String, Exporter, common::Prometheus, Setup, Daemon) {
    let id = cloud.member().await.boot(name, json!({}), None).await;
    let series = format!("hs_vm_heartbeat{{server_id=\"{id}\"}}");
    let exporter = Exporter::start().await;
    exporter.set(&series, 100.0);
    let labels = format!("server_id=\"{id}\"");
    let prom = prometheus_with(
        noisy_history("hs_vm_heartbeat", &[(&labels, 3)], 1440),
        &exporter,
    )
    .await;
    let setup = Setup::new(cloud, &prom.url(), mode, within);
    let d = Daemon::start(Config::load(&setup.config).unwrap()).await;
    (id, exporter, prom, setup, d)
}

fn the_request(id: &str) -> Value {
    json!({
        "method": "POST",
        "path": format!("/servers/{id}/action"),
        "headers": {"OpenStack-API-Version": format!("compute {}", homeostat::act::openstack::MAX_MICROVERSION)},
        "body": {"reboot": {"type": "SOFT"}},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_anomaly_reboots_the_vm_in_nova_and_the_audit_chain_shows_it() {
    let cloud = cloud_or_skip!();
    let (id, exporter, _prom, setup, d) = start(cloud, "e2e-auto", "auto", "60s").await;
    let series = format!("hs_vm_heartbeat{{server_id=\"{id}\"}}");

    exporter.set(&series, 0.0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !nova_actions(cloud, &id)
        .await
        .contains(&"reboot".to_string())
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no reboot in Nova; audit: {:?}\n{}\n{}",
            setup.records().iter().map(|r| &r.kind).collect::<Vec<_>>(),
            d.logs.text(),
            d.metrics.encode()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The VM answers again after its reboot.
    exporter.set(&series, 100.0);
    d.wait_for("the verification", Duration::from_secs(60), |d| {
        !d.kinds("verification").is_empty()
    })
    .await;
    assert_no_secrets(cloud, &setup, &d);
    d.stop().await;

    let records = setup.records();
    let opened = of_kind(&records, "anomaly_opened");
    assert_eq!(opened.len(), 1, "{records:#?}");
    assert_eq!(opened[0].data["labels"]["server_id"], id.as_str());
    let intent = of_kind(&records, "action_intent");
    let outcome = of_kind(&records, "action_outcome");
    let verification = of_kind(&records, "verification");
    assert_eq!(
        (intent.len(), outcome.len(), verification.len()),
        (1, 1, 1),
        "{records:#?}"
    );
    assert!(intent[0].seq < outcome[0].seq && outcome[0].seq < verification[0].seq);
    assert_eq!(intent[0].data["effective_mode"], "auto");
    assert_eq!(intent[0].data["requests"], json!([the_request(&id)]));
    assert_eq!(intent[0].data["observed"]["status"], "ACTIVE");
    assert_eq!(outcome[0].data["outcome"], "done", "{:?}", outcome[0]);
    assert_eq!(outcome[0].data["detail"]["observed"]["status"], "ACTIVE");
    assert_eq!(
        verification[0].data["passed"], true,
        "{:?}",
        verification[0]
    );
    assert_eq!(
        nova_actions(cloud, &id)
            .await
            .iter()
            .filter(|a| *a == "reboot")
            .count(),
        1
    );
    verify_log(&setup.audit_log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_dry_run_mode_the_exact_request_is_recorded_and_nova_is_left_alone() {
    let cloud = cloud_or_skip!();
    let (id, exporter, _prom, setup, d) = start(cloud, "e2e-dry", "dry-run", "3s").await;
    exporter.set(&format!("hs_vm_heartbeat{{server_id=\"{id}\"}}"), 0.0);
    d.wait_for("the verification", Duration::from_secs(60), |d| {
        !d.kinds("verification").is_empty()
    })
    .await;
    assert_no_secrets(cloud, &setup, &d);
    d.stop().await;

    let records = setup.records();
    let intent = of_kind(&records, "action_intent");
    let outcome = of_kind(&records, "action_outcome");
    assert_eq!((intent.len(), outcome.len()), (1, 1), "{records:#?}");
    assert_eq!(intent[0].data["mode"], "auto");
    assert_eq!(intent[0].data["effective_mode"], "dry-run");
    assert_eq!(intent[0].data["requests"], json!([the_request(&id)]));
    assert_eq!(outcome[0].data["outcome"], "dry_run");
    assert_eq!(
        outcome[0].data["detail"]["requests"],
        json!([the_request(&id)])
    );
    // Nothing reached Nova: its only action on the server is its creation.
    assert_eq!(nova_actions(cloud, &id).await, ["create"]);
    verify_log(&setup.audit_log());
}
