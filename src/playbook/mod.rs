//! Playbooks: Rhai scripts that read an anomaly (or a firing alert) and return a
//! [`Plan`]. They never change anything themselves; the executor (`act`) does, after
//! auditing. Scripts may *read* the world through the host API (`prom::`, `k8s::`,
//! `openstack::`), see [`host`].
//!
//! A playbook file carries its metadata in a `PLAYBOOK` constant, defines
//! `fn plan(anomaly)` and may define `fn on_result(anomaly, results)`:
//!
//! ```rhai
//! const PLAYBOOK = #{
//!     name: "restart-on-errors",
//!     description: "Restart a deployment whose error ratio spikes",
//!     mode: "dry-run",                       // auto | approval | dry-run
//!     triggers: [
//!         #{ signal: "http_error_ratio", labels: #{ namespace: "shop" }, min_score: 0.999, min_duration: "1m", direction: "up" },
//!         #{ alertname: "HighErrorRate", labels: #{ namespace: "shop" } },
//!     ],
//!     allowed: #{ kinds: ["k8s.rollout_restart", "notify.alertmanager"], targets: #{ namespace: "shop" } },
//!     group_by: ["namespace", "deployment"],  // one incident, one plan
//!     cooldown: "15m",
//! };
//!
//! fn plan(anomaly) {
//!     [#{ kind: "k8s.rollout_restart",
//!         target: #{ namespace: anomaly.labels.namespace, deployment: anomaly.labels.deployment } }]
//! }
//! ```

pub mod host;
mod plan;
mod sandbox;
pub mod testing;

pub use host::{LiveWorld, RecordedWorld, World};
pub use plan::{
    action_kind, parse_actions, Action, ActionKind, OnFailure, Plan, Scope, Verify, ACTION_KINDS,
    MAX_STEP_TIMEOUT,
};
pub use sandbox::Limits;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rhai::{Dynamic, Map, Scope as RhaiScope, AST};
use serde_json::Value;

use crate::anomaly::Anomaly;
use crate::labels::{all_match, Matcher};

/// When a playbook applies.
#[derive(Debug, Clone)]
pub enum Trigger {
    /// One of homeostat's own anomalies.
    Anomaly {
        /// The signal's name.
        signal: String,
        /// Label matchers (PromQL-like: `value`, `!=v`, `=~re`, `!~re`).
        labels: Vec<(String, Matcher)>,
        /// Minimum peak score of the anomaly.
        min_score: f64,
        /// Minimum time the anomaly has been open.
        min_duration: Duration,
        /// `up`, `down`, or `None` for both.
        direction: Option<String>,
    },
    /// A firing Alertmanager alert received on the webhook.
    Alert {
        /// Matcher on the `alertname` label.
        alertname: Matcher,
        /// Matchers on the alert's other labels.
        labels: Vec<(String, Matcher)>,
    },
}

impl Trigger {
    /// Whether the event satisfies every condition.
    pub fn matches(&self, a: &Anomaly) -> bool {
        match self {
            Trigger::Anomaly {
                signal,
                labels,
                min_score,
                min_duration,
                direction,
            } => {
                a.source == "homeostat"
                    && a.signal == *signal
                    && all_match(labels, &a.labels)
                    && a.peak_score >= *min_score
                    && a.duration_secs >= min_duration.as_secs_f64()
                    && direction.as_ref().is_none_or(|d| *d == a.direction)
            }
            Trigger::Alert { alertname, labels } => {
                a.source == "alertmanager"
                    && alertname.matches(a.labels.get("alertname").unwrap_or(""))
                    && all_match(labels, &a.labels)
            }
        }
    }

    /// The signal it watches, for anomaly triggers.
    pub fn signal(&self) -> Option<&str> {
        match self {
            Trigger::Anomaly { signal, .. } => Some(signal),
            Trigger::Alert { .. } => None,
        }
    }

