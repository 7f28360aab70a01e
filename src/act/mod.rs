//! The executor: the only door to the outside world. Every action is recorded in the
//! audit log (and fsynced) before it is dispatched, and its outcome after; each step's
//! verification runs against the real Prometheus; a playbook's `on_result` may then
//! return a follow-up plan (escalation), which runs the same way.
//!
//! A step runs in its playbook's mode capped by `agent.mode`: `auto` sends its
//! requests, `dry-run` sends them as the API's own dry run (or records them where the
//! API has none), `approval` records the step as not executed.

pub mod approval;
pub mod control;
pub mod effect;
pub mod guard;
pub mod k8s;
mod live;
pub mod notify;
pub mod openstack;

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::{error, info, warn};

pub use effect::{ActError, Effector, Outcome, Prepared, Report, Request};
pub use guard::Refusal;

use crate::anomaly::Anomaly;
use crate::audit::{
    ActionIntent, ActionOutcome, ApprovalRequested, AuditError, Auditor, BreakerTripped,
    EscalationLimit, Event, GuardrailRefused, IncidentDone, PlanChosen, PlaybookFailed,
    Verification,
};
use crate::playbook::{Action, Limits, Mode, OnFailure, Plan, Playbook, World};
use crate::source::{unix_now, Source};

/// The clients homeostat acts through; a layer that is not configured is `None`.
#[derive(Clone, Default)]
pub struct Effectors {
    /// `[kubernetes]`: `k8s.*` actions.
    pub kube: Option<Arc<k8s::Kube>>,
    /// `[openstack]`: `openstack.*` actions.
    pub openstack: Option<Arc<openstack::OpenStack>>,
    /// `notify.*` actions (Alertmanager and webhooks).
    pub notify: Option<Arc<notify::Notifier>>,
}

impl Effectors {
    /// The effector of an action kind and its default time limit, or the config section
    /// that would configure it.
    fn of(&self, kind: &str) -> Result<(&dyn Effector, Duration), &'static str> {
        let layer = kind.split('.').next().unwrap_or("");
        match layer {
            "k8s" => self
                .kube
                .as_deref()
                .map(|k| (k as &dyn Effector, k.settings().action_timeout))
                .ok_or("[kubernetes]"),
            "openstack" => self
                .openstack
                .as_deref()
                .map(|o| (o as &dyn Effector, o.settings().action_timeout))
                .ok_or("[openstack]"),
            _ => self
                .notify
                .as_deref()
                .map(|n| (n as &dyn Effector, n.timeout()))
                .ok_or("[notify]"),
        }
    }
}

/// Installs ring as the process's one rustls crypto provider. The Kubernetes and
/// OpenStack clients and the API's TLS all use rustls; when more than one provider is
/// compiled in, rustls panics at the first TLS call unless one is installed. Idempotent.
/// (ring's provider is deprecated for lacking post-quantum key exchange: see
/// `server::tls` for why ring and not aws-lc-rs.)
#[allow(deprecated)]
pub fn install_crypto_provider() {
    // Err means one is installed already (a second call, or a test harness).
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
}

/// Builds the clients the config names: Kubernetes and OpenStack when their sections
/// are present (credentials are loaded and checked now, not at the first action).
pub async fn connect(config: &crate::config::Config) -> Result<Effectors, ActError> {
    let kube = match &config.kubernetes {
        Some(s) => Some(Arc::new(k8s::Kube::connect(s).await?)),
        None => None,
    };
    let openstack = match &config.openstack {
        Some(s) => Some(Arc::new(openstack::OpenStack::connect(s).await?)),
        None => None,
    };
    Ok(Effectors {
        kube,
        openstack,
        notify: Some(Arc::new(notify::Notifier::new(config.notify.clone()))),
    })
}

