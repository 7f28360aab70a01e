//! The Kubernetes effector and reads against the fake API server, in process (a
//! `kube::Client` over the fake's tower service) and, for the client's own loading of
//! a kubeconfig, over HTTP. The first tests check the fake itself against the real
//! API's shapes (k8s-openapi types) and rules.

mod common;

use std::time::Duration;

use common::action;
use common::fake_kube::{self, annotated, labelled, node, owned_by, pdb, pod, workload, FakeKube};
use homeostat::act::k8s::{Kube, Settings};
use homeostat::act::{Effector, Outcome, Prepared, Report};
use homeostat::playbook::Action;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v1::Scale;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use serde_json::{json, Value};
use tokio::time::Instant;

fn settings() -> Settings {
    Settings {
        timeout: Duration::from_secs(2),
        action_timeout: Duration::from_secs(5),
        ..Settings::default()
    }
}

fn kube(fake: &FakeKube) -> Kube {
    Kube::from_client(fake.client(), settings())
}

/// What the executor does with an effector: prepare, skip when nothing is to be sent,
/// else execute within `within`.
async fn act(
    kube: &Kube,
    a: &Action,
    dry_run: bool,
    within: Duration,
) -> (Option<Prepared>, Report) {
    let prepared = match kube.prepare(a).await {
        Ok(p) => p,
        Err(report) => return (None, report),
    };
    if prepared.requests.is_empty() {
        return (
            Some(prepared),
            Report::new(Outcome::Skipped, "already as wanted"),
        );
    }
    let report = kube
        .execute(a, prepared.clone(), dry_run, Instant::now() + within)
        .await;
    (Some(prepared), report)
}

fn shop() -> FakeKube {
    let fake = FakeKube::new();
    fake.add(node("n1", true));
    fake.add(node("n2", true));
    fake.add(workload("Deployment", "shop", "cart", 3));
    fake.add(workload("StatefulSet", "shop", "db", 2));
    fake.add(workload("DaemonSet", "shop", "agent", 0));
    for (name, n) in [("cart-1", "n1"), ("cart-2", "n1"), ("cart-3", "n2")] {
        fake.add(pod("shop", name, n, &[("app", "cart")]));
    }
    fake
}

const SEC: Duration = Duration::from_secs(1);

// ---- the fake itself -------------------------------------------------------------

#[tokio::test]
async fn the_fakes_answers_have_the_real_apis_shapes() {
    let fake = shop();
    fake.add(pdb("shop", "cart", "cart", json!(2)));
    let send = |m: &'static str, p: &'static str, ct: &'static str, b: Option<Value>| {
        let fake = fake.clone();
        async move { fake_kube::send(&fake, m, p, ct, b).await }
    };
    let (code, body) = send("GET", "/api/v1/namespaces/shop/pods/cart-1", "", None).await;
    assert_eq!(code, 200);
    let p: Pod = serde_json::from_value(body).unwrap();
    assert_eq!(p.spec.unwrap().node_name.as_deref(), Some("n1"));
    let (_, body) = send("GET", "/api/v1/namespaces/shop/pods", "", None).await;
    let pods: k8s_openapi::List<Pod> = serde_json::from_value(body).unwrap();
    assert_eq!(pods.items.len(), 3);
    let (_, body) = send(
        "GET",
        "/apis/apps/v1/namespaces/shop/deployments/cart",
        "",
        None,
    )
    .await;
    let d: Deployment = serde_json::from_value(body).unwrap();
    assert_eq!(d.status.unwrap().ready_replicas, Some(3));
    let (_, body) = send(
        "GET",
        "/apis/apps/v1/namespaces/shop/deployments/cart/scale",
        "",
        None,
    )
    .await;
    let s: Scale = serde_json::from_value(body).unwrap();
    assert_eq!(s.spec.unwrap().replicas, Some(3));
    assert_eq!(s.status.unwrap().selector.as_deref(), Some("app=cart"));
    let (_, body) = send("GET", "/api/v1/nodes/n1", "", None).await;
    let _: Node = serde_json::from_value(body).unwrap();
    let (_, body) = send(
        "GET",
        "/apis/policy/v1/namespaces/shop/poddisruptionbudgets/cart",
        "",
        None,
    )
    .await;
    let b: PodDisruptionBudget = serde_json::from_value(body).unwrap();
    let st = b.status.unwrap();
    assert_eq!(
        (
            st.current_healthy,
            st.desired_healthy,
            st.disruptions_allowed
        ),
        (3, 2, 1)
    );

    let (_, body) = send(
        "GET",
        "/apis/apps/v1/namespaces/shop/statefulsets/db",
        "",
        None,
    )
    .await;
    let _: StatefulSet = serde_json::from_value(body).unwrap();
    let (_, body) = send("GET", "/apis/apps/v1/daemonsets", "", None).await;
    let ds: k8s_openapi::List<DaemonSet> = serde_json::from_value(body).unwrap();
    assert_eq!(ds.items.len(), 1);
    let (_, body) = send("GET", "/api/v1/nodes?limit=1", "", None).await;
    let nodes: k8s_openapi::List<Node> = serde_json::from_value(body).unwrap();
    assert_eq!(nodes.items.len(), 1);
    assert!(nodes.metadata.continue_.is_some());
    let (_, body) = send("GET", "/apis/policy/v1/poddisruptionbudgets", "", None).await;
    let _: k8s_openapi::List<PodDisruptionBudget> = serde_json::from_value(body).unwrap();
    let (_, body) = send("GET", "/api/v1/namespaces/shop/events", "", None).await;
    let _: k8s_openapi::List<Event> = serde_json::from_value(body).unwrap();
    let (code, body) = send(
        "DELETE",
        "/api/v1/namespaces/shop/pods/cart-3?dryRun=All",
        "application/json",
        None,
    )
    .await;
    let deleted: Pod = serde_json::from_value(body).unwrap();
    assert_eq!(
        (code, deleted.metadata.name.as_deref()),
        (200, Some("cart-3"))
    );

    // Errors are Status objects with the real codes, reasons and messages.
    let (code, body) = send("GET", "/api/v1/namespaces/shop/pods/nope", "", None).await;
    let s: Status = serde_json::from_value(body).unwrap();
    assert_eq!(
        (code, s.code, s.reason.as_deref()),
        (404, Some(404), Some("NotFound"))
    );
    assert_eq!(s.message.as_deref(), Some("pods \"nope\" not found"));
    let (code, body) = send(
        "GET",
        "/apis/apps/v1/namespaces/shop/deployments/nope",
        "",
        None,
    )
    .await;
    assert_eq!(code, 404);
    assert_eq!(body["message"], "deployments.apps \"nope\" not found");
    assert_eq!(body["details"]["group"], "apps");
    let (code, body) = send(
        "PUT",
        "/apis/apps/v1/namespaces/shop/deployments/cart/scale",
        "application/json",
        Some(json!({"kind": "Scale", "apiVersion": "autoscaling/v1",
                    "metadata": {"name": "cart", "resourceVersion": "1"}, "spec": {"replicas": 4}})),
    )
    .await;
    let s: Status = serde_json::from_value(body.clone()).unwrap();
    assert_eq!(
        (code, s.reason.as_deref()),
        (409, Some("Conflict")),
        "{body}"
    );
    assert!(s.message.unwrap().contains("the object has been modified"));
    let (code, body) = send(
        "PATCH",
        "/apis/apps/v1/namespaces/shop/deployments/cart",
        "application/merge-patch+json",
        Some(json!({"spec": {"replicas": -1}})),
    )
    .await;
    let s: Status = serde_json::from_value(body.clone()).unwrap();
    assert_eq!((code, s.reason.as_deref()), (422, Some("Invalid")));
    assert_eq!(
        s.message.as_deref(),
        Some("Deployment.apps \"cart\" is invalid: spec.replicas: Invalid value: -1: must be greater than or equal to 0")
    );
    let (code, _) = send(
        "PATCH",
        "/api/v1/nodes/n1",
        "application/json-patch+json",
        Some(json!([{"op": "add", "path": "/spec/unschedulable", "value": true}])),
    )
    .await;
    assert_eq!(code, 415);

    // The eviction subresource: 201 Success, then 429 from the budget with its cause.
    let eviction = |name: &str| json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name, "namespace": "shop"}});
    let (code, body) = send(
        "POST",
        "/api/v1/namespaces/shop/pods/cart-1/eviction",
        "application/json",
        Some(eviction("cart-1")),
    )
    .await;
    let s: Status = serde_json::from_value(body).unwrap();
    assert_eq!((code, s.status.as_deref()), (201, Some("Success")));
    let (code, body) = send(
        "POST",
        "/api/v1/namespaces/shop/pods/cart-2/eviction",
        "application/json",
        Some(eviction("cart-2")),
    )
    .await;
    let s: Status = serde_json::from_value(body).unwrap();
    assert_eq!((code, s.reason.as_deref()), (429, Some("TooManyRequests")));
    assert_eq!(
        s.message.as_deref(),
        Some("Cannot evict pod as it would violate the pod's disruption budget.")
    );
    let cause = &s.details.unwrap().causes.unwrap()[0];
    assert_eq!(cause.reason.as_deref(), Some("DisruptionBudget"));
    assert_eq!(
        cause.message.as_deref(),
        Some("The disruption budget cart needs 2 healthy pods and has 2 currently")
    );

    // 403 through a deny rule, with RBAC's wording.
    fake.deny("patch", "nodes");
    let (code, body) = send(
        "PATCH",
        "/api/v1/nodes/n1",
        "application/strategic-merge-patch+json",
        Some(json!({"spec": {"unschedulable": true}})),
    )
    .await;
    let s: Status = serde_json::from_value(body).unwrap();
    assert_eq!((code, s.reason.as_deref()), (403, Some("Forbidden")));
    assert_eq!(
        s.message.as_deref(),
        Some("nodes \"n1\" is forbidden: User \"system:serviceaccount:homeostat:homeostat\" cannot patch resource \"nodes\" in API group \"\" at the cluster scope")
    );
    let (code, _) = send("GET", "/api/v1/namespaces/shop/secrets", "", None).await;
    assert_eq!(code, 404, "kinds the fake does not serve are not there");
}

