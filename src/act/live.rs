//! The guardrails that read live state at the time of the action, never the plan's:
//! the alert interlock and silences (Alertmanager), and the blast radius (how many
//! nodes, servers or compute services stay healthy). A rule that cannot read what it
//! needs refuses: not knowing is no reason to act.

use std::collections::BTreeMap;

use serde_json::Value;

use super::guard::{floor_holds, Refusal};
use super::{notify, Executor};
use crate::playbook::{Action, Playbook};

/// Checks the interlock, silences and the blast radius for one action.
pub(super) async fn check(
    ex: &Executor,
    playbook: &Playbook,
    action: &Action,
    ctx: &notify::Context,
) -> Result<(), Refusal> {
    let notifier = ex.effectors.notify.as_deref();
    let am = notifier.filter(|n| n.has_alertmanager());
    if !playbook.limits.interlock.is_empty() {
        let Some(n) = am else {
            return Err(Refusal::new(
                "interlock",
                "the playbook names interlock alerts but no Alertmanager is configured ([notify] alertmanager_url)",
            ));
        };
        let alerts = n.firing_alerts().await.map_err(|e| {
            Refusal::new(
                "interlock",
                format!("cannot read Alertmanager's alerts: {e}"),
            )
        })?;
        for alert in &alerts {
            let labels = string_map(&alert["labels"]);
            if let Some(m) = playbook.limits.interlock.iter().find(|ms| {
                ms.iter()
                    .all(|(k, m)| m.matches(labels.get(k).map(String::as_str).unwrap_or("")))
            }) {
                let spec: Vec<String> = m.iter().map(|(k, m)| format!("{k}{}", m.spec())).collect();
                return Err(Refusal::new(
                    "interlock",
                    format!(
                        "alert {} is firing (interlock {{{}}})",
                        labels.get("alertname").map(String::as_str).unwrap_or("?"),
                        spec.join(", ")
                    ),
                ));
            }
        }
    }
    if !action.kind.starts_with("notify.") {
        if let Some(n) = am {
            silenced(n, action, ctx).await?;
        }
        blast_radius(ex, playbook, action).await?;
    }
    Ok(())
}

/// Refuses while an active Alertmanager silence matches the target (its labels and
/// the anomaly's): a maintenance window.
async fn silenced(
    n: &notify::Notifier,
    action: &Action,
    ctx: &notify::Context,
) -> Result<(), Refusal> {
    let silences = n.silences().await.map_err(|e| {
        Refusal::new(
            "silence",
            format!("cannot read Alertmanager's silences: {e}"),
        )
    })?;
    let mut labels: BTreeMap<String, String> = ctx.anomaly.labels.0.clone();
    labels.extend(action.target.clone());
    for s in &silences {
        if s["status"]["state"] != "active" {
            continue;
        }
        let Some(matchers) = s["matchers"].as_array() else {
            continue;
        };
        if !matchers.is_empty() && matchers.iter().all(|m| silence_matches(m, &labels)) {
            return Err(Refusal::new(
                "silence",
                format!(
                    "silence {} by {} matches the target: {}",
                    s["id"].as_str().unwrap_or("?"),
                    s["createdBy"].as_str().unwrap_or("?"),
                    s["comment"].as_str().unwrap_or("")
                ),
            ));
        }
    }
    Ok(())
}

/// One Alertmanager matcher (`name`, `value`, `isRegex`, `isEqual`) against labels.
fn silence_matches(m: &Value, labels: &BTreeMap<String, String>) -> bool {
    let name = m["name"].as_str().unwrap_or("");
    let value = m["value"].as_str().unwrap_or("");
    let have = labels.get(name).map(String::as_str).unwrap_or("");
    let hit = if m["isRegex"].as_bool().unwrap_or(false) {
        regex::Regex::new(&format!("^(?:{value})$")).is_ok_and(|r| r.is_match(have))
    } else {
        have == value
    };
    // isEqual is absent in older Alertmanagers: equality then.
    hit == m["isEqual"].as_bool().unwrap_or(true)
}

