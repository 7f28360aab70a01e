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
    /// Target keys of which exactly one must be present (the workload's kind), if any.
    pub one_of: &'static [&'static str],
    /// One line for docs and errors.
    pub about: &'static str,
}

const fn kind(
    name: &'static str,
    target: &'static [&'static str],
    one_of: &'static [&'static str],
    about: &'static str,
) -> ActionKind {
    ActionKind {
        name,
        target,
        one_of,
        about,
    }
}

/// Every action kind a plan may use.
pub const ACTION_KINDS: &[ActionKind] = &[
    kind(
        "k8s.rollout_restart",
        &["namespace"],
        &["deployment", "statefulset", "daemonset"],
        "restart a workload's pods by rolling update, as `kubectl rollout restart`",
    ),
    kind(
        "k8s.delete_pod",
        &["namespace", "pod"],
        &[],
        "delete one pod (its controller replaces it)",
    ),
    kind(
        "k8s.evict_pod",
        &["namespace", "pod"],
        &[],
        "evict one pod through the Eviction API (respects PodDisruptionBudgets)",
    ),
    kind(
        "k8s.scale",
        &["namespace"],
        &["deployment", "statefulset"],
        "set replicas (params.replicas, or params.delta) within params.min..params.max",
    ),
    kind("k8s.cordon", &["node"], &[], "mark a node unschedulable"),
    kind(
        "k8s.uncordon",
        &["node"],
        &[],
        "mark a node schedulable again",
    ),
    kind(
        "k8s.drain",
        &["node"],
        &[],
        "cordon a node and evict its pods but DaemonSet and mirror pods",
    ),
    kind(
        "openstack.server_reboot",
        &["server"],
        &[],
        "reboot a Nova server (params.type: soft or hard)",
    ),
    kind(
        "openstack.server_stop",
        &["server"],
        &[],
        "stop a Nova server",
    ),
    kind(
        "openstack.server_start",
        &["server"],
        &[],
        "start a Nova server",
    ),
    kind(
        "openstack.server_lock",
        &["server"],
        &[],
        "lock a Nova server (params.reason)",
    ),
    kind(
        "openstack.server_unlock",
        &["server"],
        &[],
        "unlock a Nova server",
    ),
    kind(
        "openstack.live_migrate",
        &["server"],
        &[],
        "live-migrate a Nova server (to params.host, or where the scheduler chooses)",
    ),
    kind(
        "openstack.evacuate",
        &["server"],
        &[],
        "rebuild a server of a down compute host elsewhere (params.host optional)",
    ),
    kind(
        "openstack.service_disable",
        &["host", "binary"],
        &[],
        "disable a compute service (params.reason)",
    ),
    kind(
        "openstack.service_enable",
        &["host", "binary"],
        &[],
        "enable a compute service",
    ),
    kind(
        "openstack.service_force_down",
        &["host", "binary"],
        &[],
        "mark a compute service forced down (fencing, before an evacuation)",
    ),
    kind(
        "notify.webhook",
        &["url"],
        &[],
        "POST the anomaly and params.message to a webhook",
    ),
    kind(
        "notify.alertmanager",
        &[],
        &[],
        "send an alert to Alertmanager (params.alertname, params.summary)",
    ),
];

/// The longest time limit a step may state in `params.timeout`.
pub const MAX_STEP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

/// The most steps one plan may have: a script that returns more is broken, not busy.
pub const MAX_PLAN_STEPS: usize = 100;

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
    /// How to tell that the step worked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<Verify>,
    /// What to do when the step or its verification fails.
    #[serde(default)]
    pub on_failure: OnFailure,
}

/// A step's success condition: a PromQL expression that returns a non-empty result
/// (as an alerting rule's condition does) within the deadline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verify {
    /// The PromQL condition, e.g. `sum(rate(errors[1m])) < 0.01`.
    pub query: String,
    /// How long the condition has to come true.
    #[serde(with = "secs")]
    pub within: std::time::Duration,
}

/// What the executor does when a step fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Stop the plan (the default: the safe choice).
    #[default]
    Stop,
    /// Go on with the next step.
    Continue,
    /// Stop the plan and hand the failure to the playbook's `on_result`.
    Escalate,
}