#[tokio::test]
async fn the_fake_selects_pages_versions_and_dry_runs_as_the_api_does() {
    let fake = shop();
    fake.add(labelled(
        pod("shop", "web-1", "n2", &[("app", "web")]),
        "tier",
        "front",
    ));
    let get = |p: String| {
        let fake = fake.clone();
        async move { fake_kube::send(&fake, "GET", &p, "", None).await }
    };
    let names = |b: &Value| -> Vec<String> {
        b["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, b) = get("/api/v1/pods?labelSelector=app%20in%20(web%2Cdb)".into()).await;
    assert_eq!(names(&b), ["web-1"]);
    let (_, b) = get("/api/v1/pods?labelSelector=app%3Dcart%2C!tier".into()).await;
    assert_eq!(names(&b), ["cart-1", "cart-2", "cart-3"]);
    assert!(b["items"][0]["kind"].is_null(), "list items carry no kind");
    let (_, b) = get("/api/v1/pods?fieldSelector=spec.nodeName%3Dn2".into()).await;
    assert_eq!(names(&b), ["cart-3", "web-1"]);
    let (code, b) = get("/api/v1/pods?fieldSelector=status.phase%3DRunning".into()).await;
    assert_eq!(
        (code, b["message"].as_str()),
        (400, Some("field label not supported: status.phase"))
    );
    let (_, b) = get("/api/v1/namespaces/shop/pods?limit=3".into()).await;
    assert_eq!(names(&b), ["cart-1", "cart-2", "cart-3"]);
    assert_eq!(b["metadata"]["remainingItemCount"], 1);
    let token = b["metadata"]["continue"].as_str().unwrap().to_string();
    let (_, b) = get(format!(
        "/api/v1/namespaces/shop/pods?limit=3&continue={token}"
    ))
    .await;
    assert_eq!(names(&b), ["web-1"]);
    assert!(b["metadata"]["continue"].is_null());

    // A dry run is validated and answered, and changes nothing, resourceVersion included.
    let before = fake.object("nodes", "", "n1").unwrap();
    let patch = Some(json!({"spec": {"unschedulable": true}}));
    let (code, b) = fake_kube::send(
        &fake,
        "PATCH",
        "/api/v1/nodes/n1?dryRun=All",
        "application/strategic-merge-patch+json",
        patch.clone(),
    )
    .await;
    assert_eq!((code, &b["spec"]["unschedulable"]), (200, &json!(true)));
    assert_eq!(fake.object("nodes", "", "n1").unwrap(), before);
    assert_eq!((fake.writes(), fake.dry_runs()), (0, 1));
    let (code, _) = fake_kube::send(
        &fake,
        "PATCH",
        "/api/v1/nodes/n1?dryRun=Some",
        "application/strategic-merge-patch+json",
        patch.clone(),
    )
    .await;
    assert_eq!(code, 400);
    // Every persisted change bumps the resourceVersion; a no-op patch does not.
    let rv = |o: Value| {
        o["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    let (_, b) = fake_kube::send(
        &fake,
        "PATCH",
        "/api/v1/nodes/n1",
        "application/strategic-merge-patch+json",
        patch.clone(),
    )
    .await;
    assert!(rv(b.clone()) > rv(before.clone()));
    let (_, again) = fake_kube::send(
        &fake,
        "PATCH",
        "/api/v1/nodes/n1",
        "application/strategic-merge-patch+json",
        patch,
    )
    .await;
    assert_eq!(rv(again), rv(b));
    assert_eq!(fake.writes(), 1);
    // Strategic merge merges named list items; a merge patch replaces lists.
    let (_, d) = fake_kube::send(
        &fake, "PATCH", "/apis/apps/v1/namespaces/shop/deployments/cart", "application/strategic-merge-patch+json",
        Some(json!({"spec": {"template": {"spec": {"containers": [{"name": "sidecar", "image": "s:1"}]}}}})),
    ).await;
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        d["metadata"]["generation"], 2,
        "a spec change is a new generation"
    );
}

// ---- reads -----------------------------------------------------------------------

#[tokio::test]
async fn reads_return_the_apis_objects_none_on_404_and_the_apis_errors() {
    let fake = shop();
    let k = kube(&fake);
    let p = k.get("pods", "shop", "cart-1").await.unwrap().unwrap();
    assert_eq!(p["kind"], "Pod");
    assert_eq!(p["spec"]["nodeName"], "n1");
    assert_eq!(k.get("pods", "shop", "gone").await.unwrap(), None);
    assert!(k.get("nodes", "", "n2").await.unwrap().is_some());
    let pods = k.list("pods", "", "app=cart,tier!=db").await.unwrap();
    assert_eq!(pods.len(), 3);
    // The selector went to the API server, encoded.
    assert!(fake.received().iter().any(|r| r
        .path
        .starts_with("/api/v1/pods?labelSelector=app%3Dcart%2Ctier%21%3Ddb&limit=")));
    assert_eq!(k.list("deployments", "shop", "").await.unwrap().len(), 1);
    assert!(k
        .get("pods", "shop", "../../nodes/n1")
        .await
        .unwrap_err()
        .contains("not a Kubernetes object name"));
    fake.deny("list", "pods");
    let e = k.list("pods", "shop", "").await.unwrap_err();
    assert!(
        e.contains("403 Forbidden: pods is forbidden: User \"system:serviceaccount:homeostat:homeostat\" cannot list resource \"pods\""),
        "{e}"
    );
    let e = k.list("pods", "shop", "app in (").await.unwrap_err();
    assert!(e.contains("403"), "the deny rule answers first: {e}");
}

#[tokio::test]
async fn lists_follow_continue_tokens_and_refuse_more_than_the_cap() {
    let fake = FakeKube::new();
    for i in 0..520 {
        fake.add(pod("shop", &format!("p{i:03}"), "n1", &[("app", "x")]));
    }
    let capped = |max| {
        Kube::from_client(
            fake.client(),
            Settings {
                max_list_items: max,
                ..settings()
            },
        )
    };
    // Pages of at most 500 (one more than the cap below that): 520 objects take two.
    let all = capped(600).list("pods", "shop", "").await.unwrap();
    assert_eq!(all.len(), 520);
    let names: std::collections::BTreeSet<&str> = all
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 520, "no object twice, none lost");
    let pages: Vec<String> = fake.received().iter().map(|r| r.path.clone()).collect();
    assert_eq!(pages.len(), 2, "{pages:?}");
    assert!(pages[0].ends_with("?limit=500"));
    assert!(pages[1].contains("limit=500&continue="));
    // A cap below the count is an error, not a silently short answer.
    let e = capped(519).list("pods", "shop", "").await.unwrap_err();
    assert!(e.contains("more than 519 objects"), "{e}");
    let e = capped(10).list("pods", "", "app=x").await.unwrap_err();
    assert!(e.contains("more than 10 objects"), "{e}");
    let last = fake.received().last().unwrap().path.clone();
    assert_eq!(last, "/api/v1/pods?labelSelector=app%3Dx&limit=11");
    assert_eq!(
        capped(10).list("pods", "shop", "app=y").await.unwrap(),
        Vec::<Value>::new()
    );
}

#[tokio::test]
async fn a_read_without_an_answer_within_the_timeout_is_an_error() {
    let fake = shop();
    fake.set_delay(Duration::from_secs(3));
    let k = Kube::from_client(
        fake.client(),
        Settings {
            timeout: Duration::from_millis(300),
            ..settings()
        },
    );
    let started = Instant::now();
    let e = k.get("nodes", "", "n1").await.unwrap_err();
    assert!(e.contains("no answer within"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(1));
}

// ---- actions ---------------------------------------------------------------------

#[tokio::test]
async fn rollout_restart_patches_the_template_annotation_of_each_workload_kind() {
    let fake = shop();
    let k = kube(&fake);
    for (key, plural, name) in [
        ("deployment", "deployments", "cart"),
        ("statefulset", "statefulsets", "db"),
        ("daemonset", "daemonsets", "agent"),
    ] {
        let a = action(
            "k8s.rollout_restart",
            &[("namespace", "shop"), (key, name)],
            json!({}),
        );
        let (prepared, report) = act(&k, &a, false, 5 * SEC).await;
        assert_eq!(report.outcome, Outcome::Done, "{}", report.detail);
        let req = &prepared.unwrap().requests[0];
        assert_eq!(req.method, "PATCH");
        assert_eq!(
            req.path,
            format!("/apis/apps/v1/namespaces/shop/{plural}/{name}")
        );
        assert_eq!(
            req.headers["Content-Type"],
            "application/strategic-merge-patch+json"
        );
        let at = req.body.as_ref().unwrap()["spec"]["template"]["metadata"]["annotations"]
            ["kubectl.kubernetes.io/restartedAt"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            at.ends_with('Z') && at.len() == 20,
            "RFC 3339 seconds, as kubectl: {at}"
        );
        let obj = fake.object(plural, "shop", name).unwrap();
        assert_eq!(
            obj["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"],
            at.as_str()
        );
        assert_eq!(report.detail["requests"][0]["verified"], true);
        assert_eq!(report.detail["requests"][0]["code"], 200);
    }
    assert_eq!(fake.writes(), 3);
}

#[tokio::test]
async fn rollout_restart_refuses_opted_out_and_paused_workloads_and_fails_on_404_and_422() {
    let fake = FakeKube::new();
    fake.add(labelled(
        workload("Deployment", "shop", "keep", 2),
        "homeostat.io/ignore",
        "true",
    ));
    let mut paused = workload("Deployment", "shop", "paused", 2);
    paused["spec"]["paused"] = json!(true);
    fake.add(paused);
    let mut broken = workload("Deployment", "shop", "broken", 2);
    broken["metadata"]["labels"]["replicas"] = json!(2);
    fake.add(broken);
    let k = kube(&fake);
    let restart = |name: &str| {
        action(
            "k8s.rollout_restart",
            &[("namespace", "shop"), ("deployment", name)],
            json!({}),
        )
    };

    let (_, r) = act(&k, &restart("keep"), false, 5 * SEC).await;
    assert_eq!(r.outcome, Outcome::Refused);
    assert_eq!(r.detail["rule"], "opt-out");
    assert!(r.detail["message"]
        .as_str()
        .unwrap()
        .contains("homeostat.io/ignore=true"));
    let (_, r) = act(&k, &restart("paused"), false, 5 * SEC).await;
    assert_eq!(
        (r.outcome, r.detail["rule"].as_str()),
        (Outcome::Refused, Some("paused"))
    );
    let (_, r) = act(&k, &restart("missing"), false, 5 * SEC).await;
    assert_eq!(r.outcome, Outcome::Failed);
    assert_eq!(r.detail["code"], 404);
    assert_eq!(r.detail["reason"], "NotFound");
    assert_eq!(
        r.detail["message"],
        "deployments.apps \"missing\" not found"
    );
    // The API validates the whole object: a label that is not a string is a 422.
    let (_, r) = act(&k, &restart("broken"), false, 5 * SEC).await;
    assert_eq!(r.outcome, Outcome::Failed, "{}", r.detail);
    let sent = &r.detail["requests"][0];
    assert_eq!(
        (sent["code"].as_u64(), sent["reason"].as_str()),
        (Some(422), Some("Invalid"))
    );
    assert!(sent["message"]
        .as_str()
        .unwrap()
        .starts_with("Deployment.apps \"broken\" is invalid: metadata.labels"));
    assert_eq!(fake.writes(), 0);
}

#[tokio::test]
async fn observe_reads_the_state_a_lost_outcome_is_reconciled_from() {
    let fake = shop();
    fake.add(labelled(
        workload("Deployment", "shop", "kept", 1),
        "homeostat.io/ignore",
        "true",
    ));
    let k = kube(&fake);
    let restart = action(
        "k8s.rollout_restart",
        &[("namespace", "shop"), ("deployment", "cart")],
        json!({}),
    );
    assert!(k.observe(&restart).await.unwrap()["restartedAt"].is_null());
    let (p, _) = act(&k, &restart, false, 5 * SEC).await;
    let sent = p.unwrap().requests[0].body.as_ref().unwrap()["spec"]["template"]["metadata"]
        ["annotations"]["kubectl.kubernetes.io/restartedAt"]
        .clone();
    assert_eq!(k.observe(&restart).await.unwrap()["restartedAt"], sent);
    // Observing is not acting: an opted-out target can still be read.
    let kept = action(
        "k8s.scale",
        &[("namespace", "shop"), ("deployment", "kept")],
        json!({"replicas": 2}),
    );
    assert_eq!(k.observe(&kept).await.unwrap()["replicas"], 1);
    let gone = action("k8s.cordon", &[("node", "n9")], json!({}));
    assert!(k
        .observe(&gone)
        .await
        .unwrap_err()
        .contains("nodes \"n9\" not found"));
}

#[tokio::test]
async fn an_admission_policys_422_is_a_refusal() {
    let fake = shop();
    fake.fail_next_write(
        422,
        "Invalid",
        "admission webhook \"guard.example.com\" denied the request: restarts are frozen",
    );
    let (_, r) = act(
        &kube(&fake),
        &action(
            "k8s.rollout_restart",
            &[("namespace", "shop"), ("deployment", "cart")],
            json!({}),
        ),
        false,
        5 * SEC,
    )
    .await;
    assert_eq!(
        (r.outcome, r.detail["rule"].as_str()),
        (Outcome::Refused, Some("policy")),
        "{}",
        r.detail
    );
}

#[tokio::test]
async fn delete_pod_is_done_then_skipped_and_only_deletes_the_pod_it_read() {
    let fake = shop();
    let k = kube(&fake);
    let a = action(
        "k8s.delete_pod",
        &[("namespace", "shop"), ("pod", "cart-1")],
        json!({}),
    );
    let (prepared, r) = act(&k, &a, false, 5 * SEC).await;
    assert_eq!(r.outcome, Outcome::Done, "{}", r.detail);
    let req = &prepared.unwrap().requests[0];
    assert_eq!(
        (req.method.as_str(), req.path.as_str()),
        ("DELETE", "/api/v1/namespaces/shop/pods/cart-1")
    );
    assert!(req.body.as_ref().unwrap()["preconditions"]["uid"].is_string());
    assert!(fake.object("pods", "shop", "cart-1").is_none());
    let (prepared, r) = act(&k, &a, false, 5 * SEC).await;
    assert_eq!(r.outcome, Outcome::Skipped);
    assert_eq!(prepared.unwrap().observed["exists"], false);
    // Replaced between prepare and execute (same name, new uid): left alone, and the
    // pod that was read is gone, which is what was wanted.
    fake.add(pod("shop", "cart-1", "n1", &[("app", "cart")]));
    let prepared = k.prepare(&a).await.unwrap();
    let replaced = fake.object("pods", "shop", "cart-1").unwrap();
    fake_kube::send(
        &fake,
        "DELETE",
        "/api/v1/namespaces/shop/pods/cart-1",
        "application/json",
        None,
    )
    .await;
    fake.add(pod("shop", "cart-1", "n1", &[("app", "cart")]));
    let r = k
        .execute(&a, prepared, false, Instant::now() + 5 * SEC)
        .await;
    assert_eq!(r.outcome, Outcome::Done, "{}", r.detail);
    assert_eq!(r.detail["requests"][0]["result"], "already_applied");
    let now = fake.object("pods", "shop", "cart-1").unwrap();
    assert_ne!(now["metadata"]["uid"], replaced["metadata"]["uid"]);
}

#[tokio::test]
async fn eviction_is_refused_by_a_budget_within_the_deadline_and_goes_through_once_it_allows() {
    let fake = shop();
    fake.add(pdb("shop", "cart", "cart", json!(3)));
    let k = kube(&fake);
    let a = action(
        "k8s.evict_pod",
        &[("namespace", "shop"), ("pod", "cart-1")],
        json!({}),
    );
    let (prepared, r) = act(&k, &a, false, SEC).await;
    let req = &prepared.unwrap().requests[0];
    assert_eq!(
        (req.method.as_str(), req.path.as_str()),
        ("POST", "/api/v1/namespaces/shop/pods/cart-1/eviction")
    );
    assert_eq!(req.body.as_ref().unwrap()["kind"], "Eviction");
    assert_eq!(r.outcome, Outcome::Refused, "{}", r.detail);
    assert_eq!(r.detail["rule"], "disruption-budget");
    let sent = &r.detail["requests"][0];
    assert_eq!(sent["code"], 429);
    assert_eq!(
        sent["message"],
        "Cannot evict pod as it would violate the pod's disruption budget."
    );
    assert_eq!(
        sent["causes"][0]["message"],
        "The disruption budget cart needs 3 healthy pods and has 3 currently"
    );
    assert!(fake.object("pods", "shop", "cart-1").is_some());

    // Within a longer deadline it is retried, and a fourth Ready pod lets it go.
    let f = fake.clone();
    tokio::spawn(async move {
        tokio::time::sleep(SEC).await;
        f.add(pod("shop", "cart-4", "n2", &[("app", "cart")]));
    });
    let started = std::time::Instant::now();
    let (_, r) = act(&k, &a, false, 20 * SEC).await;
    assert_eq!(r.outcome, Outcome::Done, "{}", r.detail);
    assert_eq!(r.detail["requests"][0]["attempts"], 2);
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "kubectl's 5 s between budget retries"
    );
    assert!(fake.object("pods", "shop", "cart-1").is_none());
}

#[tokio::test]
async fn forbidden_evictions_are_refused_with_rbacs_message() {
    let fake = shop();
    fake.deny("create", "pods/eviction");
    let (_, r) = act(
        &kube(&fake),
        &action(
            "k8s.evict_pod",
            &[("namespace", "shop"), ("pod", "cart-1")],
            json!({}),
        ),
        false,
        5 * SEC,
    )
    .await;
    assert_eq!(
        (r.outcome, r.detail["rule"].as_str()),
        (Outcome::Refused, Some("forbidden"))
    );
    assert!(r.detail["requests"][0]["message"]
        .as_str()
        .unwrap()
        .contains(
            "cannot create resource \"pods/eviction\" in API group \"\" in the namespace \"shop\""
        ));
}

#[tokio::test]
async fn scale_goes_through_the_scale_subresource_within_bounds() {
    let fake = shop();
    let k = kube(&fake);
    let scale = |params: Value| {
        action(
            "k8s.scale",
            &[("namespace", "shop"), ("deployment", "cart")],
            params,
        )
    };
    let (prepared, r) = act(&k, &scale(json!({"replicas": 5})), false, 5 * SEC).await;
    assert_eq!(r.outcome, Outcome::Done, "{}", r.detail);
    let req = &prepared.unwrap().requests[0];
    assert_eq!(
        (req.method.as_str(), req.path.as_str()),
        (
            "PUT",
            "/apis/apps/v1/namespaces/shop/deployments/cart/scale"
        )
    );
    assert_eq!(req.body.as_ref().unwrap()["spec"]["replicas"], 5);
    assert!(req.body.as_ref().unwrap()["metadata"]["resourceVersion"].is_string());
    assert_eq!(
        fake.object("deployments", "shop", "cart").unwrap()["spec"]["replicas"],
        5
    );
    let (_, r) = act(&k, &scale(json!({"delta": -2})), false, 5 * SEC).await;
    assert_eq!(r.outcome, Outcome::Done);
    assert_eq!(
        fake.object("deployments", "shop", "cart").unwrap()["spec"]["replicas"],
        3
    );
    let (_, r) = act(&k, &scale(json!({"replicas": 3})), false, 5 * SEC).await;
    assert_eq!(r.outcome, Outcome::Skipped);
    let (_, r) = act(&k, &scale(json!({"delta": 2, "max": 4})), false, 5 * SEC).await;
    assert_eq!(
        (r.outcome, r.detail["rule"].as_str()),
        (Outcome::Refused, Some("bounds"))
    );
    assert_eq!(r.detail["observed"]["wanted"], 5);
    let (_, r) = act(&k, &scale(json!({"delta": -3, "min": 1})), false, 5 * SEC).await;
    assert_eq!(r.outcome, Outcome::Refused);
    let sts = action(
        "k8s.scale",
        &[("namespace", "shop"), ("statefulset", "db")],
        json!({"replicas": 1}),
    );
    assert_eq!(act(&k, &sts, false, 5 * SEC).await.1.outcome, Outcome::Done);
    assert_eq!(fake.writes(), 3);

    // Changed between prepare and execute: the API's 409, not a count from a stale read.
    let prepared = k.prepare(&scale(json!({"delta": 1}))).await.unwrap();
    fake_kube::send(
        &fake,
        "PATCH",
        "/apis/apps/v1/namespaces/shop/deployments/cart/scale",
        "application/merge-patch+json",
        Some(json!({"spec": {"replicas": 7}})),
    )
    .await;
    let r = k
        .execute(
            &scale(json!({"delta": 1})),
            prepared,
            false,
            Instant::now() + 5 * SEC,
        )
        .await;
    assert_eq!(r.outcome, Outcome::Failed);
    assert_eq!(r.detail["requests"][0]["reason"], "Conflict");
    assert_eq!(
        fake.object("deployments", "shop", "cart").unwrap()["spec"]["replicas"],
        7
    );

    // A write that left the count alone (a restart's annotation) is not a reason to
    // fail: the same scale goes again with the new resourceVersion.
    let prepared = k.prepare(&scale(json!({"replicas": 8}))).await.unwrap();
    let restart = action(
        "k8s.rollout_restart",
        &[("namespace", "shop"), ("deployment", "cart")],
        json!({}),
    );
    assert_eq!(
        act(&k, &restart, false, 5 * SEC).await.1.outcome,
        Outcome::Done
    );
    let r = k
        .execute(
            &scale(json!({"replicas": 8})),
            prepared,
            false,
            Instant::now() + 5 * SEC,
        )
        .await;
    assert_eq!(r.outcome, Outcome::Done, "{}", r.detail);
    assert!(r.detail["requests"][0]["resent_with_resource_version"].is_string());
    assert_eq!(
        fake.object("deployments", "shop", "cart").unwrap()["spec"]["replicas"],
        8
    );
}

#[tokio::test]
async fn cordon_and_uncordon_patch_unschedulable_and_skip_when_already_so() {
    let fake = shop();
    let k = kube(&fake);
    let cordon = action("k8s.cordon", &[("node", "n1")], json!({}));
    let uncordon = action("k8s.uncordon", &[("node", "n1")], json!({}));
    let (p, r) = act(&k, &cordon, false, 5 * SEC).await;
    assert_eq!(r.outcome, Outcome::Done);
    assert_eq!(
        p.unwrap().requests[0].body,
        Some(json!({"spec": {"unschedulable": true}}))
    );
    assert_eq!(
        fake.object("nodes", "", "n1").unwrap()["spec"]["unschedulable"],
        true
    );
    assert_eq!(
        act(&k, &cordon, false, 5 * SEC).await.1.outcome,
        Outcome::Skipped
    );
    let (p, r) = act(&k, &uncordon, false, 5 * SEC).await;
    assert_eq!(r.outcome, Outcome::Done);
    assert_eq!(
        p.unwrap().requests[0].body,
        Some(json!({"spec": {"unschedulable": null}}))
    );
    assert!(fake.object("nodes", "", "n1").unwrap()["spec"]["unschedulable"].is_null());
    assert_eq!(
        act(&k, &uncordon, false, 5 * SEC).await.1.outcome,
        Outcome::Skipped
    );
    assert_eq!(fake.writes(), 2);
    let observed = k.observe(&cordon).await.unwrap();
    assert_eq!(observed["unschedulable"], false);
    let (_, r) = act(
        &k,
        &action("k8s.cordon", &[("node", "nope")], json!({})),
        false,
        5 * SEC,
    )
    .await;
    assert_eq!(
        (r.outcome, r.detail["code"].as_u64()),
        (Outcome::Failed, Some(404))
    );
}

fn drain_fixture() -> FakeKube {
    let fake = shop();
    fake.add(owned_by(
        pod("shop", "agent-x", "n1", &[("app", "agent")]),
        "DaemonSet",
        "agent",
    ));
    fake.add(annotated(
        pod("kube-system", "etcd-n1", "n1", &[]),
        "kubernetes.io/config.mirror",
        "abc",
    ));
    fake.add(pod("web", "web-1", "n1", &[("app", "web")]));
    fake
}

#[tokio::test]
async fn drain_cordons_and_evicts_all_but_daemonset_and_mirror_pods_with_a_result_per_pod() {
    let fake = drain_fixture();
    let k = kube(&fake);
    let a = action("k8s.drain", &[("node", "n1")], json!({}));
    let (p, r) = act(&k, &a, false, 5 * SEC).await;
    assert_eq!(r.outcome, Outcome::Done, "{}", r.detail);
    let p = p.unwrap();
    let paths: Vec<&str> = p.requests.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/api/v1/nodes/n1",
            "/api/v1/namespaces/shop/pods/cart-1/eviction",
            "/api/v1/namespaces/shop/pods/cart-2/eviction",
            "/api/v1/namespaces/web/pods/web-1/eviction",
        ]
    );
    let kept: Vec<&str> = p.observed["kept"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["why"].as_str().unwrap())
        .collect();
    assert_eq!(kept, ["mirror", "daemonset"]);
    let pods = r.detail["pods"].as_array().unwrap();
    assert_eq!(pods.len(), 3);
    assert!(pods.iter().all(|p| p["result"] == "evicted"), "{pods:?}");
    assert!(fake.object("pods", "shop", "agent-x").is_some());
    assert!(fake.object("pods", "kube-system", "etcd-n1").is_some());
    assert!(
        fake.object("pods", "shop", "cart-3").is_some(),
        "on another node"
    );
    assert!(fake.object("pods", "shop", "cart-1").is_none());
    assert_eq!(
        fake.object("nodes", "", "n1").unwrap()["spec"]["unschedulable"],
        true
    );
    // Drained: nothing left to do.
    assert_eq!(
        act(&k, &a, false, 5 * SEC).await.1.outcome,
        Outcome::Skipped
    );
}