impl Effectors {
    /// Reads an action's target now (for reconciling an intent a crash left open).
    pub async fn observe(&self, action: &Action) -> Result<Value, String> {
        match self.of(&action.kind) {
            Ok((effector, _)) => effector.observe(action).await,
            Err(section) => Err(format!("no {section} client is configured")),
        }
    }
}

/// The mode a step runs in: its playbook's, but never more than `cap` allows
/// (`dry-run` < `approval` < `auto`).
pub fn effective_mode(playbook: Mode, cap: Mode) -> Mode {
    fn rank(m: Mode) -> u8 {
        match m {
            Mode::DryRun => 0,
            Mode::Approval => 1,
            Mode::Auto => 2,
        }
    }
    if rank(playbook) <= rank(cap) {
        playbook
    } else {
        cap
    }
}

/// How a refused step ended: paused, or refused.
fn refusal_outcome(r: &Refusal) -> Outcome {
    if r.rule == "paused" {
        Outcome::Paused
    } else {
        Outcome::Refused
    }
}

/// A step's time limit: its `params.timeout`, or its layer's default.
fn step_timeout(action: &Action, default: Duration) -> Duration {
    action
        .params
        .get("timeout")
        .and_then(Value::as_str)
        .and_then(|t| humantime::parse_duration(t).ok())
        .unwrap_or(default)
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
    /// What the API answered or what was observed (`null` when nothing was sent).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub detail: Value,
    /// `Some(true/false)` when it had a `verify`, `None` otherwise.
    pub verified: Option<bool>,
    /// Whether the step counts as failed (its verification did not hold).
    pub failed: bool,
    /// Whether its failure escalated to `on_result`.
    pub escalated: bool,
    /// The rule that refused it, if one did: a guardrail, or the target's own (opt-out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_by: Option<String>,
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
    /// The clients actions are sent through.
    pub effectors: Effectors,
    /// `agent.mode`: the most any playbook may do.
    pub mode_cap: Mode,
    /// Where step outcomes are counted.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The guardrails every incident and action passes.
    pub guard: Arc<guard::Guard>,
    /// Where plans wait for approval (`None`: approval-mode steps are recorded as not
    /// executed).
    pub approvals: Option<Arc<approval::Approvals>>,
}

impl Executor {
    /// Runs a plan, then `on_result` and any follow-up plans it returns.
    /// `plan_seq` is the audit sequence number of the plan's record.
    pub async fn run_incident(
        &self,
        playbook: Arc<Playbook>,
        anomaly: Anomaly,
        plan: Plan,
        plan_seq: u64,
    ) -> Result<(), AuditError> {
        self.run(playbook, anomaly, plan, plan_seq, None).await
    }

    /// Runs a plan an SRE approved (`round`: the round that waited), then its
    /// follow-ups as the playbook's mode allows (a follow-up waits for its own approval).
    pub async fn run_approved(
        &self,
        playbook: Arc<Playbook>,
        anomaly: Anomaly,
        plan: Plan,
        round: usize,
        grant_seq: u64,
    ) -> Result<(), AuditError> {
        self.run(playbook, anomaly, plan, grant_seq, Some(round))
            .await
    }