    /// A one-line description for listings.
    pub fn describe(&self) -> String {
        let matchers = |l: &[(String, Matcher)]| {
            l.iter()
                .map(|(k, m)| format!("{k}{}", m.spec()))
                .collect::<Vec<_>>()
                .join(",")
        };
        match self {
            Trigger::Anomaly {
                signal,
                labels,
                min_score,
                min_duration,
                direction,
            } => format!(
                "anomaly {signal}{{{}}} score>={min_score} for>={} direction={}",
                matchers(labels),
                humantime::format_duration(*min_duration),
                direction.as_deref().unwrap_or("both")
            ),
            Trigger::Alert { alertname, labels } => format!(
                "alert alertname{} {{{}}}",
                alertname.spec(),
                matchers(labels)
            ),
        }
    }
}

/// How a playbook's plans run; `agent.mode` caps it (see [`crate::act::effective_mode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Run without asking.
    Auto,
    /// Wait for a human's approval.
    Approval,
    /// Print and audit the plan; change nothing.
    DryRun,
}

impl Mode {
    /// The name used in files and records.
    pub fn as_str(&self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::Approval => "approval",
            Mode::DryRun => "dry-run",
        }
    }
}

/// A loaded, validated playbook.
#[derive(Debug, Clone)]
pub struct Playbook {
    /// Unique name from its metadata.
    pub name: String,
    /// What it is for.
    pub description: String,
    /// The file it came from.
    pub path: PathBuf,
    /// SHA-256 of the file, recorded in the audit log.
    pub sha256: String,
    /// When it applies (any one of them).
    pub triggers: Vec<Trigger>,
    /// How its plans are meant to run.
    pub mode: Mode,
    /// The action kinds and targets it may use.
    pub scope: Scope,
    /// Labels whose values identify one incident; empty: each anomaly is its own.
    pub group_by: Vec<String>,
    /// After a plan for a group, further matches of that group are suppressed this long.
    pub cooldown: Duration,
    /// Whether it defines `fn on_result(anomaly, results)`.
    pub has_on_result: bool,
    /// Its own guardrails (`PLAYBOOK.limits`).
    pub limits: crate::act::guard::PlaybookLimits,
    ast: AST,
}

/// What went wrong loading or running a playbook.
#[derive(Debug, thiserror::Error)]
pub enum PlaybookError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid playbook; every problem is listed.
    #[error("{}", .problems.iter().map(|p| format!("{}: {p}", .path.display())).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Each problem.
        problems: Vec<String>,
    },
    /// The script failed or broke a sandbox limit.
    #[error("playbook {playbook}: {message}")]
    Script {
        /// The playbook's name.
        playbook: String,
        /// Rhai's message, with its position.
        message: String,
    },
    /// The script returned something that is not a valid plan.
    #[error("playbook {playbook}: invalid plan: {}", .problems.join("; "))]
    InvalidPlan {
        /// The playbook's name.
        playbook: String,
        /// Each problem.
        problems: Vec<String>,
    },
}

/// Default cooldown of a group after a plan.
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(15 * 60);