#[tokio::test]
async fn drain_honours_budgets_and_reports_which_pods_stayed() {
    let fake = drain_fixture();
    // Three cart pods, at least two available: one of the two on n1 may go.
    fake.add(pdb("shop", "cart", "cart", json!(2)));
    let (_, r) = act(
        &kube(&fake),
        &action("k8s.drain", &[("node", "n1")], json!({})),
        false,
        2 * SEC,
    )
    .await;
    assert_eq!(r.outcome, Outcome::Refused, "{}", r.detail);
    let results: Vec<(String, String)> = r.detail["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().into(),
                p["result"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        results,
        [
            ("cart-1".into(), "evicted".into()),
            ("cart-2".into(), "refused".into()),
            ("web-1".into(), "evicted".into())
        ]
    );
    assert!(fake.object("pods", "shop", "cart-2").is_some());
}

#[tokio::test]
async fn drain_times_out_while_evicted_pods_are_still_terminating() {
    let fake = drain_fixture();
    fake.set_termination_grace(Duration::from_secs(30));
    let (_, r) = act(
        &kube(&fake),
        &action("k8s.drain", &[("node", "n1")], json!({})),
        false,
        SEC,
    )
    .await;
    assert_eq!(r.outcome, Outcome::TimedOut, "{}", r.detail);
    assert!(r.detail["pods"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["result"] == "terminating"));
    // One pod's eviction is done once it is terminating.
    let fake = shop();
    fake.set_termination_grace(Duration::from_secs(30));
    let (_, r) = act(
        &kube(&fake),
        &action(
            "k8s.evict_pod",
            &[("namespace", "shop"), ("pod", "cart-1")],
            json!({}),
        ),
        false,
        SEC,
    )
    .await;
    assert_eq!(r.outcome, Outcome::Done, "{}", r.detail);
}

#[tokio::test]
async fn drain_touches_nothing_when_a_pod_on_the_node_opted_out() {
    let fake = drain_fixture();
    fake.add(annotated(
        pod("shop", "precious", "n1", &[]),
        "homeostat.io/ignore",
        "true",
    ));
    let (_, r) = act(
        &kube(&fake),
        &action("k8s.drain", &[("node", "n1")], json!({})),
        false,
        5 * SEC,
    )
    .await;
    assert_eq!(
        (r.outcome, r.detail["rule"].as_str()),
        (Outcome::Refused, Some("opt-out"))
    );
    assert!(r.detail["message"]
        .as_str()
        .unwrap()
        .contains("shop/precious"));
    assert!(fake.received_writes().is_empty());
}

#[tokio::test]
async fn a_dry_run_is_the_api_servers_and_persists_nothing() {
    let fake = drain_fixture();
    fake.add(pdb("shop", "cart", "cart", json!(3)));
    let k = kube(&fake);
    let before: Vec<Value> = ["cart-1", "cart-2"]
        .iter()
        .map(|p| fake.object("pods", "shop", p).unwrap())
        .collect();
    let (_, r) = act(
        &k,
        &action(
            "k8s.scale",
            &[("namespace", "shop"), ("deployment", "cart")],
            json!({"replicas": 6}),
        ),
        true,
        5 * SEC,
    )
    .await;
    assert_eq!(r.outcome, Outcome::DryRun, "{}", r.detail);
    assert_eq!(r.detail["dry_run"], true);
    let sent = &r.detail["requests"][0];
    assert_eq!(
        sent["path"],
        "/apis/apps/v1/namespaces/shop/deployments/cart/scale?dryRun=All"
    );
    assert_eq!(sent["answer"]["kind"], "Scale");
    assert_eq!(
        sent["answer"]["changed"], 6,
        "what the server would have made of it"
    );
    let (_, r) = act(
        &k,
        &action(
            "k8s.rollout_restart",
            &[("namespace", "shop"), ("deployment", "cart")],
            json!({}),
        ),
        true,
        5 * SEC,
    )
    .await;
    assert_eq!(r.outcome, Outcome::DryRun);
    // A drain's dry run: the cordon validated, each eviction asked of the budget.
    let (_, r) = act(
        &k,
        &action("k8s.drain", &[("node", "n1")], json!({})),
        true,
        5 * SEC,
    )
    .await;
    assert_eq!(
        r.outcome,
        Outcome::Refused,
        "the server said a budget would refuse: {}",
        r.detail
    );
    let results: Vec<&str> = r.detail["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["result"].as_str().unwrap())
        .collect();
    assert_eq!(results, ["refused", "refused", "dry_run"]);
    assert_eq!(fake.writes(), 0);
    assert!(fake.received_writes().iter().all(|w| w.is_dry_run()));
    assert_eq!(fake.received_writes().len(), 6);
    assert!(fake.object("nodes", "", "n1").unwrap()["spec"]["unschedulable"].is_null());
    let after: Vec<Value> = ["cart-1", "cart-2"]
        .iter()
        .map(|p| fake.object("pods", "shop", p).unwrap())
        .collect();
    assert_eq!(before, after);
}

#[tokio::test]
async fn no_answer_before_the_deadline_is_timed_out() {
    let fake = shop();
    fake.set_write_delay(Duration::from_secs(3));
    let k = Kube::from_client(
        fake.client(),
        Settings {
            timeout: Duration::from_secs(10),
            ..settings()
        },
    );
    let started = Instant::now();
    let (_, r) = act(
        &k,
        &action("k8s.cordon", &[("node", "n1")], json!({})),
        false,
        Duration::from_millis(500),
    )
    .await;
    assert_eq!(r.outcome, Outcome::TimedOut, "{}", r.detail);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "bounded by the deadline"
    );
    assert_eq!(r.detail["requests"][0]["result"], "no_answer");
}

#[tokio::test]
async fn throttling_is_retried_after_the_pause_the_api_asks_for() {
    let fake = shop();
    fake.throttle_next_write(1);
    let started = Instant::now();
    let (_, r) = act(
        &kube(&fake),
        &action("k8s.cordon", &[("node", "n1")], json!({})),
        false,
        5 * SEC,
    )
    .await;
    assert_eq!(r.outcome, Outcome::Done, "{}", r.detail);
    assert_eq!(r.detail["requests"][0]["attempts"], 2);
    assert!(started.elapsed() >= SEC, "waited as asked");
    // Within a deadline shorter than the pause, it is not sent again.
    fake.throttle_next_write(2);
    let (_, r) = act(
        &kube(&fake),
        &action("k8s.uncordon", &[("node", "n1")], json!({})),
        false,
        SEC,
    )
    .await;
    assert_eq!(r.outcome, Outcome::TimedOut, "{}", r.detail);
    assert_eq!(r.detail["requests"][0]["attempts"], 1);
    assert!(r.detail["message"]
        .as_str()
        .unwrap()
        .contains("429 TooManyRequests"));
}

#[tokio::test]
async fn a_held_write_is_received_but_neither_applied_nor_answered_until_released() {
    let fake = shop();
    let k = std::sync::Arc::new(kube(&fake));
    let cordon = action("k8s.cordon", &[("node", "n1")], json!({}));
    let prepared = k.prepare(&cordon).await.unwrap();
    fake.hold_writes();
    let run = {
        let (k, cordon) = (k.clone(), cordon.clone());
        tokio::spawn(async move {
            k.execute(&cordon, prepared, false, Instant::now() + 10 * SEC)
                .await
        })
    };
    while fake.received_writes().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!run.is_finished());
    assert_eq!(fake.writes(), 0);
    assert!(fake.object("nodes", "", "n1").unwrap()["spec"]["unschedulable"].is_null());
    fake.release_writes();
    assert_eq!(run.await.unwrap().outcome, Outcome::Done);
    assert_eq!(fake.writes(), 1);
}

