//! The plan a playbook returns: an ordered list of actions, validated against the
//! action kinds homeostat knows. Scripts never act; the executor runs plans.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One known action kind: its name, the target keys it needs, and what it does.
#[derive(Debug, Clone, Copy)]
pub struct ActionKind {
    /// e.g. `k8s.rollout_restart`.
    pub name: &'static str,
    /// Target keys that must be present (non-empty strings).
    pub target: &'static [&'static str],
    /// One line for docs and errors.
    pub about: &'static str,
}

/// Every action kind a plan may use.
pub const ACTION_KINDS: &[ActionKind] = &[
    ActionKind {
        name: "k8s.rollout_restart",
        target: &["namespace", "deployment"],
        about: "restart a Deployment's pods by rolling update",
    },
    ActionKind {
        name: "k8s.evict_pod",
        target: &["namespace", "pod"],
        about: "evict one pod through the Eviction API (respects PodDisruptionBudgets)",
    },
    ActionKind {
        name: "k8s.scale",
        target: &["namespace", "deployment"],
        about: "set a Deployment's replicas (params.replicas)",
    },
    ActionKind {
        name: "k8s.cordon",
        target: &["node"],
        about: "mark a node unschedulable",
    },
    ActionKind {
        name: "k8s.drain",
        target: &["node"],
        about: "cordon a node and evict its pods",
    },
    ActionKind {
        name: "openstack.server_reboot",
        target: &["server"],
        about: "reboot a Nova server (params.type: soft or hard)",
    },
    ActionKind {
        name: "openstack.server_stop",
        target: &["server"],
        about: "stop a Nova server",
    },
    ActionKind {
        name: "openstack.server_start",
        target: &["server"],
        about: "start a Nova server",
    },
    ActionKind {
        name: "openstack.live_migrate",
        target: &["server"],
        about: "live-migrate a Nova server",
    },
    ActionKind {
        name: "openstack.service_disable",
        target: &["host", "binary"],
        about: "disable a compute service (params.reason)",
    },
    ActionKind {
        name: "notify.webhook",
        target: &["url"],
        about: "POST the anomaly and params.message to a webhook",
    },
    ActionKind {
        name: "notify.alertmanager",
        target: &[],
        about: "send an alert to Alertmanager (params.summary)",
    },
];

/// Looks up a kind by name.
pub fn action_kind(name: &str) -> Option<&'static ActionKind> {
    ACTION_KINDS.iter().find(|k| k.name == name)
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Action {
    /// A known action kind.
    pub kind: String,
    /// What the action applies to (`namespace`, `deployment`, `server`, ...).
    pub target: BTreeMap<String, String>,
    /// Kind-specific parameters.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub params: Map<String, Value>,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.kind)?;
        for (k, v) in &self.target {
            write!(f, " {k}={v}")?;
        }
        for (k, v) in &self.params {
            match v {
                Value::String(s) => write!(f, " {k}={s}")?,
                other => write!(f, " {k}={other}")?,
            }
        }
        Ok(())
    }
}

/// The ordered actions a playbook chose for one anomaly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The playbook that produced it.
    pub playbook: String,
    /// The anomaly it answers.
    pub anomaly_id: String,
    /// The steps, in order.
    pub actions: Vec<Action>,
}

impl Plan {
    /// A readable, multi-line rendering: exactly the steps that would run, in order.
    pub fn render(&self) -> String {
        let mut s = format!(
            "plan from playbook {} for anomaly {} ({} action{}):",
            self.playbook,
            self.anomaly_id,
            self.actions.len(),
            if self.actions.len() == 1 { "" } else { "s" }
        );
        if self.actions.is_empty() {
            s.push_str("\n  (nothing to do)");
        }
        for (i, a) in self.actions.iter().enumerate() {
            s.push_str(&format!("\n  {}. {a}", i + 1));
        }
        s
    }
}