impl Playbook {
    /// Reads, compiles and validates a playbook file.
    pub fn load(path: &Path, limits: &Limits) -> Result<Playbook, PlaybookError> {
        let text = std::fs::read_to_string(path).map_err(|source| PlaybookError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Playbook::from_source(&text, path, limits)
    }

    /// Compiles and validates playbook source; `path` is used in messages. Runs the
    /// top level on a thread of its own, with a 64 MiB stack.
    pub fn from_source(
        text: &str,
        path: &Path,
        limits: &Limits,
    ) -> Result<Playbook, PlaybookError> {
        sandbox::isolated(|| Playbook::compile(text, path, limits)).unwrap_or_else(|e| {
            Err(PlaybookError::Invalid {
                path: path.to_path_buf(),
                problems: vec![format!("top level: {e}")],
            })
        })
    }

    fn compile(text: &str, path: &Path, limits: &Limits) -> Result<Playbook, PlaybookError> {
        let invalid = |problems: Vec<String>| PlaybookError::Invalid {
            path: path.to_path_buf(),
            problems,
        };
        // Loading runs the top level only; the host API is there so that a script that
        // calls it at the top level gets a clear error rather than "function not found".
        let engine = sandbox::engine(
            limits,
            path.display().to_string(),
            Arc::new(RecordedWorld::default()),
            0.0,
        );
        let ast = engine
            .compile(text)
            .map_err(|e| invalid(vec![format!("syntax: {e}")]))?;
        let mut problems = Vec::new();
        if !ast
            .iter_functions()
            .any(|f| f.name == "plan" && f.params.len() == 1)
        {
            problems.push("missing `fn plan(anomaly)`".to_string());
        }
        let has_on_result = ast
            .iter_functions()
            .any(|f| f.name == "on_result" && f.params.len() == 2);
        // Running the top level defines the constants; the sandbox bounds it like any run.
        let mut scope = RhaiScope::new();
        if let Err(e) = engine.run_ast_with_scope(&mut scope, &ast) {
            problems.push(format!("top level: {}", sandbox::describe(&e)));
            return Err(invalid(problems));
        }
        let Some(meta) = scope.get_value::<Map>("PLAYBOOK") else {
            problems.push("missing `const PLAYBOOK = #{ name: ..., triggers: [...], allowed: #{ kinds: [...] } };`".to_string());
            return Err(invalid(problems));
        };
        let meta = rhai::serde::from_dynamic::<Value>(&Dynamic::from_map(meta))
            .map_err(|e| invalid(vec![format!("PLAYBOOK: {e}")]))?;
        let meta = parse_meta(&meta, &mut problems);
        match meta {
            Some(m) if problems.is_empty() => Ok(Playbook {
                name: m.name,
                description: m.description,
                path: path.to_path_buf(),
                sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(text.as_bytes())),
                triggers: m.triggers,
                mode: m.mode,
                scope: m.scope,
                group_by: m.group_by,
                cooldown: m.cooldown,
                limits: m.limits,
                has_on_result,
                ast,
            }),
            _ => Err(invalid(problems)),
        }
    }

    /// The same playbook under another name (tests of rules that count per playbook).
    #[cfg(test)]
    pub fn renamed(mut self, name: &str) -> Playbook {
        self.name = name.into();
        self
    }

    /// Whether any trigger matches.
    pub fn matches(&self, a: &Anomaly) -> bool {
        self.triggers.iter().any(|t| t.matches(a))
    }

    /// The incident key of an event for this playbook: the `group_by` label values, or
    /// the event's own id when there is no grouping.
    pub fn group_key(&self, a: &Anomaly) -> String {
        if self.group_by.is_empty() {
            return a.id.clone();
        }
        let parts: Vec<String> = self
            .group_by
            .iter()
            .map(|l| format!("{l}={}", a.labels.get(l).unwrap_or("")))
            .collect();
        parts.join(",")
    }

    /// Runs `plan(anomaly)` in the sandbox at time `now` and validates the result.
    /// Blocking (the script runs on a 64 MiB thread of its own and this
    /// waits for it): call it from `spawn_blocking`.
    pub fn plan(
        &self,
        anomaly: &Anomaly,
        limits: &Limits,
        world: Arc<dyn World>,
        now: f64,
    ) -> Result<Plan, PlaybookError> {
        self.isolated(|| {
            let arg = self.to_arg(anomaly)?;
            let out = self.call("plan", (arg,), limits, world, now)?;
            self.to_plan(anomaly, &out, limits)
        })
    }

    /// Runs `on_result(anomaly, results)` after a plan ran; `Ok(None)` when the playbook
    /// has no `on_result` or it returns nothing to do.
    pub fn on_result(
        &self,
        anomaly: &Anomaly,
        results: &Value,
        limits: &Limits,
        world: Arc<dyn World>,
        now: f64,
    ) -> Result<Option<Plan>, PlaybookError> {
        if !self.has_on_result {
            return Ok(None);
        }
        self.isolated(|| {
            let arg = self.to_arg(anomaly)?;
            let results = rhai::serde::to_dynamic(results)
                .map_err(|e| self.script_err(format!("cannot pass the results: {e}")))?;
            let out = self.call("on_result", (arg, results), limits, world, now)?;
            let plan = self.to_plan(anomaly, &out, limits)?;
            Ok((!plan.actions.is_empty()).then_some(plan))
        })
    }

    /// Runs `work` (which runs the script) on a script thread of its own.
    fn isolated<T: Send>(
        &self,
        work: impl FnOnce() -> Result<T, PlaybookError> + Send,
    ) -> Result<T, PlaybookError> {
        sandbox::isolated(work).unwrap_or_else(|e| Err(self.script_err(e)))
    }

