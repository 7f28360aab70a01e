//! Compute services and evacuation against the real Nova behind a real Keystone: these
//! change compute hosts, so they have a cloud of their own (this binary's) and run one
//! at a time.

mod common;

use std::collections::BTreeMap;

use common::action;
use common::openstack::run;
use homeostat::act::openstack::MAX_MICROVERSION;
use homeostat::act::{Outcome, Request};
use homeostat::playbook::Action;
use serde_json::{json, Value};
use tokio::sync::Mutex;

/// These tests share two compute hosts: one at a time.
static HOSTS: Mutex<()> = Mutex::const_new(());

fn service(kind: &str, host: &str, params: Value) -> Action {
    action(kind, &[("host", host), ("binary", "nova-compute")], params)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compute_service_is_disabled_with_its_reason_and_enabled_and_repeats_are_skipped() {
    let cloud = cloud_or_skip!();
    let _hosts = HOSTS.lock().await;
    let os = cloud.connect("homeostat-admin-appcred").await;
    let admin = cloud.admin().await;
    let uuid = admin.service("compute2").await["id"]
        .as_str()
        .unwrap()
        .to_string();

    let disable = service(
        "openstack.service_disable",
        "compute2",
        json!({"reason": "homeostat: nova-compute down (an-7)"}),
    );
    let (requests, report) = run(&os, &disable).await;
    assert_eq!(report.outcome, Outcome::Done, "{:?}", report.detail);
    assert_eq!(
        requests,
        vec![Request {
            method: "PUT".into(),
            path: format!("/os-services/{uuid}"),
            headers: BTreeMap::from([(
                "OpenStack-API-Version".into(),
                format!("compute {MAX_MICROVERSION}")
            )]),
            body: Some(
                json!({"status": "disabled", "disabled_reason": "homeostat: nova-compute down (an-7)"})
            ),
        }]
    );
    let s = admin.service("compute2").await;
    assert_eq!(
        (s["status"].clone(), s["disabled_reason"].clone()),
        (
            json!("disabled"),
            json!("homeostat: nova-compute down (an-7)")
        )
    );
    assert_eq!(run(&os, &disable).await.1.outcome, Outcome::Skipped);

    // A member may not: the read of os-services is already refused by policy.
    let member_os = cloud.connect("homeostat-appcred").await;
    let enable = service("openstack.service_enable", "compute2", json!({}));
    let (_, report) = run(&member_os, &enable).await;
    assert_eq!(report.outcome, Outcome::Refused, "{:?}", report.detail);
    assert_eq!(admin.service("compute2").await["status"], "disabled");

    let (requests, report) = run(&os, &enable).await;
    assert_eq!(report.outcome, Outcome::Done, "{:?}", report.detail);
    assert_eq!(requests[0].body, Some(json!({"status": "enabled"})));
    assert_eq!(admin.service("compute2").await["status"], "enabled");
    assert_eq!(run(&os, &enable).await.1.outcome, Outcome::Skipped);

    let (_, report) = run(
        &os,
        &service("openstack.service_enable", "compute9", json!({})),
    )
    .await;
    assert_eq!(report.outcome, Outcome::Failed);
    assert!(report.detail["message"]
        .as_str()
        .unwrap()
        .contains("no nova-compute service on host compute9"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evacuation_is_refused_while_the_source_is_up_and_rebuilds_elsewhere_after_force_down() {
    let cloud = cloud_or_skip!();
    let _hosts = HOSTS.lock().await;
    let os = cloud.connect("homeostat-admin").await;
    let admin = cloud.admin().await;
    let id = admin.boot("evacuee", json!({}), Some("compute1")).await;
    let evacuate = action("openstack.evacuate", &[("server", &id)], json!({}));

    let (requests, report) = run(&os, &evacuate).await;
    assert_eq!(report.outcome, Outcome::Refused, "{:?}", report.detail);
    assert_eq!(report.detail["rule"], "source-host-up");
    assert!(requests.is_empty());
    assert_eq!(admin.server(&id).await["OS-EXT-SRV-ATTR:host"], "compute1");

    // compute1 dies; homeostat fences it, then evacuates.
    cloud.compute("compute1", "stop").await;
    let force_down = service("openstack.service_force_down", "compute1", json!({}));
    let (requests, report) = run(&os, &force_down).await;
    assert_eq!(report.outcome, Outcome::Done, "{:?}", report.detail);
    assert_eq!(requests[0].body, Some(json!({"forced_down": true})));
    let s = admin.service("compute1").await;
    assert_eq!(
        (s["forced_down"].clone(), s["state"].clone()),
        (json!(true), json!("down"))
    );
    assert_eq!(run(&os, &force_down).await.1.outcome, Outcome::Skipped);

    let (requests, report) = run(&os, &evacuate).await;
    assert_eq!(
        report.outcome,
        Outcome::Done,
        "{:?}\n{}",
        report.detail,
        cloud.logs()
    );
    assert_eq!(requests[0].path, format!("/servers/{id}/action"));
    assert_eq!(requests[0].body, Some(json!({"evacuate": {}})));
    let s = admin.server(&id).await;
    assert_eq!(s["OS-EXT-SRV-ATTR:host"], "compute2");
    assert!(s["OS-EXT-STS:task_state"].is_null());
    assert_eq!(report.detail["observed"]["host"], "compute2");
    // Already off the dead host: evacuating "to compute2" again sends nothing.
    let again = action(
        "openstack.evacuate",
        &[("server", &id)],
        json!({"host": "compute2"}),
    );
    assert_eq!(run(&os, &again).await.1.outcome, Outcome::Skipped);
}