/// Refuses a drain, cordon, stop, disable or force-down that would leave fewer healthy
/// members than the floor, counted from the API now.
async fn blast_radius(ex: &Executor, playbook: &Playbook, action: &Action) -> Result<(), Refusal> {
    let min = ex.guard.min_healthy(playbook);
    let refuse = |m: String| Refusal::new("blast_radius", m);
    match action.kind.as_str() {
        "k8s.drain" | "k8s.cordon" => {
            let Some(kube) = ex.effectors.kube.as_deref() else {
                return Ok(());
            };
            let nodes = kube
                .list("nodes", "", "")
                .await
                .map_err(|e| refuse(format!("cannot count healthy nodes: {e}")))?;
            let healthy = |n: &Value| {
                n["spec"]["unschedulable"] != true
                    && n["status"]["conditions"].as_array().is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    })
            };
            let target = action.target.get("node").map(String::as_str).unwrap_or("");
            let target_healthy = nodes
                .iter()
                .any(|n| n["metadata"]["name"] == target && healthy(n));
            let count = nodes.iter().filter(|n| healthy(n)).count();
            floor_holds(nodes.len(), count, target_healthy, min)
                .map_err(|m| refuse(format!("nodes: {m}")))
        }
        "openstack.server_stop" => {
            let Some(os) = ex.effectors.openstack.as_deref() else {
                return Ok(());
            };
            let servers = os
                .servers(&serde_json::Map::new())
                .await
                .map_err(|e| refuse(format!("cannot count active servers: {e}")))?;
            let target = action
                .target
                .get("server")
                .map(String::as_str)
                .unwrap_or("");
            let active = |s: &Value| s["status"] == "ACTIVE";
            let target_healthy = servers
                .iter()
                .any(|s| (s["id"] == target || s["name"] == target) && active(s));
            let count = servers.iter().filter(|s| active(s)).count();
            floor_holds(servers.len(), count, target_healthy, min)
                .map_err(|m| refuse(format!("servers: {m}")))
        }
        "openstack.service_disable" | "openstack.service_force_down" => {
            let Some(os) = ex.effectors.openstack.as_deref() else {
                return Ok(());
            };
            let binary = action
                .target
                .get("binary")
                .map(String::as_str)
                .unwrap_or("");
            let services: Vec<Value> = os
                .compute_services("")
                .await
                .map_err(|e| refuse(format!("cannot count compute services: {e}")))?
                .into_iter()
                .filter(|s| s["binary"] == binary)
                .collect();
            let healthy = |s: &Value| {
                s["state"] == "up" && s["status"] == "enabled" && s["forced_down"] != true
            };
            let host = action.target.get("host").map(String::as_str).unwrap_or("");
            let target_healthy = services.iter().any(|s| s["host"] == host && healthy(s));
            let count = services.iter().filter(|s| healthy(s)).count();
            floor_holds(services.len(), count, target_healthy, min)
                .map_err(|m| refuse(format!("{binary} services: {m}")))
        }
        _ => Ok(()),
    }
}

fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn silence_matchers_as_alertmanager_reads_them() {
        let labels: BTreeMap<String, String> =
            [("node".into(), "n1".into()), ("team".into(), "db".into())].into();
        assert!(silence_matches(
            &json!({"name": "node", "value": "n1", "isRegex": false}),
            &labels
        ));
        assert!(silence_matches(
            &json!({"name": "node", "value": "n.*", "isRegex": true, "isEqual": true}),
            &labels
        ));
        assert!(
            !silence_matches(
                &json!({"name": "node", "value": "n", "isRegex": true}),
                &labels
            ),
            "anchored"
        );
        assert!(silence_matches(
            &json!({"name": "team", "value": "web", "isRegex": false, "isEqual": false}),
            &labels
        ));
        assert!(!silence_matches(
            &json!({"name": "zone", "value": "a", "isRegex": false}),
            &labels
        ));
    }
}