#[tokio::test]
async fn transient_failures_are_retried_and_a_lost_answer_is_read_before_resending() {
    let fake = shop();
    let k = kube(&fake);
    fake.fail_next_write(
        503,
        "ServiceUnavailable",
        "the server is currently unable to handle the request",
    );
    let (_, r) = act(
        &k,
        &action("k8s.cordon", &[("node", "n1")], json!({})),
        false,
        5 * SEC,
    )
    .await;
    assert_eq!(r.outcome, Outcome::Done, "{}", r.detail);
    assert_eq!(r.detail["requests"][0]["attempts"], 2);
    // The scale is applied but its answer lost: resending the same PUT would be a 409;
    // reading first shows it took effect.
    fake.lose_next_answer(504);
    let (_, r) = act(
        &k,
        &action(
            "k8s.scale",
            &[("namespace", "shop"), ("deployment", "cart")],
            json!({"delta": 1}),
        ),
        false,
        5 * SEC,
    )
    .await;
    assert_eq!(r.outcome, Outcome::Done, "{}", r.detail);
    assert_eq!(r.detail["requests"][0]["result"], "already_applied");
    assert_eq!(
        fake.object("deployments", "shop", "cart").unwrap()["spec"]["replicas"],
        4
    );
    let puts = fake
        .received_writes()
        .iter()
        .filter(|w| w.method == "PUT")
        .count();
    assert_eq!(puts, 1, "not resent");
}

