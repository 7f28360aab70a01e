//! Opt-in, against a real cloud: skipped unless `HOMEOSTAT_E2E_OS_CLOUD` names a
//! clouds.yaml entry (`HOMEOSTAT_E2E_OS_CLOUDS_FILE` may point at the file; otherwise
//! the usual search path). Reads, and a reboot prepared and executed in dry-run mode
//! only: nothing is changed in that cloud. `HOMEOSTAT_E2E_OS_SERVER` may name the
//! server to prepare the reboot of (default: the first one listed).

use std::collections::BTreeMap;
use std::time::Duration;

use homeostat::act::openstack::{OpenStack, Settings};
use homeostat::act::{Effector, Outcome};
use homeostat::playbook::{Action, OnFailure};
use serde_json::{json, Map};
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_a_dry_run_reboot_against_a_real_cloud() {
    let Ok(cloud) = std::env::var("HOMEOSTAT_E2E_OS_CLOUD") else {
        eprintln!("SKIPPED: HOMEOSTAT_E2E_OS_CLOUD is not set (opt-in suite against a real cloud)");
        return;
    };
    let settings = Settings {
        cloud: Some(cloud.clone()),
        clouds_file: std::env::var_os("HOMEOSTAT_E2E_OS_CLOUDS_FILE").map(Into::into),
        ..Settings::default()
    };
    let os = OpenStack::connect(&settings)
        .await
        .unwrap_or_else(|e| panic!("connect to {cloud}: {e}"));
    eprintln!(
        "{cloud}: compute {} at microversion {}",
        os.compute_endpoint().await,
        os.microversion()
    );

    let mut filters = Map::new();
    filters.insert("limit".into(), json!(5));
    let servers = os.servers(&filters).await.unwrap();
    assert!(servers.len() <= 5, "limit is one page");
    // Services and hypervisors are admin-only by default: a refusal is an answer too.
    for (what, r) in [
        (
            "compute services",
            os.compute_services("").await.map(|v| v.len()),
        ),
        ("hypervisors", os.hypervisors().await.map(|v| v.len())),
    ] {
        match r {
            Ok(n) => eprintln!("{what}: {n}"),
            Err(e) => assert!(e.contains("403"), "{what}: {e}"),
        }
    }

    let target = match std::env::var("HOMEOSTAT_E2E_OS_SERVER") {
        Ok(s) => s,
        Err(_) => match servers.first() {
            Some(s) => s["id"].as_str().unwrap().to_string(),
            None => {
                eprintln!("no server in {cloud}: the dry-run reboot is not tried");
                return;
            }
        },
    };
    let before = os
        .server(&target)
        .await
        .unwrap()
        .expect("the server exists");
    let action = Action {
        kind: "openstack.server_reboot".into(),
        target: BTreeMap::from([("server".to_string(), target.clone())]),
        params: Map::from_iter([("type".to_string(), json!("soft"))]),
        verify: None,
        on_failure: OnFailure::Stop,
    };
    match os.prepare(&action).await {
        Ok(prepared) => {
            assert_eq!(prepared.requests.len(), 1);
            assert_eq!(
                prepared.requests[0].path,
                format!("/servers/{}/action", before["id"].as_str().unwrap())
            );
            let report = os
                .execute(
                    &action,
                    prepared,
                    true,
                    Instant::now() + Duration::from_secs(30),
                )
                .await;
            assert_eq!(report.outcome, Outcome::DryRun, "{:?}", report.detail);
        }
        // An opted-out server is refused before anything is worked out.
        Err(report) => assert_eq!(report.detail["rule"], "opt-out", "{:?}", report.detail),
    }
    let after = os.server(&target).await.unwrap().unwrap();
    assert_eq!(
        after["updated"], before["updated"],
        "the dry run changed the server"
    );
}