    fn script_err(&self, message: String) -> PlaybookError {
        PlaybookError::Script {
            playbook: self.name.clone(),
            message,
        }
    }

    fn to_arg(&self, anomaly: &Anomaly) -> Result<Dynamic, PlaybookError> {
        rhai::serde::to_dynamic(anomaly)
            .map_err(|e| self.script_err(format!("cannot pass the anomaly: {e}")))
    }

    fn call(
        &self,
        f: &str,
        args: impl rhai::FuncArgs,
        limits: &Limits,
        world: Arc<dyn World>,
        now: f64,
    ) -> Result<Dynamic, PlaybookError> {
        let engine = sandbox::engine(limits, self.name.clone(), world, now);
        let mut scope = RhaiScope::new();
        engine
            .call_fn(&mut scope, &self.ast, f, args)
            .map_err(|e| self.script_err(format!("{f}: {}", sandbox::describe(&e))))
    }

    fn to_plan(
        &self,
        anomaly: &Anomaly,
        out: &Dynamic,
        limits: &Limits,
    ) -> Result<Plan, PlaybookError> {
        // Converting and auditing recurse as deep as the value nests.
        let max_items = limits.max_array_size + limits.max_map_size;
        if let Err(broke) = sandbox::Shape::check(out, limits.max_data_depth, max_items) {
            let why = match broke {
                sandbox::Broke::Depth => {
                    format!("nested more than {} levels deep", limits.max_data_depth)
                }
                sandbox::Broke::Items => format!("more than {max_items} items"),
                sandbox::Broke::Locked => "a closure whose capture is being changed".into(),
            };
            return Err(self.script_err(format!("returned a value that is not data: {why}")));
        }
        let value = rhai::serde::from_dynamic::<Value>(out)
            .map_err(|e| self.script_err(format!("returned a value that is not data: {e}")))?;
        let actions =
            parse_actions(&value, &self.scope).map_err(|problems| PlaybookError::InvalidPlan {
                playbook: self.name.clone(),
                problems,
            })?;
        Ok(Plan {
            playbook: self.name.clone(),
            anomaly_id: anomaly.id.clone(),
            actions,
        })
    }
}

struct Meta {
    name: String,
    description: String,
    triggers: Vec<Trigger>,
    mode: Mode,
    scope: Scope,
    group_by: Vec<String>,
    cooldown: Duration,
    limits: crate::act::guard::PlaybookLimits,
}

const META_KEYS: &[&str] = &[
    "name",
    "description",
    "mode",
    "trigger",
    "triggers",
    "allowed",
    "group_by",
    "cooldown",
    "limits",
];

