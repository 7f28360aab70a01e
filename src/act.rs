//! The executor: the only door to the outside world. Every action is recorded in the
//! audit log (and fsynced) before it is dispatched, and its outcome after.
//!
//! This version has no effectors yet: every plan runs in dry-run, which records the
//! exact actions that would run and changes nothing.

use serde_json::json;

use crate::audit::{AuditError, Auditor};
use crate::playbook::{Mode, Plan};

/// How one action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Recorded, not dispatched.
    DryRun,
}

impl Outcome {
    /// The name written to the audit log.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::DryRun => "dry_run",
        }
    }
}

/// Runs a plan: for each action, an audited intent, then (here) a dry-run outcome.
pub async fn execute(plan: &Plan, mode: Mode, audit: &Auditor) -> Result<Vec<Outcome>, AuditError> {
    let mut outcomes = Vec::with_capacity(plan.actions.len());
    for (i, action) in plan.actions.iter().enumerate() {
        // The intent must be durable before anything could be dispatched.
        audit
            .record(
                "action_intent",
                json!({
                    "anomaly_id": plan.anomaly_id,
                    "playbook": plan.playbook,
                    "step": i + 1,
                    "mode": mode.as_str(),
                    "action": action,
                }),
            )
            .await?;
        let outcome = match mode {
            Mode::DryRun => Outcome::DryRun,
        };
        tracing::info!(playbook = %plan.playbook, anomaly = %plan.anomaly_id, step = i + 1, outcome = outcome.as_str(), "{action}");
        audit
            .record(
                "action_outcome",
                json!({
                    "anomaly_id": plan.anomaly_id,
                    "playbook": plan.playbook,
                    "step": i + 1,
                    "kind": action.kind,
                    "outcome": outcome.as_str(),
                }),
            )
            .await?;
        outcomes.push(outcome);
    }
    Ok(outcomes)
}
