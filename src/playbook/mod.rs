//! Playbooks: Rhai scripts that read an anomaly and return a [`Plan`]. They never
//! change anything themselves; the executor (`act`) does, after auditing.
//!
//! A playbook file carries its metadata in a `PLAYBOOK` constant and defines
//! `fn plan(anomaly)`:
//!
//! ```rhai
//! const PLAYBOOK = #{
//!     name: "restart-on-errors",
//!     description: "Restart a deployment whose error ratio spikes",
//!     mode: "dry-run",
//!     trigger: #{
//!         signal: "http_error_ratio",
//!         labels: #{ namespace: "shop", deployment: "=~.+" },
//!         min_score: 6.0,
//!         min_duration: "10s",
//!     },
//! };
//!
//! fn plan(anomaly) {
//!     [#{ kind: "k8s.rollout_restart",
//!         target: #{ namespace: anomaly.labels.namespace, deployment: anomaly.labels.deployment } }]
//! }
//! ```

mod plan;
mod sandbox;

pub use plan::{action_kind, parse_actions, Action, ActionKind, Plan, ACTION_KINDS};
pub use sandbox::Limits;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rhai::{Dynamic, Map, Scope, AST};
use serde_json::Value;

use crate::anomaly::Anomaly;
use crate::labels::{all_match, Matcher};

/// When a playbook applies to an anomaly.
#[derive(Debug, Clone)]
pub struct Trigger {
    /// The signal's name.
    pub signal: String,
    /// Label matchers (PromQL-like: `value`, `!=v`, `=~re`, `!~re`).
    pub labels: Vec<(String, Matcher)>,
    /// Minimum peak score of the anomaly.
    pub min_score: f64,
    /// Minimum time the anomaly has been open.
    pub min_duration: Duration,
}

impl Trigger {
    /// Whether the anomaly satisfies every condition.
    pub fn matches(&self, a: &Anomaly) -> bool {
        a.signal == self.signal
            && all_match(&self.labels, &a.labels)
            && a.peak_score >= self.min_score
            && a.duration_secs >= self.min_duration.as_secs_f64()
    }
}

/// How a playbook's plans are executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Print and audit the plan; change nothing.
    DryRun,
}