fn parse_meta(meta: &Value, problems: &mut Vec<String>) -> Option<Meta> {
    let Value::Object(m) = meta else {
        problems.push("PLAYBOOK: must be a map".into());
        return None;
    };
    for k in m.keys() {
        if !META_KEYS.contains(&k.as_str()) {
            problems.push(format!(
                "PLAYBOOK.{k}: unknown field (expected one of: {})",
                META_KEYS.join(", ")
            ));
        }
    }
    let name = match m.get("name") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        _ => {
            problems.push("PLAYBOOK.name: required, a non-empty string".into());
            String::new()
        }
    };
    let description = match m.get("description") {
        None => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => {
            problems.push("PLAYBOOK.description: must be a string".into());
            String::new()
        }
    };
    let mode = match m.get("mode").and_then(Value::as_str) {
        None if m.get("mode").is_none() => Mode::DryRun,
        Some("dry-run") => Mode::DryRun,
        Some("auto") => Mode::Auto,
        Some("approval") => Mode::Approval,
        _ => {
            problems.push(format!(
                "PLAYBOOK.mode: {} is not one of \"auto\", \"approval\", \"dry-run\"",
                m["mode"]
            ));
            Mode::DryRun
        }
    };
    let mut triggers = Vec::new();
    match (m.get("trigger"), m.get("triggers")) {
        (Some(t), None) => triggers.extend(parse_trigger("PLAYBOOK.trigger", t, problems)),
        (None, Some(Value::Array(ts))) if !ts.is_empty() => {
            for (i, t) in ts.iter().enumerate() {
                triggers.extend(parse_trigger(
                    &format!("PLAYBOOK.triggers[{i}]"),
                    t,
                    problems,
                ));
            }
        }
        (Some(_), Some(_)) => {
            problems.push("PLAYBOOK: use `trigger` or `triggers`, not both".into())
        }
        _ => problems.push("PLAYBOOK.triggers: required, a non-empty array of trigger maps".into()),
    }
    let scope = match m.get("allowed") {
        Some(Value::Object(a)) => parse_scope(a, problems),
        _ => {
            problems.push("PLAYBOOK.allowed: required, e.g. #{ kinds: [\"k8s.rollout_restart\"], targets: #{ namespace: \"shop\" } }".into());
            Scope::default()
        }
    };
    let group_by = match m.get("group_by") {
        None => Vec::new(),
        Some(Value::String(s)) => s
            .split(',')
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect(),
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => a
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect(),
        Some(_) => {
            problems.push("PLAYBOOK.group_by: must be an array of label names (or \"a,b\")".into());
            Vec::new()
        }
    };
    let cooldown = match m.get("cooldown") {
        None => DEFAULT_COOLDOWN,
        Some(v) => duration(v, "PLAYBOOK.cooldown", problems).unwrap_or(DEFAULT_COOLDOWN),
    };
    let limits = match m.get("limits") {
        None => Default::default(),
        Some(v) => parse_limits(v, problems),
    };
    Some(Meta {
        name,
        description,
        triggers,
        mode,
        scope,
        group_by,
        cooldown,
        limits,
    })
}

const LIMIT_KEYS: &[&str] = &[
    "max_actions",
    "window",
    "max_incidents",
    "interlock",
    "min_healthy",
    "approval_ttl",
];

/// `PLAYBOOK.limits`: this playbook's own guardrails.
fn parse_limits(v: &Value, problems: &mut Vec<String>) -> crate::act::guard::PlaybookLimits {
    let mut l = crate::act::guard::PlaybookLimits::default();
    let Value::Object(m) = v else {
        problems.push("PLAYBOOK.limits: must be a map".into());
        return l;
    };
    for k in m.keys() {
        if !LIMIT_KEYS.contains(&k.as_str()) {
            problems.push(format!(
                "PLAYBOOK.limits.{k}: unknown field (expected one of: {})",
                LIMIT_KEYS.join(", ")
            ));
        }
    }
    let count = |key: &str, problems: &mut Vec<String>| match m.get(key) {
        None => None,
        Some(Value::Number(n)) if n.as_u64().is_some_and(|n| (1..=100_000).contains(&n)) => {
            n.as_u64().map(|n| n as u32)
        }
        Some(other) => {
            problems.push(format!(
                "PLAYBOOK.limits.{key}: expected a count from 1 to 100000, got {other}"
            ));
            None
        }
    };
    l.max_actions = count("max_actions", problems);
    l.max_incidents = count("max_incidents", problems);
    let bounded = |key: &str, max: Duration, problems: &mut Vec<String>| {
        let d = duration(m.get(key)?, &format!("PLAYBOOK.limits.{key}"), problems)?;
        if d.is_zero() || d > max {
            problems.push(format!(
                "PLAYBOOK.limits.{key}: must be between 1s and {}",
                humantime::format_duration(max)
            ));
            return None;
        }
        Some(d)
    };
    l.window = bounded("window", Duration::from_secs(7 * 86_400), problems);
    l.approval_ttl = bounded("approval_ttl", Duration::from_secs(7 * 86_400), problems);
    l.min_healthy = match m.get("min_healthy") {
        None => None,
        Some(Value::Number(n)) if n.as_f64().is_some_and(|f| (0.0..=1.0).contains(&f)) => {
            n.as_f64()
        }
        Some(other) => {
            problems.push(format!(
                "PLAYBOOK.limits.min_healthy: expected a fraction from 0 to 1, got {other}"
            ));
            None
        }
    };
    match m.get("interlock") {
        None => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let path = format!("PLAYBOOK.limits.interlock[{i}]");
                let ms = matchers(Some(item), &path, problems);
                if ms.is_empty() {
                    problems.push(format!("{path}: needs at least one label matcher"));
                } else {
                    l.interlock.push(ms);
                }
            }
        }
        Some(_) => problems.push(
            "PLAYBOOK.limits.interlock: must be an array of alert matchers like #{ alertname: \"NodeDown\" }".into(),
        ),
    }
    l
}

