//! The OpenStack effector and reads against the real Nova API behind a real Keystone
//! (`scripts/openstack.sh`): every server action, with its exact request, what it
//! waits for, its outcome when repeated (skipped), refusals by policy, by lock and by
//! opt-out, and authentication with an application credential. The services and
//! evacuation, which change compute hosts, are in `openstack_services.rs`.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::openstack::run;
use homeostat::act::openstack::{Microversion, OpenStack, MAX_MICROVERSION};
use homeostat::act::{Effector, Outcome};
use homeostat::playbook::Action;
use serde_json::{json, Map, Value};
use tokio::time::Instant;

fn action(kind: &str, server: &str, params: Value) -> Action {
    common::action(kind, &[("server", server)], params)
}

fn header() -> BTreeMap<String, String> {
    BTreeMap::from([(
        "OpenStack-API-Version".to_string(),
        format!("compute {MAX_MICROVERSION}"),
    )])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_credential_authenticates_through_keystone_and_negotiates_the_microversion()
{
    let cloud = cloud_or_skip!();
    let os = cloud.connect("homeostat-appcred").await;
    // Nova 34 speaks up to 2.104: the code's own ceiling wins.
    assert_eq!(os.microversion(), MAX_MICROVERSION);
    assert!(MAX_MICROVERSION < Microversion(2, 104));
    assert_eq!(os.compute_endpoint().await, cloud.nova_url);
    let member = cloud.member().await;
    let id = member.boot("appcred-visible", json!({}), None).await;
    let found = os.server("appcred-visible").await.unwrap().unwrap();
    assert_eq!(found["id"], id.as_str());
    assert_eq!(
        os.server(&id).await.unwrap().unwrap()["name"],
        "appcred-visible"
    );

    // A wrong secret: Keystone says no, the error says where and never the secret.
    let dir = tempfile::tempdir().unwrap();
    let clouds = std::fs::read_to_string(&cloud.clouds_yaml).unwrap();
    std::fs::write(dir.path().join("clouds.yaml"), clouds).unwrap();
    std::fs::write(
        dir.path().join("secure.yaml"),
        "clouds:\n  homeostat-appcred:\n    auth:\n      application_credential_secret: not-the-secret-4711\n",
    )
    .unwrap();
    let mut settings = cloud.settings("homeostat-appcred");
    settings.clouds_file = Some(dir.path().join("clouds.yaml"));
    let e = OpenStack::connect(&settings)
        .await
        .err()
        .expect("a wrong secret connects")
        .to_string();
    assert!(e.starts_with("openstack: "), "{e}");
    assert!(e.contains("401"), "{e}");
    assert!(!e.contains("not-the-secret-4711"), "{e}");
    for s in &cloud.secrets {
        assert!(!e.contains(s.as_str()), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_and_hard_reboot_send_the_exact_request_and_wait_for_active() {
    let cloud = cloud_or_skip!();
    let os = cloud.connect("homeostat-appcred").await;
    let member = cloud.member().await;
    let id = member.boot("reboot-me", json!({}), None).await;
    let before = member.server(&id).await;

    for (ty, nova_ty) in [("soft", "SOFT"), ("hard", "HARD")] {
        let a = action(
            "openstack.server_reboot",
            "reboot-me",
            json!({ "type": ty }),
        );
        let (requests, report) = run(&os, &a).await;
        assert_eq!(report.outcome, Outcome::Done, "{ty}: {:?}", report.detail);
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].method, "POST");
        assert_eq!(requests[0].path, format!("/servers/{id}/action"));
        assert_eq!(requests[0].headers, header());
        assert_eq!(requests[0].body, Some(json!({"reboot": {"type": nova_ty}})));
        assert_eq!(report.detail["observed"]["status"], "ACTIVE");
        assert_eq!(report.detail["observed"]["task_state"], Value::Null);
        assert_eq!(report.detail["responses"][0]["status"], 202);
    }
    // Nova saw two reboots: its instance actions say so.
    let actions = member.actions(&id).await;
    let reboots = actions.iter().filter(|a| *a == "reboot").count();
    assert_eq!(reboots, 2, "{actions:?}");
    // (Nova's `updated` has whole seconds: a fast boot and two reboots can share one.)
    assert_eq!(member.server(&id).await["status"], before["status"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_and_start_wait_for_their_state_and_repeating_them_is_skipped() {
    let cloud = cloud_or_skip!();
    let os = cloud.connect("homeostat-member").await;
    let member = cloud.member().await;
    let id = member.boot("stop-start", json!({}), None).await;

    let stop = action("openstack.server_stop", &id, json!({}));
    let (requests, report) = run(&os, &stop).await;
    assert_eq!(report.outcome, Outcome::Done, "{:?}", report.detail);
    assert_eq!(requests[0].body, Some(json!({"os-stop": null})));
    assert_eq!(member.server(&id).await["status"], "SHUTOFF");
    let (requests, report) = run(&os, &stop).await;
    assert_eq!((report.outcome, requests.len()), (Outcome::Skipped, 0));

    // A reboot of a stopped server: Nova says 409, which is a refusal.
    let (_, report) = run(
        &os,
        &action("openstack.server_reboot", &id, json!({"type": "soft"})),
    )
    .await;
    assert_eq!(report.outcome, Outcome::Refused, "{:?}", report.detail);
    assert_eq!(report.detail["status"], 409);

    let start = action("openstack.server_start", &id, json!({}));
    let (requests, report) = run(&os, &start).await;
    assert_eq!(report.outcome, Outcome::Done, "{:?}", report.detail);
    assert_eq!(requests[0].body, Some(json!({"os-start": null})));
    assert_eq!(member.server(&id).await["status"], "ACTIVE");
    let (_, report) = run(&os, &start).await;
    assert_eq!(report.outcome, Outcome::Skipped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_server_refuses_a_members_reboot_and_lock_unlock_are_idempotent() {
    let cloud = cloud_or_skip!();
    let admin_os = cloud.connect("homeostat-admin-appcred").await;
    let member_os = cloud.connect("homeostat-appcred").await;
    let member = cloud.member().await;
    let id = member.boot("locked", json!({}), None).await;

    let lock = action(
        "openstack.server_lock",
        &id,
        json!({"reason": "homeostat: incident an-1"}),
    );
    let (requests, report) = run(&admin_os, &lock).await;
    assert_eq!(report.outcome, Outcome::Done, "{:?}", report.detail);
    assert_eq!(
        requests[0].body,
        Some(json!({"lock": {"locked_reason": "homeostat: incident an-1"}}))
    );
    let s = member.server(&id).await;
    assert_eq!(
        (s["locked"].clone(), s["locked_reason"].clone()),
        (json!(true), json!("homeostat: incident an-1"))
    );
    assert_eq!(run(&admin_os, &lock).await.1.outcome, Outcome::Skipped);

    let (_, report) = run(
        &member_os,
        &action("openstack.server_reboot", &id, json!({"type": "hard"})),
    )
    .await;
    assert_eq!(report.outcome, Outcome::Refused, "{:?}", report.detail);
    assert_eq!(report.detail["status"], 409);
    assert!(
        report.detail["message"]
            .as_str()
            .unwrap()
            .contains("locked"),
        "{:?}",
        report.detail
    );
    assert_eq!(
        member.server(&id).await["updated"],
        s["updated"],
        "the locked server changed"
    );

    let unlock = action("openstack.server_unlock", &id, json!({}));
    let (requests, report) = run(&admin_os, &unlock).await;
    assert_eq!(report.outcome, Outcome::Done, "{:?}", report.detail);
    assert_eq!(requests[0].body, Some(json!({"unlock": null})));
    assert_eq!(member.server(&id).await["locked"], false);
    assert_eq!(run(&admin_os, &unlock).await.1.outcome, Outcome::Skipped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_migration_moves_the_server_to_the_other_host_and_a_member_is_refused() {
    let cloud = cloud_or_skip!();
    let admin_os = cloud.connect("homeostat-admin").await;
    let member_os = cloud.connect("homeostat-appcred").await;
    let admin = cloud.admin().await;
    let id = admin.boot("migrant", json!({}), Some("compute1")).await;

    // The default policy keeps live migration to admins: 403, a refusal.
    let (_, report) = run(
        &member_os,
        &action("openstack.live_migrate", &id, json!({"host": "compute2"})),
    )
    .await;
    assert_eq!(report.outcome, Outcome::Refused, "{:?}", report.detail);

    let to_2 = action("openstack.live_migrate", &id, json!({"host": "compute2"}));
    let (requests, report) = run(&admin_os, &to_2).await;
    assert_eq!(report.outcome, Outcome::Done, "{:?}", report.detail);
    assert_eq!(
        requests[0].body,
        Some(json!({"os-migrateLive": {"host": "compute2", "block_migration": "auto"}}))
    );
    assert_eq!(admin.server(&id).await["OS-EXT-SRV-ATTR:host"], "compute2");
    assert_eq!(report.detail["observed"]["host"], "compute2");
    // Already there: nothing is sent.
    assert_eq!(run(&admin_os, &to_2).await.1.outcome, Outcome::Skipped);

    // Where the scheduler chooses: the only other host.
    let anywhere = action("openstack.live_migrate", &id, json!({}));
    let (requests, report) = run(&admin_os, &anywhere).await;
    assert_eq!(report.outcome, Outcome::Done, "{:?}", report.detail);
    assert_eq!(
        requests[0].body,
        Some(json!({"os-migrateLive": {"host": null, "block_migration": "auto"}}))
    );
    assert_eq!(admin.server(&id).await["OS-EXT-SRV-ATTR:host"], "compute1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_opted_out_is_refused_and_dry_run_sends_nothing() {
    let cloud = cloud_or_skip!();
    let os = cloud.connect("homeostat-appcred").await;
    let member = cloud.member().await;
    // Nova refuses `/` in metadata keys: the key it accepts.
    let (status, _) = member
        .call(
            "POST",
            "/servers",
            Some(json!({"server": {"name": "x", "imageRef": cloud.image,
            "flavorRef": "1", "networks": "none", "metadata": {"homeostat.io/ignore": "true"}}})),
        )
        .await;
    assert_eq!(status, 400);
    let ignored = member
        .boot("hands-off", json!({"homeostat.io:ignore": "true"}), None)
        .await;
    let before = member.server(&ignored).await;
    let err = os
        .prepare(&action(
            "openstack.server_reboot",
            &ignored,
            json!({"type": "hard"}),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.outcome, Outcome::Refused);
    assert_eq!(err.detail["rule"], "opt-out");
    assert!(err.detail["message"]
        .as_str()
        .unwrap()
        .contains("homeostat.io:ignore"));

    let id = member.boot("dry", json!({}), None).await;
    let a = action("openstack.server_stop", &id, json!({}));
    let prepared = os.prepare(&a).await.unwrap();
    let requests = prepared.requests.clone();
    let report = os
        .execute(&a, prepared, true, Instant::now() + Duration::from_secs(30))
        .await;
    assert_eq!(report.outcome, Outcome::DryRun);
    assert_eq!(
        report.detail["requests"],
        serde_json::to_value(&requests).unwrap()
    );
    assert_eq!(
        report.detail["requests"][0]["body"],
        json!({"os-stop": null})
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s = member.server(&id).await;
    assert_eq!(s["status"], "ACTIVE");
    let actions = member.actions(&id).await;
    assert_eq!(actions.len(), 1, "only the boot: {actions:?}");
    assert_eq!(member.server(&ignored).await["updated"], before["updated"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_return_novas_json_and_an_ambiguous_name_is_an_error() {
    let cloud = cloud_or_skip!();
    let os = cloud.connect("homeostat-admin").await;
    let admin = cloud.admin().await;
    let a = admin.boot("twin", json!({}), None).await;
    let b = admin.boot("twin", json!({}), None).await;
    let e = os.server("twin").await.unwrap_err();
    assert!(
        e.contains("2 servers are named \"twin\"") && e.contains(&a) && e.contains(&b),
        "{e}"
    );
    assert_eq!(os.server("no-such-server").await.unwrap(), None);
    assert_eq!(
        os.server("6b9f3f2a-0000-4000-8000-000000000000")
            .await
            .unwrap(),
        None
    );
    // A name is a regular expression to Nova: homeostat's lookup is exact.
    assert_eq!(os.server("twi").await.unwrap(), None);

    let mut filters = Map::new();
    filters.insert("name".into(), json!("^twin$"));
    let twins = os.servers(&filters).await.unwrap();
    assert_eq!(twins.len(), 2);
    assert!(twins.iter().all(|s| s["OS-EXT-STS:vm_state"] == "active"));

    let services = os.compute_services("").await.unwrap();
    let computes: Vec<&str> = services
        .iter()
        .filter(|s| s["binary"] == "nova-compute")
        .map(|s| s["host"].as_str().unwrap())
        .collect();
    assert_eq!(computes.len(), 2, "{services:?}");
    let one = os.compute_services("compute2").await.unwrap();
    assert!(
        !one.is_empty() && one.iter().all(|s| s["host"] == "compute2"),
        "{one:?}"
    );
    let hypervisors = os.hypervisors().await.unwrap();
    assert_eq!(hypervisors.len(), 2, "{hypervisors:?}");

    // A member may read servers but not services (admin by default policy).
    let member_os = cloud.connect("homeostat-member").await;
    let e = member_os.compute_services("").await.unwrap_err();
    assert!(e.contains("403"), "{e}");
}

/// How the proxy in front of Nova fails the first server action it sees.
#[derive(Clone, Copy, PartialEq)]
enum Fault {
    /// Nova carries it out, the client gets a 502: an ambiguous failure.
    AfterForwarding,
    /// Nova never sees it, the client gets a 503.
    BeforeForwarding,
    /// The first read of a server gets a 503 instead (the actions are counted only).
    FirstRead,
}

/// A proxy to Nova that fails the first `POST .../action` as `fault` says and counts
/// the actions it received.
async fn flaky_proxy(
    nova: String,
    fault: Fault,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use axum::body::Bytes;
    use axum::http::{HeaderMap, Method, StatusCode, Uri};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let posts = Arc::new(AtomicUsize::new(0));
    let seen = posts.clone();
    let http = reqwest::Client::new();
    let handler = move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
        let (http, nova, seen) = (http.clone(), nova.clone(), seen.clone());
        async move {
            let action = method == Method::POST && uri.path().ends_with("/action");
            let read = method == Method::GET && uri.path().contains("/servers/");
            let counted = if fault == Fault::FirstRead {
                read
            } else {
                action
            };
            let first = counted && seen.fetch_add(1, Ordering::SeqCst) == 0;
            if first && fault != Fault::AfterForwarding {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Bytes::from_static(b"proxy: try later"),
                );
            }
            let mut req = http.request(
                method.as_str().parse().unwrap(),
                format!(
                    "{nova}{}",
                    uri.path_and_query().map(|p| p.as_str()).unwrap_or("")
                ),
            );
            for (k, v) in &headers {
                if k != "host" && k != "content-length" {
                    req = req.header(k.as_str(), v.as_bytes());
                }
            }
            let resp = req.body(body).send().await.unwrap();
            let status = StatusCode::from_u16(resp.status().as_u16()).unwrap();
            let bytes = resp.bytes().await.unwrap();
            if first {
                return (
                    StatusCode::BAD_GATEWAY,
                    Bytes::from_static(b"proxy: upstream timed out"),
                );
            }
            (status, bytes)
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(handler);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), posts)
}

/// homeostat's client, as the member, with compute reached through `url`.
async fn through(cloud: &common::openstack::Cloud, url: &str) -> OpenStack {
    let dir = tempfile::tempdir().unwrap();
    let clouds = std::fs::read_to_string(&cloud.clouds_yaml)
        .unwrap()
        .replace(
            "  homeostat-member:\n",
            &format!("  homeostat-member:\n    compute_endpoint_override: \"{url}\"\n"),
        );
    std::fs::write(dir.path().join("clouds.yaml"), clouds).unwrap();
    let secure = cloud.clouds_yaml.with_file_name("secure.yaml");
    std::fs::copy(secure, dir.path().join("secure.yaml")).unwrap();
    let mut settings = cloud.settings("homeostat-member");
    settings.clouds_file = Some(dir.path().join("clouds.yaml"));
    let os = OpenStack::connect(&settings).await.unwrap();
    assert_eq!(os.compute_endpoint().await, url);
    os
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reboot_whose_answer_was_lost_is_not_sent_again() {
    let cloud = cloud_or_skip!();
    let nova = cloud.nova_url.trim_end_matches("/v2.1").to_string();
    let (url, posts) = flaky_proxy(nova, Fault::AfterForwarding).await;
    let os = through(cloud, &format!("{url}/v2.1")).await;
    let member = cloud.member().await;
    let id = member.boot("lost-answer", json!({}), None).await;

    let (_, report) = run(
        &os,
        &action("openstack.server_reboot", &id, json!({"type": "soft"})),
    )
    .await;
    // The 502 came after Nova took the reboot: the re-read shows it, nothing is resent.
    assert_eq!(report.outcome, Outcome::Done, "{:?}", report.detail);
    assert_eq!(posts.load(std::sync::atomic::Ordering::SeqCst), 1);
    let actions = member.actions(&id).await;
    let reboots = actions.iter().filter(|a| *a == "reboot").count();
    assert_eq!(reboots, 1, "{actions:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reboot_that_never_reached_nova_is_sent_again_after_reading_the_server() {
    let cloud = cloud_or_skip!();
    let nova = cloud.nova_url.trim_end_matches("/v2.1").to_string();
    let (url, posts) = flaky_proxy(nova, Fault::BeforeForwarding).await;
    let os = through(cloud, &format!("{url}/v2.1")).await;
    let member = cloud.member().await;
    let id = member.boot("never-arrived", json!({}), None).await;

    let (_, report) = run(
        &os,
        &action("openstack.server_reboot", &id, json!({"type": "hard"})),
    )
    .await;
    assert_eq!(report.outcome, Outcome::Done, "{:?}", report.detail);
    assert_eq!(
        posts.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "sent once more"
    );
    let actions = member.actions(&id).await;
    let reboots = actions.iter().filter(|a| *a == "reboot").count();
    assert_eq!(reboots, 1, "{actions:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_fails_once_is_tried_again() {
    let cloud = cloud_or_skip!();
    let nova = cloud.nova_url.trim_end_matches("/v2.1").to_string();
    let (url, reads) = flaky_proxy(nova, Fault::FirstRead).await;
    let os = through(cloud, &format!("{url}/v2.1")).await;
    let id = cloud
        .member()
        .await
        .boot("read-twice", json!({}), None)
        .await;
    let server = os
        .server(&id)
        .await
        .unwrap()
        .expect("found on the second try");
    assert_eq!(server["name"], "read-twice");
    assert_eq!(reads.load(std::sync::atomic::Ordering::SeqCst), 2);
}
