//! Kubernetes end to end: a real Prometheus scraping a live exporter, the agent in this
//! test's runtime, the three shipped Kubernetes playbooks, and the fake API server
//! served over HTTP, reached through a generated kubeconfig with a bearer token.
//!
//! The last test runs against a real cluster only when `HOMEOSTAT_E2E_KUBECONFIG` names
//! a kubeconfig (reads and one server-side dry run; nothing is changed):
//!
//! ```sh
//! HOMEOSTAT_E2E_KUBECONFIG=~/.kube/config cargo test --test k8s_e2e real_cluster
//! ```

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::fake_kube::{annotated, node, owned_by, pdb, pod, workload, FakeKube};
use common::{noisy_history, of_kind, prometheus_with, verify_log, Daemon, Exporter};
use homeostat::audit::AuditRecord;
use homeostat::config::Config;
use serde_json::{json, Value};

const TOKEN: &str = "e2e-bearer-token-0c9d7f3a51b2";

/// Everything logged at debug and above by tasks outside an agent's own loop (the
/// executor's runs, kube's client), for the check that the token is never logged.
fn global_logs() -> &'static common::Logs {
    static LOGS: std::sync::OnceLock<common::Logs> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = common::Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the first global subscriber");
        logs
    })
}
const ERRORS: &str = "hs_test_errors{namespace=\"shop\",deployment=\"cart\"}";
const LATENCY: &str = "hs_test_p99{namespace=\"shop\",service=\"cart\"}";

/// A day of history for the error ratio and the latency of shop/cart.
fn history() -> String {
    let errors = noisy_history(
        "hs_test_errors",
        &[("namespace=\"shop\",deployment=\"cart\"", 1)],
        1440,
    );
    let latency = noisy_history(
        "hs_test_p99",
        &[("namespace=\"shop\",service=\"cart\"", 2)],
        1440,
    );
    // One OpenMetrics file: one `# EOF`, at its end.
    format!("{}{latency}", errors.trim_end_matches("# EOF\n"))
}

/// A cluster: four nodes (n2 NotReady), shop/cart with three pods under a budget that
/// lets none go, a web pod, a DaemonSet pod and a mirror pod on n2.
fn cluster() -> FakeKube {
    let fake = FakeKube::new();
    for (n, ready) in [("n1", true), ("n2", false), ("n3", true), ("n4", true)] {
        fake.add(node(n, ready));
    }
    fake.add(workload("Deployment", "shop", "cart", 3));
    for (p, n) in [("cart-1", "n1"), ("cart-2", "n2"), ("cart-3", "n3")] {
        fake.add(pod("shop", p, n, &[("app", "cart")]));
    }
    fake.add(pdb("shop", "cart", "cart", json!(3)));
    fake.add(pod("web", "web-1", "n2", &[("app", "web")]));
    fake.add(owned_by(
        pod("shop", "agent-n2", "n2", &[("app", "agent")]),
        "DaemonSet",
        "agent",
    ));
    fake.add(annotated(
        pod("kube-system", "etcd-n2", "n2", &[]),
        "kubernetes.io/config.mirror",
        "x",
    ));
    fake.require_token(TOKEN);
    fake
}

/// A shipped playbook, with `from` replaced by `to` (its mode, a shorter wait), written
/// into `dir`; fails if the playbook no longer says `from`.
fn shipped(dir: &Path, name: &str, edits: &[(&str, &str)]) -> String {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("playbooks")
        .join(format!("{name}.rhai"));
    let mut text = std::fs::read_to_string(&src).unwrap();
    for (from, to) in edits {
        assert!(text.contains(from), "{name}.rhai no longer says {from}");
        text = text.replace(from, to);
    }
    std::fs::write(dir.join(format!("{name}.rhai")), text).unwrap();
    format!("\"{name}.rhai\"")
}

fn write_config(
    dir: &Path,
    prometheus: &str,
    kubeconfig: &Path,
    mode: &str,
    playbooks: &[String],
) -> PathBuf {
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
mode = "{mode}"
[detection]
history = "1d"
history_step = "1m"
[kubernetes]
kubeconfig = "{}"
timeout = "2s"
action_timeout = "3s"
[[signals]]
name = "http_error_ratio"
query = 'max by (namespace, deployment) (hs_test_errors)'
direction = "up"
[[signals]]
name = "http_p99_latency"
query = 'max by (namespace, service) (hs_test_p99)'
direction = "up"
[[signals]]
name = "deployment_restarts"
query = 'hs_metric_that_does_not_exist_1'
[[signals]]
name = "node_cpu"
query = 'hs_metric_that_does_not_exist_2'
"#,
            playbooks.join(", "),
            kubeconfig.display()
        ),
    )
    .unwrap();
    config
}