    async fn run(
        &self,
        playbook: Arc<Playbook>,
        anomaly: Anomaly,
        plan: Plan,
        plan_seq: u64,
        approved: Option<usize>,
    ) -> Result<(), AuditError> {
        let _slot = match self.guard.begin_incident(&playbook) {
            Ok(slot) => slot,
            Err(refusal) => {
                warn!(playbook = %playbook.name, anomaly = %anomaly.id, rule = refusal.rule, "incident refused: {}", refusal.message);
                self.refuse(&plan, 0, 0, None, &refusal).await?;
                self.metrics.action("incident", Outcome::Refused.as_str());
                return Ok(());
            }
        };
        let last = self
            .rounds(playbook.clone(), anomaly.clone(), plan, plan_seq, approved)
            .await?;
        // Refusals by guardrails are not the playbook's failures: a storm held back
        // must not disable the playbook that would fix it.
        let failed = last
            .iter()
            .any(|r| r.failed && r.refused_by.is_none() && r.outcome != Outcome::Paused);
        let acted = last
            .iter()
            .any(|r| r.refused_by.is_none() && r.outcome != Outcome::NotRun);
        if !acted {
            return Ok(());
        }
        if let Some(failures) = self.guard.incident_ended(&playbook.name, failed) {
            error!(playbook = %playbook.name, failures, "circuit breaker open: the playbook runs no more until an SRE resets it (homeostat breaker reset)");
            self.audit
                .record(Event::BreakerTripped(BreakerTripped {
                    playbook: playbook.name.clone(),
                    failures,
                }))
                .await?;
            self.metrics.breaker(&playbook.name, true);
            if let Some(n) = &self.effectors.notify {
                n.spawn_alert(
                    "HomeostatBreakerOpen",
                    &playbook.name,
                    format!(
                        "playbook {} disabled after {failures} failed incidents; reset it once understood",
                        playbook.name
                    ),
                );
            }
        }
        Ok(())
    }

