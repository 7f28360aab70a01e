//! The executor: the only door to the outside world. Every action is recorded in the
//! audit log (and fsynced) before it is dispatched, and its outcome after; each step's
//! verification runs against the real Prometheus; a playbook's `on_result` may then
//! return a follow-up plan (escalation), which runs the same way.
//!
//! This version has no effectors yet: whatever a playbook's mode, every action runs
//! in dry-run, which records the exact action that would run and changes nothing.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::{info, warn};

use crate::anomaly::Anomaly;
use crate::audit::{
    ActionIntent, ActionOutcome, AuditError, Auditor, EscalationLimit, Event, IncidentDone,
    PlanChosen, PlaybookFailed, Verification,
};
use crate::playbook::{Action, Limits, OnFailure, Plan, Playbook, World};
use crate::source::{unix_now, Source};

/// How one action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Recorded, not dispatched.
    DryRun,
    /// Not run because an earlier step failed.
    Skipped,
}

impl Outcome {
    /// The name written to the audit log.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::DryRun => "dry_run",
            Outcome::Skipped => "skipped",
        }
    }
}

/// What became of one step; `on_result` receives these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepResult {
    /// 1-based step number.
    pub step: usize,
    /// The action kind.
    pub kind: String,
    /// Its target.
    pub target: std::collections::BTreeMap<String, String>,
    /// Its parameters.
    pub params: serde_json::Map<String, Value>,
    /// How it ended.
    pub outcome: Outcome,
    /// `Some(true/false)` when it had a `verify`, `None` otherwise.
    pub verified: Option<bool>,
    /// Whether the step counts as failed (its verification did not hold).
    pub failed: bool,
    /// Whether its failure escalated to `on_result`.
    pub escalated: bool,
}

/// Everything the executor needs.
#[derive(Clone)]
pub struct Executor {
    /// The audit log.
    pub audit: Auditor,
    /// Where verification conditions are queried.
    pub source: Arc<dyn Source>,
    /// How often a verification condition is re-evaluated.
    pub verify_every: Duration,
    /// Sandbox limits for `on_result`.
    pub limits: Limits,
    /// What scripts may read.
    pub world: Arc<dyn World>,
    /// Follow-up plans allowed per incident, so escalation cannot loop forever.
    pub max_follow_ups: usize,
}