#[tokio::test]
async fn a_cluster_that_cannot_be_reached_fails_reads_and_times_out_writes() {
    let fake = shop();
    let dir = tempfile::tempdir().unwrap();
    // The discard port: nothing listens there.
    let path = FakeKube::write_kubeconfig(dir.path(), "http://127.0.0.1:9", TOKEN);
    let down = Kube::connect(&Settings {
        kubeconfig: Some(path),
        timeout: Duration::from_millis(500),
        ..settings()
    })
    .await
    .expect("nothing is sent at connect");
    let e = down.get("nodes", "", "n1").await.unwrap_err();
    assert!(e.starts_with("k8s get nodes /n1: "), "{e}");
    assert!(!e.contains(TOKEN));
    let cordon = action("k8s.cordon", &[("node", "n1")], json!({}));
    let r = down.prepare(&cordon).await.unwrap_err();
    assert_eq!(r.outcome, Outcome::Failed, "{}", r.detail);
    // Prepared while the cluster answered, sent once it no longer does: retried until
    // the deadline, then timed out (never reported done).
    let prepared = kube(&fake).prepare(&cordon).await.unwrap();
    let r = down
        .execute(&cordon, prepared, false, Instant::now() + 2 * SEC)
        .await;
    assert_eq!(r.outcome, Outcome::TimedOut, "{}", r.detail);
    assert!(r.detail["requests"][0]["attempts"].as_u64().unwrap() >= 2);
    assert_eq!(fake.writes(), 0);
}