    /// The plan's rounds: the plan, then `on_result`'s follow-ups; the last results.
    async fn rounds(
        &self,
        playbook: Arc<Playbook>,
        anomaly: Anomaly,
        plan: Plan,
        plan_seq: u64,
        approved: Option<usize>,
    ) -> Result<Vec<StepResult>, AuditError> {
        let mut plan = plan;
        let mut plan_seq = plan_seq;
        let mut round = approved.unwrap_or(0);
        loop {
            let mode = match effective_mode(playbook.mode, self.mode_cap) {
                // The approval is the human gate that mode asked for.
                Mode::Approval if approved == Some(round) => Mode::Auto,
                Mode::Approval if self.approvals.is_some() => {
                    self.queue_for_approval(&playbook, &anomaly, &plan, round)
                        .await?;
                    return Ok(Vec::new());
                }
                m => m,
            };
            let ctx = notify::Context {
                anomaly: anomaly.clone(),
                playbook: playbook.name.clone(),
                plan: plan.render(),
                plan_seq: Some(plan_seq),
            };
            let results = self.execute(&playbook, &plan, round, &ctx, mode).await?;
            if !playbook.has_on_result {
                return Ok(results);
            }
            let r = serde_json::to_value(&results).expect("results serialise");
            let last = results.clone();
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
                    return Ok(last);
                }
                Ok(Some(next)) if round < self.max_follow_ups => {
                    round += 1;
                    warn!(playbook = %playbook.name, anomaly = %anomaly.id, round, "on_result escalates: {}", next.render());
                    plan_seq = self
                        .audit
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
                    return Ok(last);
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
                    return Ok(last);
                }
            }
        }
    }

    /// Queues a plan for approval, audits it, and tells Alertmanager a plan waits.
    async fn queue_for_approval(
        &self,
        playbook: &Playbook,
        anomaly: &Anomaly,
        plan: &Plan,
        round: usize,
    ) -> Result<(), AuditError> {
        let Some(q) = &self.approvals else {
            return Ok(());
        };
        let ttl = playbook
            .limits
            .approval_ttl
            .unwrap_or(approval::DEFAULT_TTL);
        let mut queued = plan.clone();
        queued.anomaly_id = anomaly.id.clone();
        match q.request(&playbook.name, anomaly, &queued, round, unix_now(), ttl) {
            Ok(p) => {
                warn!(playbook = %playbook.name, anomaly = %anomaly.id, id = %p.id, hash = %p.plan_hash, "plan waits for approval: homeostat approvals approve {} --hash {}", p.id, &p.plan_hash[..12]);
                self.audit
                    .record(Event::ApprovalRequested(ApprovalRequested {
                        id: p.id.clone(),
                        anomaly_id: anomaly.id.clone(),
                        playbook: playbook.name.clone(),
                        round,
                        plan_hash: p.plan_hash.clone(),
                        expires_at: crate::source::rfc3339(p.expires_unix),
                    }))
                    .await?;
                if let Some(n) = &self.effectors.notify {
                    n.spawn_alert(
                        "HomeostatApprovalPending",
                        &playbook.name,
                        format!(
                            "plan {} for {} waits for approval ({} steps): {}",
                            p.id,
                            anomaly.id,
                            plan.actions.len(),
                            plan.render()
                        ),
                    );
                }
            }
            Err(e) => {
                error!(playbook = %playbook.name, anomaly = %anomaly.id, error = %e, "cannot queue the plan for approval: it does not run");
                self.audit
                    .record(Event::PlaybookFailed(PlaybookFailed {
                        anomaly_id: anomaly.id.clone(),
                        playbook: playbook.name.clone(),
                        stage: "approval".into(),
                        error: e.to_string(),
                    }))
                    .await?;
            }
        }
        Ok(())
    }

    /// Runs one plan's steps in order, in `mode`: intent, dispatch, outcome,
    /// verification. `ctx` is what notification steps describe.
    pub async fn execute(
        &self,
        playbook: &Playbook,
        plan: &Plan,
        round: usize,
        ctx: &notify::Context,
        mode: Mode,
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
                outcome: Outcome::NotRun,
                detail: Value::Null,
                verified: None,
                failed: false,
                escalated: false,
                refused_by: None,
            };
            if stopped {
                results.push(result);
                continue;
            }
            if mode != Mode::Approval {
                if let Err(refusal) = self.check(playbook, action, ctx).await {
                    warn!(playbook = %plan.playbook, anomaly = %plan.anomaly_id, step, rule = refusal.rule, "{action}: refused: {}", refusal.message);
                    self.refuse(plan, round, step, Some(action), &refusal)
                        .await?;
                    self.metrics
                        .action(&action.kind, refusal_outcome(&refusal).as_str());
                    result.outcome = refusal_outcome(&refusal);
                    result.detail =
                        serde_json::json!({ "rule": refusal.rule, "message": refusal.message });
                    result.refused_by = Some(refusal.rule.into());
                    result.failed = true;
                    stopped = true;
                    results.push(result);
                    continue;
                }
            }
            let report = self
                .dispatch(playbook, plan, round, step, action, mode, ctx)
                .await?;
            info!(playbook = %plan.playbook, anomaly = %plan.anomaly_id, step, outcome = report.outcome.as_str(), "{action}");
            self.metrics.action(&action.kind, report.outcome.as_str());
            self.audit
                .record(Event::ActionOutcome(ActionOutcome {
                    anomaly_id: plan.anomaly_id.clone(),
                    playbook: plan.playbook.clone(),
                    round,
                    step,
                    kind: action.kind.clone(),
                    outcome: report.outcome,
                    detail: (!report.detail.is_null()).then(|| report.detail.clone()),
                }))
                .await?;
            result.outcome = report.outcome;
            // The target itself said no (its opt-out): not the playbook's failure.
            if report.outcome == Outcome::Refused {
                result.refused_by = report.detail["rule"].as_str().map(String::from);
            }
            result.detail = report.detail;
            result.failed = report.outcome.is_failure();
            let ran = matches!(
                report.outcome,
                Outcome::Done | Outcome::Skipped | Outcome::DryRun
            );
            if ran && action.verify.is_some() {
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

    /// Every guardrail, in order: the kill switch, then the rules that read live state
    /// (so a refused action uses up no rate budget), then the counting ones.
    async fn check(
        &self,
        playbook: &Playbook,
        action: &Action,
        ctx: &notify::Context,
    ) -> Result<(), Refusal> {
        if let Some(reason) = self.guard.paused() {
            return Err(Refusal::new("paused", reason));
        }
        live::check(self, playbook, action, ctx).await?;
        self.guard.admit(playbook, action, Instant::now())
    }

    /// Audits a refusal (`step` 0: the whole incident).
    async fn refuse(
        &self,
        plan: &Plan,
        round: usize,
        step: usize,
        action: Option<&Action>,
        refusal: &Refusal,
    ) -> Result<u64, AuditError> {
        self.audit
            .record(Event::GuardrailRefused(GuardrailRefused {
                anomaly_id: plan.anomaly_id.clone(),
                playbook: plan.playbook.clone(),
                round,
                step,
                kind: action.map(|a| a.kind.clone()).unwrap_or_default(),
                target: action.map(|a| a.target.clone()).unwrap_or_default(),
                rule: refusal.rule.into(),
                message: refusal.message.clone(),
            }))
            .await
    }

    /// Reads the target, records the intent with the exact requests (durable before
    /// anything is sent), then sends them as `mode` allows.
    #[allow(clippy::too_many_arguments)]
    async fn dispatch(
        &self,
        playbook: &Playbook,
        plan: &Plan,
        round: usize,
        step: usize,
        action: &Action,
        mode: Mode,
        ctx: &notify::Context,
    ) -> Result<Report, AuditError> {
        let intent = |observed, requests| {
            Event::ActionIntent(ActionIntent {
                anomaly_id: plan.anomaly_id.clone(),
                playbook: plan.playbook.clone(),
                round,
                step,
                mode: playbook.mode.as_str().into(),
                effective_mode: mode.as_str().into(),
                action: action.clone(),
                observed,
                requests,
            })
        };
        if mode == Mode::Approval {
            self.audit.record(intent(None, Vec::new())).await?;
            return Ok(Report::new(
                Outcome::NotExecuted,
                "the playbook asks for approval, and no approval queue is kept here",
            ));
        }
        let (effector, default_timeout) = match self.effectors.of(&action.kind) {
            Ok(e) => e,
            Err(section) => {
                self.audit.record(intent(None, Vec::new())).await?;
                return Ok(match mode {
                    Mode::DryRun => Report::new(
                        Outcome::DryRun,
                        format!("recorded only: no {section} client is configured"),
                    ),
                    _ => Report::new(
                        Outcome::Failed,
                        format!("no {section} client is configured"),
                    ),
                });
            }
        };
        let deadline = Instant::now() + step_timeout(action, default_timeout);
        let prepared = match &self.effectors.notify {
            // A notification describes its incident, which the trait's `prepare` cannot see.
            Some(n) if action.kind.starts_with("notify.") => n.prepare_in(action, ctx),
            _ => effector.prepare(action).await,
        };
        let prepared = match prepared {
            Ok(p) => p,
            Err(report) => {
                self.audit.record(intent(None, Vec::new())).await?;
                return Ok(report);
            }
        };
        self.audit
            .record(intent(
                Some(prepared.observed.clone()),
                prepared.requests.clone(),
            ))
            .await?;
        if prepared.requests.is_empty() {
            return Ok(Report {
                outcome: Outcome::Skipped,
                detail: serde_json::json!({
                    "message": "already as wanted",
                    "observed": prepared.observed,
                }),
            });
        }
        // The kill switch also stops an action that is waiting (a retry, an effect
        // not yet seen): what it left behind is read and recorded.
        let run = effector.execute(action, prepared, mode == Mode::DryRun, deadline);
        tokio::select! {
            report = run => Ok(report),
            reason = self.until_paused() => {
                let observed = effector.observe(action).await;
                Ok(Report {
                    outcome: Outcome::Paused,
                    detail: serde_json::json!({
                        "message": format!("interrupted by pause ({reason}): requests may have been sent"),
                        "observed": observed.unwrap_or_else(Value::String),
                    }),
                })
            }
        }
    }

    /// Resolves with the reason once the kill switch is thrown (checked every interval).
    async fn until_paused(&self) -> String {
        loop {
            tokio::time::sleep(self.verify_every).await;
            if let Some(reason) = self.guard.paused() {
                return reason;
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditLog, AuditRecord};
    use crate::playbook::{RecordedWorld, Verify};
    use crate::source::{BoxFuture, History, Point, SourceError};

    /// A store whose every query answers with no data: a verification never holds.
    struct Silent;

    impl Source for Silent {
        fn instant_at<'a>(
            &'a self,
            _: &'a str,
            _: Option<f64>,
        ) -> BoxFuture<'a, Result<Vec<Point>, SourceError>> {
            Box::pin(async { Ok(vec![]) })
        }

        fn range<'a>(
            &'a self,
            _: &'a str,
            _: f64,
            _: Duration,
            _: Duration,
        ) -> BoxFuture<'a, Result<Vec<History>, SourceError>> {
            Box::pin(async { Ok(vec![]) })
        }
    }

    fn action(kind: &str, verify: Option<Verify>, on_failure: OnFailure) -> Action {
        Action {
            kind: kind.into(),
            target: [("node".to_string(), "n1".to_string())].into(),
            params: Default::default(),
            verify,
            on_failure,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn each_step_is_audited_before_it_runs_and_a_failed_verification_stops_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.jsonl");
        let limits = Limits::default();
        let playbook = Playbook::from_source(
            r#"const PLAYBOOK = #{ name: "drain", trigger: #{ signal: "s" },
                allowed: #{ kinds: ["k8s.cordon", "k8s.drain"] } };
               fn plan(a) { [] }"#,
            std::path::Path::new("drain.rhai"),
            &limits,
        )
        .unwrap();
        let executor = Executor {
            audit: Auditor::new(AuditLog::open(&log).unwrap()),
            source: Arc::new(Silent),
            verify_every: Duration::from_secs(1),
            limits,
            world: Arc::new(RecordedWorld::default()),
            max_follow_ups: 3,
            effectors: Effectors::default(),
            mode_cap: Mode::DryRun,
            metrics: Arc::new(crate::metrics::Metrics::new(Duration::from_secs(60))),
            guard: guard::Guard::new(
                guard::Settings {
                    pause_file: dir.path().join("pause"),
                    ..Default::default()
                },
                Default::default(),
            ),
            approvals: None,
        };
        let plan = Plan {
            playbook: "drain".into(),
            anomaly_id: "an-1".into(),
            actions: vec![
                action(
                    "k8s.cordon",
                    Some(Verify {
                        query: "node_ready".into(),
                        within: Duration::from_secs(3),
                    }),
                    OnFailure::Stop,
                ),
                action("k8s.drain", None, OnFailure::Stop),
            ],
        };
        let results = executor
            .execute(
                &playbook,
                &plan,
                0,
                &notify::Context::default(),
                Mode::DryRun,
            )
            .await
            .unwrap();

        assert_eq!(results.len(), 2);
        assert_eq!(results[0].outcome, Outcome::DryRun);
        assert_eq!(results[0].verified, Some(false));
        assert!(results[0].failed && !results[0].escalated);
        assert_eq!(
            results[1].outcome,
            Outcome::NotRun,
            "ran after a failed step"
        );
        let records: Vec<AuditRecord> = crate::audit::read_records(&log).unwrap();
        let kinds: Vec<&str> = records.iter().map(|r| r.kind.as_str()).collect();
        // Intent strictly before the outcome; nothing at all for the skipped step.
        assert_eq!(kinds, ["action_intent", "action_outcome", "verification"]);
        let Ok(Event::ActionIntent(intent)) = records[0].event() else {
            panic!("{:?}", records[0]);
        };
        assert_eq!(intent.action, plan.actions[0]);
        assert_eq!(intent.effective_mode, "dry-run");
        let Ok(Event::Verification(v)) = records[2].event() else {
            panic!("{:?}", records[2]);
        };
        assert!(!v.passed);
        // Polled every second until one more poll would pass the 3 s deadline.
        assert_eq!(v.elapsed_secs, 3.0);
        assert_eq!(crate::audit::verify(&log), Ok(3));
    }
}
