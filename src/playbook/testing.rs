//! Offline playbook tests: run a playbook against a recorded anomaly and recorded
//! answers to its read-only queries, and compare the plan with the expected one.
//!
//! A test case is a `*.test.json` file:
//!
//! ```json
//! {
//!   "description": "error spike in shop/cart: restart, verify recovery",
//!   "playbook": "../restart-on-error-spike.rhai",
//!   "anomaly": { "signal": "http_error_ratio", "labels": {"namespace": "shop", "deployment": "cart"},
//!                "score": 40, "peak_score": 40, "duration_secs": 60, "direction": "up" },
//!   "world": { "prometheus": { "<promql>": [{"labels": {}, "value": 0.2}] } },
//!   "expect": { "plan": [ {"kind": "k8s.rollout_restart", "target": {...}} ] },
//!   "on_result": { "results": [ ... ], "expect": { "plan": [ ... ] } }
//! }
//! ```
//!
//! `expect` holds exactly one of `plan` (the actions, as a script writes them),
//! `error` (a substring of the error) or `matches: false` (no trigger matches).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use super::{parse_actions, Limits, Playbook, RecordedWorld, Scope, World, ACTION_KINDS};
use crate::anomaly::Anomaly;

/// One test case file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    /// What it checks.
    #[serde(default)]
    pub description: String,
    /// The playbook, relative to the test file.
    pub playbook: PathBuf,
    /// The event the playbook sees.
    pub anomaly: Anomaly,
    /// Recorded answers to the script's lookups.
    #[serde(default)]
    pub world: RecordedWorld,
    /// What `plan` must do.
    pub expect: Expect,
    /// Optionally, what `on_result` must do with given step results.
    #[serde(default)]
    pub on_result: Option<OnResultCase>,
}

/// The expected result of a run.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Whether any trigger matches (default true).
    #[serde(default)]
    pub matches: Option<bool>,
    /// The expected actions.
    #[serde(default)]
    pub plan: Option<Value>,
    /// A substring of the expected error.
    #[serde(default)]
    pub error: Option<String>,
}

/// An `on_result` check.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnResultCase {
    /// The step results passed in (as the executor builds them).
    pub results: Value,
    /// What it must return (`plan: []` for nothing to do).
    pub expect: Expect,
}

/// The time a test runs "at": when the anomaly was last seen.
pub fn event_time(a: &Anomaly) -> f64 {
    a.started_unix + a.duration_secs
}

/// Every known kind allowed, so an expected plan is read the way a script's is.
fn any_scope() -> Scope {
    Scope {
        kinds: ACTION_KINDS.iter().map(|k| k.name.to_string()).collect(),
        targets: Vec::new(),
    }
}

fn check(
    what: &str,
    got: Result<Option<super::Plan>, String>,
    expect: &Expect,
) -> Result<(), String> {
    match (&expect.plan, &expect.error, got) {
        (Some(_), Some(_), _) => Err(format!("{what}: expect holds both `plan` and `error`")),
        (Some(want), None, Ok(plan)) => {
            let want = parse_actions(want, &any_scope())
                .map_err(|p| format!("{what}: expected plan is invalid: {}", p.join("; ")))?;
            let got = plan.map(|p| p.actions).unwrap_or_default();
            if got == want {
                Ok(())
            } else {
                let show =
                    |a: &[super::Action]| serde_json::to_string_pretty(a).unwrap_or_default();
                Err(format!(
                    "{what}: plan differs\n  expected: {}\n  got:      {}",
                    show(&want),
                    show(&got)
                ))
            }
        }
        (Some(_), None, Err(e)) => Err(format!("{what}: expected a plan, got an error: {e}")),
        (None, Some(want), Err(e)) if e.contains(want.as_str()) => Ok(()),
        (None, Some(want), Err(e)) => Err(format!(
            "{what}: expected an error containing {want:?}, got: {e}"
        )),
        (None, Some(want), Ok(_)) => Err(format!(
            "{what}: expected an error containing {want:?}, got a plan"
        )),
        (None, None, _) => Err(format!("{what}: expect needs `plan` or `error`")),
    }
}

/// Runs one case file; `Err` says what failed.
pub fn run_case(file: &Path, limits: &Limits) -> Result<(), String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read: {e}"))?;
    let case: TestCase =
        serde_json::from_str(&text).map_err(|e| format!("not a test case: {e}"))?;
    let path = file.parent().unwrap_or(Path::new(".")).join(&case.playbook);
    let pb = Playbook::load(&path, limits).map_err(|e| e.to_string())?;
    let world: Arc<dyn World> = Arc::new(case.world);
    let now = event_time(&case.anomaly);
    let matches = pb.matches(&case.anomaly);
    let want_match = case.expect.matches.unwrap_or(true);
    if matches != want_match {
        return Err(format!(
            "expected the triggers {}to match, they {}",
            if want_match { "" } else { "not " },
            if matches { "do" } else { "don't" }
        ));
    }
    if !matches {
        return Ok(());
    }
    let got = pb
        .plan(&case.anomaly, limits, world.clone(), now)
        .map(Some)
        .map_err(|e| e.to_string());
    check("plan", got, &case.expect)?;
    if let Some(or) = case.on_result {
        let got = pb
            .on_result(&case.anomaly, &or.results, limits, world, now)
            .map_err(|e| e.to_string());
        check("on_result", got, &or.expect)?;
    }
    Ok(())
}

/// The `*.test.json` files of a directory, sorted.
pub fn case_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".test.json"))
        })
        .collect();
    files.sort();
    Ok(files)
}