impl OnFailure {
    /// The name used in scripts and records.
    pub fn as_str(&self) -> &'static str {
        match self {
            OnFailure::Stop => "stop",
            OnFailure::Continue => "continue",
            OnFailure::Escalate => "escalate",
        }
    }
}

/// Durations as whole seconds in records (JSON has no duration type).
mod secs {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v: f64 = serde::Deserialize::deserialize(d)?;
        Duration::try_from_secs_f64(v).map_err(serde::de::Error::custom)
    }
}

/// What a playbook may touch: action kinds and, for infrastructure actions, target matchers.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// Allowed action kinds.
    pub kinds: Vec<String>,
    /// Target keys and the matcher each must satisfy (notifications are exempt).
    pub targets: Vec<(String, crate::labels::Matcher)>,
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
        if let Some(v) = &self.verify {
            write!(f, " [verify within {}s: {}]", v.within.as_secs(), v.query)?;
        }
        if self.on_failure != OnFailure::Stop {
            write!(f, " [on failure: {}]", self.on_failure.as_str())?;
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

/// Checks a script's return value against the known kinds and the playbook's scope,
/// and turns it into actions; lists every problem.
pub fn parse_actions(value: &Value, scope: &Scope) -> Result<Vec<Action>, Vec<String>> {
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
    if items.len() > MAX_PLAN_STEPS {
        return Err(vec![format!(
            "plan: {} steps; at most {MAX_PLAN_STEPS} are allowed",
            items.len()
        )]);
    }
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
            if !["kind", "target", "params", "verify", "on_failure"].contains(&key.as_str()) {
                problems.push(format!("{path}.{key}: unknown field (expected kind, target, params, verify, on_failure)"));
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
        let verify = match map.get("verify") {
            None | Some(Value::Null) => None,
            Some(v) => parse_verify(&format!("{path}.verify"), v, &mut problems),
        };
        let on_failure = match map.get("on_failure") {
            None | Some(Value::Null) => OnFailure::Stop,
            Some(Value::String(s)) if s == "stop" => OnFailure::Stop,
            Some(Value::String(s)) if s == "continue" => OnFailure::Continue,
            Some(Value::String(s)) if s == "escalate" => OnFailure::Escalate,
            Some(other) => {
                problems.push(format!(
                    "{path}.on_failure: {other} is not one of \"stop\", \"continue\", \"escalate\""
                ));
                OnFailure::Stop
            }
        };
        if let Some(kind) = kind {
            for key in kind.target {
                if target.get(*key).is_none_or(|v| v.is_empty()) {
                    problems.push(format!("{path}.target.{key}: required by {}", kind.name));
                }
            }
            if !kind.one_of.is_empty() {
                let named = kind
                    .one_of
                    .iter()
                    .filter(|k| target.get(**k).is_some_and(|v| !v.is_empty()))
                    .count();
                if named != 1 {
                    problems.push(format!(
                        "{path}.target: {} needs exactly one of {}",
                        kind.name,
                        kind.one_of.join(", ")
                    ));
                }
            }
            problems.extend(check_params(&path, kind.name, &params));
            problems.extend(check_scope(&path, kind.name, &target, scope));
            actions.push(Action {
                kind: kind.name.to_string(),
                target,
                params,
                verify,
                on_failure,
            });
        }
    }
    if problems.is_empty() {
        Ok(actions)
    } else {
        Err(problems)
    }
}

fn parse_verify(path: &str, v: &Value, problems: &mut Vec<String>) -> Option<Verify> {
    let Value::Object(m) = v else {
        problems.push(format!(
            "{path}: expected #{{ query: \"<PromQL>\", within: \"5m\" }}"
        ));
        return None;
    };
    for k in m.keys() {
        if k != "query" && k != "within" {
            problems.push(format!(
                "{path}.{k}: unknown field (expected query, within)"
            ));
        }
    }
    let query = match m.get("query") {
        Some(Value::String(q)) => match crate::config::check_promql_shape(q) {
            Ok(()) => Some(q.clone()),
            Err(e) => {
                problems.push(format!("{path}.query: {e}"));
                None
            }
        },
        _ => {
            problems.push(format!("{path}.query: required, a PromQL condition"));
            None
        }
    };
    let within = match m.get("within") {
        Some(Value::String(w)) => match humantime::parse_duration(w) {
            Ok(d) if d >= std::time::Duration::from_secs(1) && d <= MAX_STEP_TIMEOUT => Some(d),
            Ok(_) => {
                problems.push(format!("{path}.within: must be between 1s and 1h"));
                None
            }
            Err(e) => {
                problems.push(format!(
                    "{path}.within: {w:?} is not a duration like \"5m\": {e}"
                ));
                None
            }
        },
        _ => {
            problems.push(format!("{path}.within: required, a duration like \"5m\""));
            None
        }
    };
    Some(Verify {
        query: query?,
        within: within?,
    })
}

/// Notifications change no infrastructure, so target scopes do not apply to them.
fn check_scope(
    path: &str,
    kind: &str,
    target: &BTreeMap<String, String>,
    scope: &Scope,
) -> Vec<String> {
    let mut problems = Vec::new();
    if !scope.kinds.iter().any(|k| k == kind) {
        problems.push(format!(
            "{path}.kind: {kind} is not allowed by this playbook (allowed: {})",
            scope.kinds.join(", ")
        ));
        return problems;
    }
    if kind.starts_with("notify.") {
        return problems;
    }
    for (key, m) in &scope.targets {
        let v = target.get(key).map(String::as_str).unwrap_or("");
        if !m.matches(v) {
            problems.push(format!(
                "{path}.target.{key}: {v:?} is outside this playbook's scope"
            ));
        }
    }
    problems
}

fn check_params(path: &str, kind: &str, params: &Map<String, Value>) -> Vec<String> {
    let mut problems = Vec::new();
    let count = |key: &str, problems: &mut Vec<String>| match params.get(key) {
        None => None,
        Some(Value::Number(n)) if n.as_u64().is_some_and(|r| r <= 10_000) => n.as_u64(),
        Some(other) => {
            problems.push(format!(
                "{path}.params.{key}: expected a replica count from 0 to 10000, got {other}"
            ));
            None
        }
    };
    match kind {
        "k8s.scale" => {
            let replicas = count("replicas", &mut problems);
            match params.get("delta") {
                None => {}
                Some(Value::Number(n)) if n.as_i64().is_some_and(|d| d.abs() <= 10_000) => {}
                Some(other) => problems.push(format!(
                    "{path}.params.delta: expected a change from -10000 to 10000, got {other}"
                )),
            }
            if params.contains_key("replicas") == params.contains_key("delta") {
                problems.push(format!(
                    "{path}.params: k8s.scale needs exactly one of replicas, delta"
                ));
            }
            let min = count("min", &mut problems).unwrap_or(0);
            let max = count("max", &mut problems).unwrap_or(10_000);
            if min > max {
                problems.push(format!("{path}.params.min: {min} is above max {max}"));
            } else if let Some(r) = replicas.filter(|r| !(min..=max).contains(r)) {
                problems.push(format!(
                    "{path}.params.replicas: {r} is outside min..max ({min}..{max})"
                ));
            }
        }
        "openstack.server_reboot" => match params.get("type") {
            None => {}
            Some(Value::String(t)) if t == "soft" || t == "hard" => {}
            Some(other) => problems.push(format!(
                "{path}.params.type: expected \"soft\" or \"hard\", got {other}"
            )),
        },
        _ => {}
    }
    match params.get("timeout") {
        None => {}
        Some(Value::String(w)) => match humantime::parse_duration(w) {
            Ok(d) if d >= std::time::Duration::from_secs(1) && d <= MAX_STEP_TIMEOUT => {}
            Ok(_) => problems.push(format!("{path}.params.timeout: must be between 1s and 1h")),
            Err(e) => problems.push(format!(
                "{path}.params.timeout: {w:?} is not a duration like \"5m\": {e}"
            )),
        },
        Some(other) => problems.push(format!(
            "{path}.params.timeout: expected a duration like \"5m\", got {other}"
        )),
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
    use crate::labels::Matcher;
    use serde_json::json;

    fn scope() -> Scope {
        Scope {
            kinds: ["k8s.rollout_restart", "k8s.scale", "notify.alertmanager"]
                .map(String::from)
                .to_vec(),
            targets: vec![("namespace".into(), Matcher::parse("=~shop|web").unwrap())],
        }
    }

    #[test]
    fn valid_plan_parses_and_renders() {
        let v = json!([
            {"kind": "k8s.rollout_restart", "target": {"namespace": "shop", "deployment": "cart"},
             "verify": {"query": "sum(rate(errors[1m])) < 0.01", "within": "2m"}, "on_failure": "escalate"},
            {"kind": "k8s.scale", "target": {"namespace": "shop", "deployment": "cart"}, "params": {"replicas": 4}},
            {"kind": "notify.alertmanager", "params": {"summary": "done"}},
        ]);
        let actions = parse_actions(&v, &scope()).unwrap();
        assert_eq!(
            actions[0].verify.as_ref().unwrap().within,
            std::time::Duration::from_secs(120)
        );
        assert_eq!(actions[0].on_failure, OnFailure::Escalate);
        assert_eq!(
            actions[1].on_failure,
            OnFailure::Stop,
            "stop is the default"
        );
        let plan = Plan {
            playbook: "p".into(),
            anomaly_id: "an-1".into(),
            actions,
        };
        assert_eq!(
            plan.render(),
            "plan from playbook p for anomaly an-1 (3 actions):\n  \
             1. k8s.rollout_restart deployment=cart namespace=shop [verify within 120s: sum(rate(errors[1m])) < 0.01] [on failure: escalate]\n  \
             2. k8s.scale deployment=cart namespace=shop replicas=4\n  \
             3. notify.alertmanager summary=done"
        );
        assert_eq!(parse_actions(&Value::Null, &scope()).unwrap(), vec![]);
        // Records round-trip, so what was audited is what ran.
        let back: Plan = serde_json::from_value(serde_json::to_value(&plan).unwrap()).unwrap();
        assert_eq!(back, plan);
    }

    #[test]
    fn step_time_limits_are_whole_seconds_to_an_hour() {
        let with = |timeout: &str, within: &str| {
            let v = json!([{"kind": "k8s.rollout_restart", "target": {"namespace": "shop", "deployment": "cart"},
                "params": {"timeout": timeout}, "verify": {"query": "up", "within": within}}]);
            parse_actions(&v, &scope())
        };
        assert!(with("1s", "1h").is_ok());
        let errs = with("500ms", "2h").unwrap_err();
        assert!(
            errs.iter()
                .any(|e| e.starts_with("plan[0].params.timeout: must be between 1s and 1h")),
            "{errs:#?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.starts_with("plan[0].verify.within: must be between 1s and 1h")),
            "{errs:#?}"
        );
    }

    #[test]
    fn oversized_plans_are_refused() {
        let one = json!({"kind": "notify.alertmanager"});
        let v = Value::Array(vec![one; MAX_PLAN_STEPS + 1]);
        assert!(parse_actions(&v, &scope()).unwrap_err()[0].contains("at most 100"));
    }

    #[test]
    fn every_problem_is_listed() {
        let v = json!([
            {"kind": "k8s.restart_everything"},
            {"kind": "k8s.rollout_restart", "target": {"namespace": "shop"}, "colour": 1},
            {"kind": "k8s.scale", "target": {"namespace": "a", "deployment": "b"}, "params": {"replicas": -1}},
            "reboot",
            {"kind": "k8s.cordon", "target": {"node": "n1"}},
            {"kind": "k8s.rollout_restart", "target": {"namespace": "shop", "deployment": "x"},
             "verify": {"query": "up{", "within": "forever"}, "on_failure": "panic"},
        ]);
        let errs = parse_actions(&v, &scope()).unwrap_err();
        let want = [
            "plan[0].kind: unknown action kind \"k8s.restart_everything\"",
            "plan[1].colour: unknown field",
            "plan[1].target: k8s.rollout_restart needs exactly one of deployment, statefulset, daemonset",
            "plan[2].params.replicas:",
            "plan[2].target.namespace: \"a\" is outside this playbook's scope",
            "plan[3]: expected a map",
            "plan[4].kind: k8s.cordon is not allowed by this playbook",
            "plan[5].verify.query: unclosed '{'",
            "plan[5].verify.within: \"forever\" is not a duration",
            "plan[5].on_failure:",
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