/// Checks a script's return value and turns it into actions; lists every problem.
pub fn parse_actions(value: &Value) -> Result<Vec<Action>, Vec<String>> {
    let items = match value {
        // `()` from a script means "nothing to do".
        Value::Null => return Ok(Vec::new()),
        Value::Array(items) => items,
        other => {
            return Err(vec![format!(
                "plan: expected an array of actions, got {}",
                type_name(other)
            )])
        }
    };
    let mut problems = Vec::new();
    let mut actions = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("plan[{i}]");
        let Value::Object(map) = item else {
            problems.push(format!(
                "{path}: expected a map like #{{ kind: \"...\", target: #{{...}} }}, got {}",
                type_name(item)
            ));
            continue;
        };
        for key in map.keys() {
            if !["kind", "target", "params"].contains(&key.as_str()) {
                problems.push(format!(
                    "{path}.{key}: unknown field (expected kind, target, params)"
                ));
            }
        }
        let kind = match map.get("kind") {
            Some(Value::String(k)) => match action_kind(k) {
                Some(kind) => Some(kind),
                None => {
                    let known: Vec<_> = ACTION_KINDS.iter().map(|k| k.name).collect();
                    problems.push(format!(
                        "{path}.kind: unknown action kind {k:?} (known: {})",
                        known.join(", ")
                    ));
                    None
                }
            },
            Some(other) => {
                problems.push(format!(
                    "{path}.kind: expected a string, got {}",
                    type_name(other)
                ));
                None
            }
            None => {
                problems.push(format!("{path}.kind: missing"));
                None
            }
        };
        let mut target = BTreeMap::new();
        match map.get("target") {
            None | Some(Value::Null) => {}
            Some(Value::Object(t)) => {
                for (k, v) in t {
                    match v {
                        Value::String(s) => {
                            target.insert(k.clone(), s.clone());
                        }
                        other => problems.push(format!(
                            "{path}.target.{k}: expected a string, got {}",
                            type_name(other)
                        )),
                    }
                }
            }
            Some(other) => problems.push(format!(
                "{path}.target: expected a map, got {}",
                type_name(other)
            )),
        }
        let params = match map.get("params") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(p)) => p.clone(),
            Some(other) => {
                problems.push(format!(
                    "{path}.params: expected a map, got {}",
                    type_name(other)
                ));
                Map::new()
            }
        };
        if let Some(kind) = kind {
            for key in kind.target {
                if target.get(*key).is_none_or(|v| v.is_empty()) {
                    problems.push(format!("{path}.target.{key}: required by {}", kind.name));
                }
            }
            problems.extend(check_params(&path, kind.name, &params));
            actions.push(Action {
                kind: kind.name.to_string(),
                target,
                params,
            });
        }
    }
    if problems.is_empty() {
        Ok(actions)
    } else {
        Err(problems)
    }
}

fn check_params(path: &str, kind: &str, params: &Map<String, Value>) -> Vec<String> {
    let mut problems = Vec::new();
    match kind {
        "k8s.scale" => match params.get("replicas") {
            Some(Value::Number(n)) if n.as_u64().is_some_and(|r| r <= 10_000) => {}
            _ => problems.push(format!(
                "{path}.params.replicas: k8s.scale needs a replica count from 0 to 10000"
            )),
        },
        "openstack.server_reboot" => match params.get("type") {
            None => {}
            Some(Value::String(t)) if t == "soft" || t == "hard" => {}
            Some(other) => problems.push(format!(
                "{path}.params.type: expected \"soft\" or \"hard\", got {other}"
            )),
        },
        _ => {}
    }
    problems
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "()",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "a map",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn valid_plan_parses_and_renders() {
        let v = json!([
            {"kind": "k8s.rollout_restart", "target": {"namespace": "shop", "deployment": "cart"}},
            {"kind": "k8s.scale", "target": {"namespace": "shop", "deployment": "cart"}, "params": {"replicas": 4}},
        ]);
        let actions = parse_actions(&v).unwrap();
        let plan = Plan {
            playbook: "p".into(),
            anomaly_id: "an-1".into(),
            actions,
        };
        assert_eq!(
            plan.render(),
            "plan from playbook p for anomaly an-1 (2 actions):\n  \
             1. k8s.rollout_restart deployment=cart namespace=shop\n  \
             2. k8s.scale deployment=cart namespace=shop replicas=4"
        );
        assert_eq!(parse_actions(&Value::Null).unwrap(), vec![]);
    }

    #[test]
    fn every_problem_is_listed() {
        let v = json!([
            {"kind": "k8s.restart_everything"},
            {"kind": "k8s.rollout_restart", "target": {"namespace": "shop"}, "colour": 1},
            {"kind": "k8s.scale", "target": {"namespace": "a", "deployment": "b"}, "params": {"replicas": -1}},
            "reboot",
        ]);
        let errs = parse_actions(&v).unwrap_err();
        let want = [
            "plan[0].kind: unknown action kind \"k8s.restart_everything\"",
            "plan[1].colour: unknown field",
            "plan[1].target.deployment: required by k8s.rollout_restart",
            "plan[2].params.replicas:",
            "plan[3]: expected a map",
        ];
        for w in want {
            assert!(
                errs.iter().any(|e| e.starts_with(w)),
                "missing {w:?} in {errs:#?}"
            );
        }
        assert_eq!(errs.len(), want.len(), "{errs:#?}");
    }
}