fn duration(v: &Value, path: &str, problems: &mut Vec<String>) -> Option<Duration> {
    match v {
        Value::String(s) => match humantime::parse_duration(s) {
            Ok(d) => Some(d),
            Err(e) => {
                problems.push(format!("{path}: {s:?} is not a duration like \"30s\": {e}"));
                None
            }
        },
        other => {
            problems.push(format!(
                "{path}: expected a duration string like \"30s\", got {other}"
            ));
            None
        }
    }
}

fn matchers(v: Option<&Value>, path: &str, problems: &mut Vec<String>) -> Vec<(String, Matcher)> {
    let mut out = Vec::new();
    match v {
        None => {}
        Some(Value::Object(l)) => {
            for (name, v) in l {
                match v {
                    Value::String(spec) => match Matcher::parse(spec) {
                        Ok(m) => out.push((name.clone(), m)),
                        Err(e) => problems.push(format!("{path}.{name}: bad regex: {e}")),
                    },
                    _ => problems.push(format!("{path}.{name}: must be a string matcher")),
                }
            }
        }
        Some(_) => problems.push(format!("{path}: must be a map of label matchers")),
    }
    out
}

fn parse_trigger(path: &str, t: &Value, problems: &mut Vec<String>) -> Option<Trigger> {
    let Value::Object(t) = t else {
        problems.push(format!(
            "{path}: must be a map with `signal` (an anomaly) or `alertname` (an alert)"
        ));
        return None;
    };
    if let Some(alertname) = t.get("alertname") {
        for k in t.keys() {
            if k != "alertname" && k != "labels" {
                problems.push(format!(
                    "{path}.{k}: unknown field for an alert trigger (expected alertname, labels)"
                ));
            }
        }
        let alertname = match alertname.as_str().map(Matcher::parse) {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                problems.push(format!("{path}.alertname: bad regex: {e}"));
                return None;
            }
            None => {
                problems.push(format!("{path}.alertname: must be a string"));
                return None;
            }
        };
        let labels = matchers(t.get("labels"), &format!("{path}.labels"), problems);
        return Some(Trigger::Alert { alertname, labels });
    }
    for k in t.keys() {
        if !["signal", "labels", "min_score", "min_duration", "direction"].contains(&k.as_str()) {
            problems.push(format!("{path}.{k}: unknown field (expected signal, labels, min_score, min_duration, direction; or alertname, labels)"));
        }
    }
    let signal = match t.get("signal") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => {
            problems.push(format!("{path}.signal: required, the name of a configured signal (or `alertname` for an alert)"));
            String::new()
        }
    };
    let labels = matchers(t.get("labels"), &format!("{path}.labels"), problems);
    let min_score = match t.get("min_score") {
        None => 0.0,
        Some(Value::Number(n)) if n.as_f64().is_some_and(|f| f >= 0.0) => n.as_f64().unwrap_or(0.0),
        Some(other) => {
            problems.push(format!(
                "{path}.min_score: expected a non-negative number, got {other}"
            ));
            0.0
        }
    };
    let min_duration = t
        .get("min_duration")
        .and_then(|v| duration(v, &format!("{path}.min_duration"), problems))
        .unwrap_or(Duration::ZERO);
    let direction = match t.get("direction").and_then(Value::as_str) {
        None if t.get("direction").is_none() => None,
        Some("both") => None,
        Some(d @ ("up" | "down")) => Some(d.to_string()),
        _ => {
            problems.push(format!(
                "{path}.direction: must be \"up\", \"down\" or \"both\""
            ));
            None
        }
    };
    Some(Trigger::Anomaly {
        signal,
        labels,
        min_score,
        min_duration,
        direction,
    })
}