impl Mode {
    /// The name used in files and records.
    pub fn as_str(&self) -> &'static str {
        match self {
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
    /// When it applies.
    pub trigger: Trigger,
    /// How its plans run.
    pub mode: Mode,
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
    /// The script failed or broke a sandbox limit while planning.
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

impl Playbook {
    /// Reads, compiles and validates a playbook file.
    pub fn load(path: &Path, limits: &Limits) -> Result<Playbook, PlaybookError> {
        let text = std::fs::read_to_string(path).map_err(|source| PlaybookError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Playbook::from_source(&text, path, limits)
    }

    /// Compiles and validates playbook source; `path` is used in messages.
    pub fn from_source(
        text: &str,
        path: &Path,
        limits: &Limits,
    ) -> Result<Playbook, PlaybookError> {
        let invalid = |problems: Vec<String>| PlaybookError::Invalid {
            path: path.to_path_buf(),
            problems,
        };
        let engine = sandbox::engine(limits, path.display().to_string());
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
        // Running the top level defines the constants; the sandbox bounds it like any run.
        let mut scope = Scope::new();
        if let Err(e) = engine.run_ast_with_scope(&mut scope, &ast) {
            problems.push(format!("top level: {e}"));
            return Err(invalid(problems));
        }
        let Some(meta) = scope.get_value::<Map>("PLAYBOOK") else {
            problems
                .push("missing `const PLAYBOOK = #{ name: ..., trigger: #{ ... } };`".to_string());
            return Err(invalid(problems));
        };
        let meta = rhai::serde::from_dynamic::<Value>(&Dynamic::from_map(meta))
            .map_err(|e| invalid(vec![format!("PLAYBOOK: {e}")]))?;
        let parsed = parse_meta(&meta, &mut problems);
        match parsed {
            Some((name, description, trigger, mode)) if problems.is_empty() => Ok(Playbook {
                name,
                description,
                path: path.to_path_buf(),
                sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(text.as_bytes())),
                trigger,
                mode,
                ast,
            }),
            _ => Err(invalid(problems)),
        }
    }

    /// Runs `plan(anomaly)` in the sandbox and validates the result. Blocking: call it
    /// from `spawn_blocking`.
    pub fn plan(&self, anomaly: &Anomaly, limits: &Limits) -> Result<Plan, PlaybookError> {
        let script_err = |message: String| PlaybookError::Script {
            playbook: self.name.clone(),
            message,
        };
        let engine = sandbox::engine(limits, self.name.clone());
        let arg = rhai::serde::to_dynamic(anomaly)
            .map_err(|e| script_err(format!("cannot pass the anomaly: {e}")))?;
        let mut scope = Scope::new();
        let out: Dynamic = engine
            .call_fn(&mut scope, &self.ast, "plan", (arg,))
            .map_err(|e| script_err(sandbox::describe(&e)))?;
        let value = rhai::serde::from_dynamic::<Value>(&out)
            .map_err(|e| script_err(format!("plan returned a value that is not data: {e}")))?;
        let actions = parse_actions(&value).map_err(|problems| PlaybookError::InvalidPlan {
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

fn parse_meta(meta: &Value, problems: &mut Vec<String>) -> Option<(String, String, Trigger, Mode)> {
    let Value::Object(m) = meta else {
        problems.push("PLAYBOOK: must be a map".into());
        return None;
    };
    for k in m.keys() {
        if !["name", "description", "mode", "trigger"].contains(&k.as_str()) {
            problems.push(format!(
                "PLAYBOOK.{k}: unknown field (expected name, description, mode, trigger)"
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
    let mode = match m.get("mode") {
        None => Mode::DryRun,
        Some(Value::String(s)) if s == "dry-run" => Mode::DryRun,
        Some(Value::String(s)) if s == "auto" || s == "approval" => {
            problems.push(format!(
                "PLAYBOOK.mode: {s:?} is not available in this version: the executor only dry-runs"
            ));
            Mode::DryRun
        }
        Some(other) => {
            problems.push(format!(
                "PLAYBOOK.mode: {other} is not one of \"dry-run\", \"auto\", \"approval\""
            ));
            Mode::DryRun
        }
    };
    let trigger = match m.get("trigger") {
        Some(Value::Object(t)) => parse_trigger(t, problems),
        _ => {
            problems.push("PLAYBOOK.trigger: required, a map with at least `signal`".into());
            None
        }
    };
    Some((name, description, trigger?, mode))
}

fn parse_trigger(
    t: &serde_json::Map<String, Value>,
    problems: &mut Vec<String>,
) -> Option<Trigger> {
    for k in t.keys() {
        if !["signal", "labels", "min_score", "min_duration"].contains(&k.as_str()) {
            problems.push(format!("PLAYBOOK.trigger.{k}: unknown field (expected signal, labels, min_score, min_duration)"));
        }
    }
    let signal = match t.get("signal") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => {
            problems
                .push("PLAYBOOK.trigger.signal: required, the name of a configured signal".into());
            String::new()
        }
    };
    let mut labels = Vec::new();
    match t.get("labels") {
        None => {}
        Some(Value::Object(l)) => {
            for (name, v) in l {
                match v {
                    Value::String(spec) => match Matcher::parse(spec) {
                        Ok(m) => labels.push((name.clone(), m)),
                        Err(e) => {
                            problems.push(format!("PLAYBOOK.trigger.labels.{name}: bad regex: {e}"))
                        }
                    },
                    _ => problems.push(format!(
                        "PLAYBOOK.trigger.labels.{name}: must be a string matcher"
                    )),
                }
            }
        }
        Some(_) => problems.push("PLAYBOOK.trigger.labels: must be a map of label matchers".into()),
    }
    let min_score = match t.get("min_score") {
        None => 0.0,
        Some(Value::Number(n)) if n.as_f64().is_some_and(|f| f >= 0.0) => n.as_f64().unwrap_or(0.0),
        Some(other) => {
            problems.push(format!(
                "PLAYBOOK.trigger.min_score: expected a non-negative number, got {other}"
            ));
            0.0
        }
    };
    let min_duration = match t.get("min_duration") {
        None => Duration::ZERO,
        Some(Value::String(s)) => humantime::parse_duration(s).unwrap_or_else(|e| {
            problems.push(format!(
                "PLAYBOOK.trigger.min_duration: {s:?} is not a duration like \"30s\": {e}"
            ));
            Duration::ZERO
        }),
        Some(other) => {
            problems.push(format!("PLAYBOOK.trigger.min_duration: expected a duration string like \"30s\", got {other}"));
            Duration::ZERO
        }
    };
    Some(Trigger {
        signal,
        labels,
        min_score,
        min_duration,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::Labels;

    const GOOD: &str = r#"
        const PLAYBOOK = #{
            name: "restart-on-errors",
            trigger: #{ signal: "errors", labels: #{ namespace: "shop", deployment: "=~ca.*" }, min_score: 5.0, min_duration: "10s" },
        };
        fn plan(anomaly) {
            print(`planning for ${anomaly.labels.deployment}`);
            [#{ kind: "k8s.rollout_restart",
                target: #{ namespace: anomaly.labels.namespace, deployment: anomaly.labels.deployment } }]
        }
    "#;

    pub(crate) fn anomaly(deployment: &str, peak: f64, duration: f64) -> Anomaly {
        Anomaly {
            id: "an-test".into(),
            signal: "errors".into(),
            labels: Labels::from_pairs([("namespace", "shop"), ("deployment", deployment)]),
            value: 0.2,
            expected: 0.005,
            lower: 0.0,
            upper: 0.02,
            score: peak,
            peak_score: peak,
            direction: "up".into(),
            started_at: "2026-11-24T10:00:00Z".into(),
            started_unix: 0.0,
            duration_secs: duration,
        }
    }

    fn load(src: &str) -> Result<Playbook, PlaybookError> {
        Playbook::from_source(src, Path::new("test.rhai"), &Limits::default())
    }

    #[test]
    fn good_playbook_loads_matches_and_plans() {
        let p = load(GOOD).unwrap();
        assert_eq!(p.name, "restart-on-errors");
        assert!(p.trigger.matches(&anomaly("cart", 9.0, 12.0)));
        assert!(
            !p.trigger.matches(&anomaly("search", 9.0, 12.0)),
            "label regex"
        );
        assert!(!p.trigger.matches(&anomaly("cart", 4.0, 12.0)), "min_score");
        assert!(
            !p.trigger.matches(&anomaly("cart", 9.0, 5.0)),
            "min_duration"
        );
        let plan = p
            .plan(&anomaly("cart", 9.0, 12.0), &Limits::default())
            .unwrap();
        assert_eq!(plan.actions.len(), 1);
        assert_eq!(plan.actions[0].target["deployment"], "cart");
        assert_eq!(plan.anomaly_id, "an-test");
    }

    #[test]
    fn bad_metadata_lists_every_problem() {
        let src = r#"
            const PLAYBOOK = #{ mode: "yolo", colour: 1, trigger: #{ min_duration: "soon", labels: #{ a: "=~(" } } };
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
            "PLAYBOOK.trigger.signal: required",
            "PLAYBOOK.trigger.labels.a: bad regex",
            "PLAYBOOK.trigger.min_duration:",
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
    fn an_invalid_plan_is_an_error_not_a_partial_plan() {
        let src = GOOD.replace("k8s.rollout_restart", "k8s.reboot_the_world");
        let p = load(&src).unwrap();
        let e = p
            .plan(&anomaly("cart", 9.0, 12.0), &Limits::default())
            .unwrap_err();
        assert!(matches!(e, PlaybookError::InvalidPlan { .. }), "{e}");
    }
}