fn of_playbook<'a>(records: &'a [AuditRecord], kind: &str, playbook: &str) -> Vec<&'a AuditRecord> {
    of_kind(records, kind)
        .into_iter()
        .filter(|r| r.data["playbook"] == playbook)
        .collect()
}

async fn wait_for_outcomes(d: &Daemon, playbook: &'static str, n: usize) {
    d.wait_for(
        &format!("{n} outcomes of {playbook}"),
        Duration::from_secs(60),
        |d| of_playbook(&d.records(), "action_outcome", playbook).len() >= n,
    )
    .await;
}

/// Alertmanager's webhook JSON for one firing KubeNodeNotReady alert.
fn node_not_ready(node: &str) -> Value {
    json!({
        "version": "4", "status": "firing", "receiver": "homeostat", "groupKey": "{}:{}",
        "alerts": [{"status": "firing",
            "labels": {"alertname": "KubeNodeNotReady", "node": node, "severity": "warning"},
            "annotations": {"summary": format!("{node} has been unready for more than 15 minutes")},
            "startsAt": "2026-12-07T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z", "fingerprint": "n2"}]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_playbooks_act_for_real_on_the_cluster_in_auto_mode() {
    let global = global_logs();
    let exporter = Exporter::start().await;
    exporter.set(ERRORS, 100.0);
    exporter.set(LATENCY, 100.0);
    let prom = prometheus_with(history(), &exporter).await;
    let fake = cluster();
    let url = fake.serve().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = FakeKube::write_kubeconfig(dir.path(), &url, TOKEN);
    let playbooks = [
        shipped(
            dir.path(),
            "restart-on-error-spike",
            &[("mode: \"dry-run\"", "mode: \"auto\"")],
        ),
        shipped(
            dir.path(),
            "scale-out-on-latency",
            &[("min_duration: \"2m\"", "min_duration: \"4s\"")],
        ),
        shipped(
            dir.path(),
            "drain-unhealthy-node",
            &[("mode: \"approval\"", "mode: \"auto\"")],
        ),
    ];
    let config = write_config(dir.path(), &prom.url(), &kubeconfig, "auto", &playbooks);
    let d = Daemon::start(Config::load(&config).unwrap()).await;

    exporter.set(ERRORS, 300.0);
    exporter.set(LATENCY, 300.0);
    let (status, _) = common_post(&d.url("/api/v1/alertmanager"), &node_not_ready("n2")).await;
    assert_eq!(status, 202);
    wait_for_outcomes(&d, "restart-on-error-spike", 1).await;
    wait_for_outcomes(&d, "scale-out-on-latency", 1).await;
    // Back in the band: the verifications hold.
    exporter.set(ERRORS, 100.0);
    exporter.set(LATENCY, 100.0);
    wait_for_outcomes(&d, "drain-unhealthy-node", 1).await;
    d.wait_for("both verifications", Duration::from_secs(120), |d| {
        of_kind(&d.records(), "verification").len() >= 2
    })
    .await;
    let logs = d.logs.text();
    d.stop().await;
    let records = common::records(&dir.path().join("audit.jsonl"));

    // The restart: intent (with its exact request) before the outcome, the write in the
    // cluster, the verification after.
    let intent = of_playbook(&records, "action_intent", "restart-on-error-spike");
    let outcome = of_playbook(&records, "action_outcome", "restart-on-error-spike");
    let verification = of_playbook(&records, "verification", "restart-on-error-spike");
    assert_eq!(
        (intent.len(), outcome.len(), verification.len()),
        (1, 1, 1),
        "{records:#?}"
    );
    assert!(intent[0].seq < outcome[0].seq && outcome[0].seq < verification[0].seq);
    assert_eq!(intent[0].data["effective_mode"], "auto");
    let req = &intent[0].data["requests"][0];
    assert_eq!(req["method"], "PATCH");
    assert_eq!(
        req["path"],
        "/apis/apps/v1/namespaces/shop/deployments/cart"
    );
    assert_eq!(
        req["headers"]["Content-Type"],
        "application/strategic-merge-patch+json"
    );
    assert_eq!(outcome[0].data["outcome"], "done", "{:?}", outcome[0]);
    assert_eq!(verification[0].data["passed"], true);
    let at = &req["body"]["spec"]["template"]["metadata"]["annotations"]
        ["kubectl.kubernetes.io/restartedAt"];
    let cart = fake.object("deployments", "shop", "cart").unwrap();
    assert_eq!(
        &cart["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"],
        at
    );

    // The scale-out: read through the live world (3 replicas), scaled to 4 through the
    // scale subresource.
    let intent = of_playbook(&records, "action_intent", "scale-out-on-latency");
    let outcome = of_playbook(&records, "action_outcome", "scale-out-on-latency");
    assert_eq!(intent[0].data["requests"][0]["method"], "PUT");
    assert_eq!(
        intent[0].data["requests"][0]["path"],
        "/apis/apps/v1/namespaces/shop/deployments/cart/scale"
    );
    assert_eq!(intent[0].data["observed"]["replicas"], 3);
    assert_eq!(outcome[0].data["outcome"], "done", "{:?}", outcome[0]);
    assert_eq!(cart["spec"]["replicas"], 4);

    // The drain: cordoned; the budget kept cart-2 (refused within the 3 s step), web-1
    // went; the DaemonSet and mirror pods were never asked to.
    let intent = of_playbook(&records, "action_intent", "drain-unhealthy-node");
    let paths: Vec<&str> = intent[0].data["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "/api/v1/nodes/n2",
            "/api/v1/namespaces/shop/pods/cart-2/eviction",
            "/api/v1/namespaces/web/pods/web-1/eviction"
        ]
    );
    let outcome = &of_playbook(&records, "action_outcome", "drain-unhealthy-node")[0].data;
    assert_eq!(outcome["kind"], "k8s.drain");
    assert_eq!(outcome["outcome"], "refused", "{outcome}");
    assert_eq!(outcome["detail"]["rule"], "disruption-budget");
    let pods: Vec<(&str, &str)> = outcome["detail"]["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["result"].as_str().unwrap()))
        .collect();
    assert_eq!(pods, [("cart-2", "refused"), ("web-1", "evicted")]);
    assert_eq!(
        fake.object("nodes", "", "n2").unwrap()["spec"]["unschedulable"],
        true
    );
    assert!(fake.object("pods", "shop", "cart-2").is_some());
    assert!(fake.object("pods", "web", "web-1").is_none());
    assert!(fake.object("pods", "shop", "agent-n2").is_some());
    assert!(fake.object("pods", "kube-system", "etcd-n2").is_some());

    verify_log(&dir.path().join("audit.jsonl"));
    // The token went to the API server, and nowhere else.
    assert!(fake
        .received()
        .iter()
        .all(|r| r.authorization.as_deref() == Some(&*format!("Bearer {TOKEN}"))));
    let audit = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    assert!(!audit.contains(TOKEN), "the token is in the audit log");
    assert!(!logs.contains(TOKEN), "the token is in the logs");
    assert!(
        global.text().contains("k8s.rollout_restart"),
        "the executor's lines are captured"
    );
    assert!(!global.text().contains(TOKEN), "the token is in the logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_dry_run_mode_the_api_server_dry_runs_the_write_and_nothing_changes() {
    let global = global_logs();
    let exporter = Exporter::start().await;
    exporter.set(ERRORS, 100.0);
    exporter.set(LATENCY, 100.0);
    let prom = prometheus_with(history(), &exporter).await;
    let fake = cluster();
    let url = fake.serve().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = FakeKube::write_kubeconfig(dir.path(), &url, TOKEN);
    let playbooks = [
        shipped(
            dir.path(),
            "restart-on-error-spike",
            &[("mode: \"dry-run\"", "mode: \"auto\"")],
        ),
        shipped(dir.path(), "scale-out-on-latency", &[]),
        shipped(dir.path(), "drain-unhealthy-node", &[]),
    ];
    // The playbook says auto; agent.mode caps it.
    let config = write_config(dir.path(), &prom.url(), &kubeconfig, "dry-run", &playbooks);
    let d = Daemon::start(Config::load(&config).unwrap()).await;
    let before = fake.object("deployments", "shop", "cart").unwrap();

    exporter.set(ERRORS, 300.0);
    wait_for_outcomes(&d, "restart-on-error-spike", 1).await;
    exporter.set(ERRORS, 100.0);
    d.wait_for("the verification", Duration::from_secs(60), |d| {
        !of_kind(&d.records(), "verification").is_empty()
    })
    .await;
    let logs = d.logs.text();
    d.stop().await;
    let records = common::records(&dir.path().join("audit.jsonl"));
    let intent = of_playbook(&records, "action_intent", "restart-on-error-spike");
    let outcome = of_playbook(&records, "action_outcome", "restart-on-error-spike");
    assert_eq!(intent[0].data["mode"], "auto");
    assert_eq!(intent[0].data["effective_mode"], "dry-run");
    assert_eq!(intent[0].data["requests"][0]["method"], "PATCH");
    assert_eq!(outcome[0].data["outcome"], "dry_run", "{:?}", outcome[0]);
    let sent = &outcome[0].data["detail"]["requests"][0];
    assert_eq!(
        sent["path"],
        "/apis/apps/v1/namespaces/shop/deployments/cart?dryRun=All"
    );
    assert_eq!(sent["code"], 200, "what the server answered is recorded");
    assert_eq!(sent["answer"]["kind"], "Deployment");

    // The server received the write as a dry run, and persisted nothing.
    let writes = fake.received_writes();
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert!(writes[0].path.ends_with("?dryRun=All"));
    assert_eq!((fake.writes(), fake.dry_runs()), (0, 1));
    assert_eq!(fake.object("deployments", "shop", "cart").unwrap(), before);
    verify_log(&dir.path().join("audit.jsonl"));
    assert!(!logs.contains(TOKEN) && !global.text().contains(TOKEN));
    assert!(!std::fs::read_to_string(dir.path().join("audit.jsonl"))
        .unwrap()
        .contains(TOKEN));
}

/// POSTs JSON; returns the status and body.
async fn common_post(url: &str, body: &Value) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(url)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

/// Against a real cluster, only when `HOMEOSTAT_E2E_KUBECONFIG` is set: reads, and a
/// server-side dry run of a cordon (needs `get`, `list` on nodes and pods and `patch`
/// on nodes, as `deploy/rbac.yaml` grants). Nothing is changed.
#[tokio::test]
async fn real_cluster_reads_and_a_server_side_dry_run() {
    use homeostat::act::k8s::{Kube, Settings};
    use homeostat::act::{Effector, Outcome};
    let Some(path) = std::env::var_os("HOMEOSTAT_E2E_KUBECONFIG") else {
        eprintln!("skipped: HOMEOSTAT_E2E_KUBECONFIG is not set");
        return;
    };
    let settings = Settings {
        kubeconfig: Some(PathBuf::from(path)),
        context: std::env::var("HOMEOSTAT_E2E_CONTEXT").ok(),
        ..Settings::default()
    };
    let kube = Kube::connect(&settings).await.unwrap();
    let nodes = kube.list("nodes", "", "").await.unwrap();
    assert!(!nodes.is_empty(), "a cluster has nodes");
    let name = nodes[0]["metadata"]["name"].as_str().unwrap().to_string();
    let got = kube.get("nodes", "", &name).await.unwrap().unwrap();
    assert_eq!(got["metadata"]["name"], name.as_str());
    kube.list("pods", "kube-system", "").await.unwrap();
    assert_eq!(
        kube.get("pods", "default", "homeostat-e2e-no-such-pod")
            .await
            .unwrap(),
        None
    );
    let cordoned = got["spec"]["unschedulable"] == true;
    let kind = if cordoned {
        "k8s.uncordon"
    } else {
        "k8s.cordon"
    };
    let action = homeostat::playbook::Action {
        kind: kind.into(),
        target: [("node".to_string(), name.clone())].into(),
        params: Default::default(),
        verify: None,
        on_failure: Default::default(),
    };
    let prepared = kube.prepare(&action).await.unwrap();
    let report = kube
        .execute(
            &action,
            prepared,
            true,
            tokio::time::Instant::now() + Duration::from_secs(30),
        )
        .await;
    assert_eq!(report.outcome, Outcome::DryRun, "{}", report.detail);
    let after = kube.get("nodes", "", &name).await.unwrap().unwrap();
    assert_eq!(
        after["spec"]["unschedulable"] == true,
        cordoned,
        "a dry run changes nothing"
    );
}