fn parse_scope(a: &serde_json::Map<String, Value>, problems: &mut Vec<String>) -> Scope {
    for k in a.keys() {
        if k != "kinds" && k != "targets" {
            problems.push(format!(
                "PLAYBOOK.allowed.{k}: unknown field (expected kinds, targets)"
            ));
        }
    }
    let mut kinds = Vec::new();
    match a.get("kinds") {
        Some(Value::Array(ks)) if !ks.is_empty() => {
            for (i, k) in ks.iter().enumerate() {
                match k.as_str() {
                    Some(name) if action_kind(name).is_some() => kinds.push(name.to_string()),
                    _ => {
                        let known: Vec<_> = ACTION_KINDS.iter().map(|k| k.name).collect();
                        problems.push(format!("PLAYBOOK.allowed.kinds[{i}]: {k} is not a known action kind (known: {})", known.join(", ")));
                    }
                }
            }
        }
        _ => problems
            .push("PLAYBOOK.allowed.kinds: required, a non-empty array of action kinds".into()),
    }
    let targets = matchers(a.get("targets"), "PLAYBOOK.allowed.targets", problems);
    Scope { kinds, targets }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::labels::Labels;
    use serde_json::json;

    const GOOD: &str = r#"
        const PLAYBOOK = #{
            name: "restart-on-errors",
            triggers: [
                #{ signal: "errors", labels: #{ namespace: "shop", deployment: "=~ca.*" }, min_score: 5.0, min_duration: "10s", direction: "up" },
                #{ alertname: "HighErrors", labels: #{ namespace: "shop" } },
            ],
            allowed: #{ kinds: ["k8s.rollout_restart", "notify.alertmanager"], targets: #{ namespace: "shop" } },
            group_by: ["namespace", "deployment"],
        };
        fn plan(anomaly) {
            print(`planning for ${anomaly.labels.deployment}`);
            let err = prom::value(`errors{deployment="${anomaly.labels.deployment}"}`);
            [#{ kind: "k8s.rollout_restart",
                target: #{ namespace: anomaly.labels.namespace, deployment: anomaly.labels.deployment },
                verify: #{ query: "errors < 0.01", within: "2m" }, on_failure: "escalate",
                params: #{ seen_error_ratio: err } }]
        }
        fn on_result(anomaly, results) {
            if results.all(|r| r.verified != false) { return []; }
            [#{ kind: "notify.alertmanager", params: #{ summary: `restart of ${anomaly.labels.deployment} did not help` } }]
        }
    "#;

    pub(crate) fn anomaly(deployment: &str, peak: f64, duration: f64) -> Anomaly {
        Anomaly {
            id: "an-test".into(),
            signal: "errors".into(),
            query: "sum by (namespace, deployment) (errors)".into(),
            labels: Labels::from_pairs([("namespace", "shop"), ("deployment", deployment)]),
            value: 0.2,
            expected: 0.005,
            lower: 0.0,
            upper: 0.02,
            score: peak,
            peak_score: peak,
            direction: "up".into(),
            evidence: "level".into(),
            seasonal: false,
            started_at: "2026-11-24T10:00:00Z".into(),
            started_unix: 0.0,
            duration_secs: duration,
            source: "homeostat".into(),
            annotations: Default::default(),
            incident: "an-test".into(),
        }
    }

    fn load(src: &str) -> Result<Playbook, PlaybookError> {
        Playbook::from_source(src, Path::new("test.rhai"), &Limits::default())
    }

    fn world() -> Arc<dyn World> {
        Arc::new(
            serde_json::from_value::<RecordedWorld>(
                json!({"prometheus": {"errors{deployment=\"cart\"}": [{"value": 0.2}]}}),
            )
            .unwrap(),
        )
    }

    #[test]
    fn good_playbook_loads_matches_and_plans() {
        let p = load(GOOD).unwrap();
        assert_eq!(p.name, "restart-on-errors");
        assert!(p.has_on_result);
        assert!(p.matches(&anomaly("cart", 9.0, 12.0)));
        assert!(!p.matches(&anomaly("search", 9.0, 12.0)), "label regex");
        assert!(!p.matches(&anomaly("cart", 4.0, 12.0)), "min_score");
        assert!(!p.matches(&anomaly("cart", 9.0, 5.0)), "min_duration");
        let down = Anomaly {
            direction: "down".into(),
            ..anomaly("cart", 9.0, 12.0)
        };
        assert!(!p.matches(&down), "direction");
        let mut alert = anomaly("search", 0.0, 0.0);
        alert.source = "alertmanager".into();
        alert
            .labels
            .0
            .insert("alertname".into(), "HighErrors".into());
        assert!(p.matches(&alert), "alert trigger");
        assert_eq!(p.group_key(&alert), "namespace=shop,deployment=search");

        let plan = p
            .plan(
                &anomaly("cart", 9.0, 12.0),
                &Limits::default(),
                world(),
                100.0,
            )
            .unwrap();
        assert_eq!(plan.actions.len(), 1);
        assert_eq!(plan.actions[0].target["deployment"], "cart");
        assert_eq!(plan.actions[0].params["seen_error_ratio"], json!(0.2));
        assert_eq!(plan.actions[0].on_failure, OnFailure::Escalate);
        assert_eq!(plan.anomaly_id, "an-test");

        let ok = json!([{"step": 1, "kind": "k8s.rollout_restart", "outcome": "dry_run", "verified": true}]);
        assert!(p
            .on_result(
                &anomaly("cart", 9.0, 12.0),
                &ok,
                &Limits::default(),
                world(),
                100.0
            )
            .unwrap()
            .is_none());
        let failed = json!([{"step": 1, "kind": "k8s.rollout_restart", "outcome": "dry_run", "verified": false}]);
        let follow = p
            .on_result(
                &anomaly("cart", 9.0, 12.0),
                &failed,
                &Limits::default(),
                world(),
                100.0,
            )
            .unwrap()
            .unwrap();
        assert_eq!(follow.actions[0].kind, "notify.alertmanager");
    }

    #[test]
    fn bad_metadata_lists_every_problem() {
        let src = r#"
            const PLAYBOOK = #{ mode: "yolo", colour: 1,
                triggers: [#{ min_duration: "soon", labels: #{ a: "=~(" } }, #{ alertname: 3 }],
                allowed: #{ kinds: ["k8s.nuke"] } };
            fn helper() { 1 }
        "#;
        let PlaybookError::Invalid { problems, .. } = load(src).unwrap_err() else {
            panic!()
        };
        let want = [
            "missing `fn plan(anomaly)`",
            "PLAYBOOK.colour: unknown field",
            "PLAYBOOK.name: required",
            "PLAYBOOK.mode:",
            "PLAYBOOK.triggers[0].signal: required",
            "PLAYBOOK.triggers[0].labels.a: bad regex",
            "PLAYBOOK.triggers[0].min_duration:",
            "PLAYBOOK.triggers[1].alertname: must be a string",
            "PLAYBOOK.allowed.kinds[0]: \"k8s.nuke\" is not a known action kind",
        ];
        for w in want {
            assert!(
                problems.iter().any(|e| e.starts_with(w)),
                "missing {w:?} in {problems:#?}"
            );
        }
        assert_eq!(problems.len(), want.len(), "{problems:#?}");
    }

    #[test]
    fn syntax_error_is_rejected_at_load() {
        let e = load("fn plan(a) { [ }").unwrap_err().to_string();
        assert!(e.starts_with("test.rhai: syntax:"), "{e}");
    }

    #[test]
    fn a_plan_outside_the_scope_is_an_error_not_a_partial_plan() {
        let src = GOOD.replace(
            "namespace: anomaly.labels.namespace, deployment",
            "namespace: \"kube-system\", deployment",
        );
        let p = load(&src).unwrap();
        let e = p
            .plan(
                &anomaly("cart", 9.0, 12.0),
                &Limits::default(),
                world(),
                0.0,
            )
            .unwrap_err();
        assert!(
            e.to_string().contains("outside this playbook's scope"),
            "{e}"
        );
    }

    #[test]
    fn a_failing_lookup_fails_the_run_with_its_message() {
        let p = load(GOOD).unwrap();
        let empty: Arc<dyn World> = Arc::new(RecordedWorld::default());
        let e = p
            .plan(&anomaly("cart", 9.0, 12.0), &Limits::default(), empty, 0.0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no recorded answer for the query"), "{e}");
    }
}