// ---- the client's own loading, over HTTP -----------------------------------------

const TOKEN: &str = "hs-test-token-5f8a2c91e7";

#[tokio::test]
async fn connect_loads_a_kubeconfig_and_never_shows_its_token() {
    let fake = shop();
    fake.require_token(TOKEN);
    let url = fake.serve().await;
    let dir = tempfile::tempdir().unwrap();
    let path = FakeKube::write_kubeconfig(dir.path(), &url, TOKEN);
    let k = Kube::connect(&Settings {
        kubeconfig: Some(path.clone()),
        ..settings()
    })
    .await
    .unwrap();
    assert!(k.get("nodes", "", "n1").await.unwrap().is_some());
    assert_eq!(
        fake.received()[0].authorization.as_deref(),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    // A wrong token is the API's 401, as it says it.
    let bad = FakeKube::write_kubeconfig(dir.path(), &url, "wrong-token-1234");
    let k = Kube::connect(&Settings {
        kubeconfig: Some(bad),
        ..settings()
    })
    .await
    .unwrap();
    assert_eq!(
        k.get("nodes", "", "n1").await.unwrap_err(),
        "k8s get nodes /n1: 401 Unauthorized: Unauthorized"
    );

    let err =
        |s: Settings| async move { Kube::connect(&s).await.err().expect("an error").to_string() };
    let e = err(Settings {
        kubeconfig: Some(path.clone()),
        context: Some("elsewhere".into()),
        ..settings()
    })
    .await;
    assert!(
        e.starts_with("kubernetes: ") && e.contains("elsewhere"),
        "{e}"
    );
    assert!(!e.contains(TOKEN));
    // A file that does not parse: the loader quotes it, the error must not.
    let broken = dir.path().join("broken");
    std::fs::write(
        &broken,
        format!("users:\n- name: u\n  user:\n    token: {TOKEN}\n    tokenFile: [\n"),
    )
    .unwrap();
    let e = err(Settings {
        kubeconfig: Some(broken),
        ..settings()
    })
    .await;
    assert!(!e.contains(TOKEN), "{e}");
    let e = err(Settings {
        kubeconfig: Some(dir.path().join("missing")),
        ..settings()
    })
    .await;
    assert!(e.contains("missing"), "{e}");
}

#[test]
fn without_a_kubeconfig_or_a_cluster_the_agent_says_which_it_tried_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let write = |kubernetes: &str| {
        let config = dir.path().join("homeostat.toml");
        std::fs::write(
            &config,
            format!(
                "[prometheus]\nurl = \"http://127.0.0.1:9\"\n[agent]\nlisten = \"127.0.0.1:0\"\n\
                 audit_log = \"audit.jsonl\"\n{kubernetes}\n[[signals]]\nname = \"x\"\nquery = \"up\"\n"
            ),
        )
        .unwrap();
        config
    };
    let run = |config: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_homeostat"))
            .args(["run", "--config"])
            .arg(config)
            // kubectl's order: KUBECONFIG, ~/.kube/config, then the in-cluster account.
            .env_remove("KUBECONFIG")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT")
            .env("HOME", dir.path())
            .output()
            .unwrap()
    };
    let out = run(&write("[kubernetes]"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("kubernetes: no kubeconfig ("), "{stderr}");
    assert!(stderr.contains(".kube/config"), "{stderr}");
    assert!(stderr.contains("and not in a cluster ("), "{stderr}");

    // ~/.kube/config is found, with a context it does not have.
    std::fs::create_dir_all(dir.path().join(".kube")).unwrap();
    FakeKube::write_kubeconfig(&dir.path().join(".kube"), "https://127.0.0.1:6443", TOKEN);
    std::fs::rename(
        dir.path().join(".kube/kubeconfig"),
        dir.path().join(".kube/config"),
    )
    .unwrap();
    let out = run(&write("[kubernetes]\ncontext = \"prod\""));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("kubernetes: kubeconfig: ") && stderr.contains("prod"),
        "{stderr}"
    );
    assert!(!stderr.contains(TOKEN), "{stderr}");
}