impl Executor {
    /// Runs a plan, then `on_result` and any follow-up plans it returns.
    pub async fn run_incident(
        &self,
        playbook: Arc<Playbook>,
        anomaly: Anomaly,
        plan: Plan,
    ) -> Result<(), AuditError> {
        let mut plan = plan;
        let mut round = 0;
        loop {
            let results = self.execute(&playbook, &plan, round).await?;
            if !playbook.has_on_result {
                return Ok(());
            }
            let r = serde_json::to_value(&results).expect("results serialise");
            let (pb, a, limits, world) = (
                playbook.clone(),
                anomaly.clone(),
                self.limits.clone(),
                self.world.clone(),
            );
            let follow = tokio::task::spawn_blocking(move || {
                pb.on_result(&a, &r, &limits, world, unix_now())
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
            match follow {
                Ok(None) => {
                    self.audit
                        .record(Event::IncidentDone(IncidentDone {
                            anomaly_id: anomaly.id.clone(),
                            playbook: playbook.name.clone(),
                            round,
                            results,
                        }))
                        .await?;
                    return Ok(());
                }
                Ok(Some(next)) if round < self.max_follow_ups => {
                    round += 1;
                    warn!(playbook = %playbook.name, anomaly = %anomaly.id, round, "on_result escalates: {}", next.render());
                    self.audit
                        .record(Event::Plan(PlanChosen {
                            anomaly_id: anomaly.id.clone(),
                            playbook: playbook.name.clone(),
                            mode: playbook.mode.as_str().into(),
                            round,
                            after: Some(results),
                            actions: next.actions.clone(),
                        }))
                        .await?;
                    plan = next;
                }
                Ok(Some(next)) => {
                    warn!(playbook = %playbook.name, anomaly = %anomaly.id, "follow-up plan dropped: escalation limit reached");
                    self.audit
                        .record(Event::EscalationLimit(EscalationLimit {
                            anomaly_id: anomaly.id.clone(),
                            playbook: playbook.name.clone(),
                            limit: self.max_follow_ups,
                            dropped_actions: next.actions,
                        }))
                        .await?;
                    return Ok(());
                }
                Err(e) => {
                    warn!(playbook = %playbook.name, anomaly = %anomaly.id, error = %e, "on_result failed");
                    self.audit
                        .record(Event::PlaybookFailed(PlaybookFailed {
                            anomaly_id: anomaly.id.clone(),
                            playbook: playbook.name.clone(),
                            stage: "on_result".into(),
                            error: e,
                        }))
                        .await?;
                    return Ok(());
                }
            }
        }
    }

    /// Runs one plan's steps in order: intent, dispatch (dry-run), outcome, verification.
    pub async fn execute(
        &self,
        playbook: &Playbook,
        plan: &Plan,
        round: usize,
    ) -> Result<Vec<StepResult>, AuditError> {
        let mut results = Vec::with_capacity(plan.actions.len());
        let mut stopped = false;
        for (i, action) in plan.actions.iter().enumerate() {
            let step = i + 1;
            let mut result = StepResult {
                step,
                kind: action.kind.clone(),
                target: action.target.clone(),
                params: action.params.clone(),
                outcome: Outcome::Skipped,
                verified: None,
                failed: false,
                escalated: false,
            };
            if stopped {
                results.push(result);
                continue;
            }
            // The intent must be durable before anything could be dispatched.
            self.audit
                .record(Event::ActionIntent(ActionIntent {
                    anomaly_id: plan.anomaly_id.clone(),
                    playbook: plan.playbook.clone(),
                    round,
                    step,
                    mode: playbook.mode.as_str().into(),
                    effective_mode: "dry-run".into(),
                    action: action.clone(),
                }))
                .await?;
            result.outcome = Outcome::DryRun;
            info!(playbook = %plan.playbook, anomaly = %plan.anomaly_id, step, outcome = result.outcome.as_str(), "{action}");
            self.audit
                .record(Event::ActionOutcome(ActionOutcome {
                    anomaly_id: plan.anomaly_id.clone(),
                    playbook: plan.playbook.clone(),
                    round,
                    step,
                    kind: action.kind.clone(),
                    outcome: result.outcome,
                }))
                .await?;
            if action.verify.is_some() {
                let passed = self.verify(plan, round, step, action).await?;
                result.verified = Some(passed);
                result.failed = !passed;
            }
            if result.failed {
                match action.on_failure {
                    OnFailure::Continue => {}
                    OnFailure::Stop => stopped = true,
                    OnFailure::Escalate => {
                        stopped = true;
                        result.escalated = true;
                    }
                }
            }
            results.push(result);
        }
        Ok(results)
    }

    /// Polls the step's PromQL condition until it returns data or the deadline passes.
    async fn verify(
        &self,
        plan: &Plan,
        round: usize,
        step: usize,
        action: &Action,
    ) -> Result<bool, AuditError> {
        let v = action.verify.as_ref().expect("checked by caller");
        let started = Instant::now();
        let mut last_error = None;
        let passed = loop {
            match self.source.instant(&v.query).await {
                Ok(points) if !points.is_empty() => break true,
                Ok(_) => last_error = None,
                Err(e) => last_error = Some(e.to_string()),
            }
            if started.elapsed() + self.verify_every > v.within {
                break false;
            }
            tokio::time::sleep(self.verify_every).await;
        };
        let elapsed = started.elapsed().as_secs_f64();
        info!(playbook = %plan.playbook, anomaly = %plan.anomaly_id, step, passed, elapsed_secs = elapsed, query = %v.query, "verification");
        self.audit
            .record(Event::Verification(Verification {
                anomaly_id: plan.anomaly_id.clone(),
                playbook: plan.playbook.clone(),
                round,
                step,
                query: v.query.clone(),
                within_secs: v.within.as_secs_f64(),
                passed,
                elapsed_secs: elapsed,
                last_error,
            }))
            .await?;
        Ok(passed)
    }
}
