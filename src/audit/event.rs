//! What an audit record says, typed: one [`Event`] variant per record kind, one struct
//! per variant whose fields are that kind's `data` keys.
//!
//! An event is written through `serde_json::Value`, as the untyped writers before it
//! were, so a record's `data` is byte for byte what those wrote (keys in the order
//! `Value` keeps them, numbers as serde_json writes them).
//!
//! Older versions wrote fewer keys (no `round` before escalation, no `group` before
//! grouping, no `evidence` on anomalies …). A key a record lacks therefore reads as its
//! field's default (empty, zero, `None`), as [`Anomaly`] already does; a record whose
//! keys have the wrong type, or whose kind is unknown, does not read as an event.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::act::{Outcome, Request, StepResult};
use crate::anomaly::Anomaly;
use crate::labels::Labels;
use crate::playbook::Action;

use super::Head;

/// One step the agent took, as the audit log records it (`kind` and `data`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "data", rename_all = "snake_case")]
pub enum Event {
    /// The agent started, with what it watches and runs.
    AgentStarted(AgentStarted),
    /// The agent stopped.
    AgentStopped(AgentStopped),
    /// A playbook file was refused (at start, or on a reload).
    PlaybookRejected(PlaybookRejected),
    /// A changed playbook file replaced its previous version.
    PlaybookReloaded(PlaybookReloaded),
    /// Alertmanager sent an alert (firing or resolved).
    AlertReceived(AlertReceived),
    /// Detection opened an anomaly: the event playbooks see.
    AnomalyOpened(Anomaly),
    /// An anomaly ended.
    AnomalyClosed(AnomalyClosed),
    /// A restarted agent went on with an anomaly its previous run left open.
    AnomalyResumed(AnomalyResumed),
    /// A playbook matched an anomaly or alert; its plan comes next.
    PlaybookMatched(PlaybookMatched),
    /// A playbook matched but a plan for the same incident ran within its cooldown.
    PlaybookSuppressed(PlaybookSuppressed),
    /// A playbook's `plan` (round 0) or `on_result` (follow-up rounds) chose actions.
    Plan(PlanChosen),
    /// A playbook's `plan` or `on_result` failed.
    PlaybookFailed(PlaybookFailed),
    /// An action is about to be dispatched (durable before it is).
    ActionIntent(ActionIntent),
    /// How a dispatched action ended.
    ActionOutcome(ActionOutcome),
    /// An intent left without an outcome by a crash, reconciled at start by reading
    /// its target (never by running it again).
    ActionReconciled(ActionReconciled),
    /// A guardrail refused an incident (step 0) or an action; nothing was sent.
    GuardrailRefused(GuardrailRefused),
    /// A playbook's circuit breaker opened: it runs no more until an SRE resets it.
    BreakerTripped(BreakerTripped),
    /// An SRE reset a playbook's circuit breaker.
    BreakerReset(BreakerReset),
    /// A plan waits for an SRE's approval.
    ApprovalRequested(ApprovalRequested),
    /// An SRE approved a waiting plan, naming its hash.
    ApprovalGranted(ApprovalDecided),
    /// An SRE rejected a waiting plan.
    ApprovalRejected(ApprovalDecided),
    /// A waiting plan's TTL passed: it never runs.
    ApprovalExpired(ApprovalDecided),
    /// The kill switch was thrown: nothing is executed until resumed.
    Paused(Paused),
    /// The kill switch was released.
    Resumed(Resumed),
    /// Whether a step's success condition came true in time.
    Verification(Verification),
    /// An incident's last round ran and `on_result` asked for nothing more.
    IncidentDone(IncidentDone),
    /// `on_result` asked for another round past the limit; it was dropped.
    EscalationLimit(EscalationLimit),
    /// At open, the log was as a crash of the writer leaves it, and was put right.
    AuditRecovered(AuditRecovered),
    /// The first record of a log started by `homeostat audit seal`: the segment before it.
    AuditSealed(AuditSealed),
    /// A signal's saved models could not be used at start: its series are refitted from
    /// history instead.
    ModelsRefused(ModelsRefused),
    /// An Ed25519 signature over the record before it (its `seq` and `hash`): history up
    /// to there cannot be rewritten without the private key.
    Checkpoint(Checkpoint),
}

/// `checkpoint`: written by `homeostat audit checkpoint`, always right after the record
/// it signs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Checkpoint {
    /// The record signed: the one before this.
    pub seq: u64,
    /// Its hash.
    pub hash: String,
    /// The signer's public key (hex), to tell keys apart; verification uses the key the
    /// auditor brings, never this one.
    pub public_key: String,
    /// The Ed25519 signature (hex) of [`checkpoint_message`](super::checkpoint_message).
    pub signature: String,
}

/// `models_refused`: a models file that did not load (damaged, another schema or other
/// detection settings), and so was not used.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelsRefused {
    /// The signal.
    pub signal: String,
    /// Why the file was not used (its path included).
    pub reason: String,
}

impl Event {
    /// The record's `kind` and `data`, exactly as the log holds them.
    pub fn to_parts(&self) -> (String, Value) {
        // Serialising these types cannot fail short of a non-UTF-8 path, which the
        // untyped `json!` writers did not survive either.
        let Value::Object(mut tagged) = serde_json::to_value(self).expect("audit events serialise")
        else {
            unreachable!("an adjacently tagged enum serialises to a map")
        };
        let kind = match tagged.remove("kind") {
            Some(Value::String(k)) => k,
            other => unreachable!("the tag is the variant's name, not {other:?}"),
        };
        (kind, tagged.remove("data").unwrap_or(Value::Null))
    }

    /// Reads a record's `kind` and `data` back; fails for a kind it does not know or
    /// keys of the wrong type.
    pub fn from_parts(kind: &str, data: &Value) -> Result<Event, serde_json::Error> {
        let mut tagged = Map::new();
        tagged.insert("kind".into(), Value::from(kind));
        tagged.insert("data".into(), data.clone());
        serde_json::from_value(Value::Object(tagged))
    }
}

/// `agent_started`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentStarted {
    /// The agent's version.
    pub version: String,
    /// The configured signals' names.
    pub signals: Vec<String>,
    /// The playbooks loaded.
    pub playbooks: Vec<PlaybookVersion>,
    /// Why each playbook that failed to load was refused.
    pub rejected_playbooks: Vec<String>,
}

/// A loaded playbook and the version of its file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PlaybookVersion {
    /// The playbook's name.
    pub name: String,
    /// Its file.
    pub path: PathBuf,
    /// SHA-256 (hex) of the file.
    pub sha256: String,
}

/// `agent_stopped`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentStopped {
    /// `signal` (asked to stop) or `error` (the loop failed).
    pub reason: String,
    /// Incidents still running, abandoned.
    pub incidents_interrupted: usize,
    /// Accepted alerts not yet handled, kept in the spool for the next start (absent in
    /// records written before alerts were spooled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts_pending: Option<usize>,
}

/// `playbook_rejected`: three shapes, told apart by their keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PlaybookRejected {
    /// A changed file that does not load or check; the previous version stays active.
    Changed {
        /// The file.
        path: PathBuf,
        /// Why it was refused.
        error: String,
        /// SHA-256 of the version that stays active (`None`: none was).
        old_sha256: Option<String>,
        /// SHA-256 of the refused content.
        new_sha256: String,
    },
    /// A file that cannot be read any more; the version loaded from it stays active.
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why it cannot be read.
        error: String,
        /// SHA-256 of the version that stays active (`None`: none was).
        kept_sha256: Option<String>,
    },
    /// A playbook that failed to load at start.
    AtStart {
        /// Always `start`.
        stage: String,
        /// Why it failed (the file is named in it).
        error: String,
    },
}

/// `playbook_reloaded`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PlaybookReloaded {
    /// The file.
    pub path: PathBuf,
    /// The playbook's name.
    pub playbook: String,
    /// SHA-256 of the version it replaced (`None`: a file that had none active).
    pub old_sha256: Option<String>,
    /// SHA-256 of the new version.
    pub new_sha256: String,
}

/// `alert_received`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AlertReceived {
    /// The alert's event id (`am-<fingerprint>`).
    pub id: String,
    /// `firing` or `resolved`.
    pub status: String,
    /// The alert's labels.
    pub labels: Labels,
    /// Its annotations.
    pub annotations: BTreeMap<String, String>,
    /// RFC 3339 time it started firing, as Alertmanager sent it.
    pub starts_at: String,
}

/// `anomaly_closed`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AnomalyClosed {
    /// The anomaly's id.
    pub id: String,
    /// Its signal.
    pub signal: String,
    /// Its series.
    pub labels: Labels,
    /// How long it was open; only when it closed by returning to normal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_secs: Option<f64>,
    /// Its highest score.
    pub peak_score: f64,
    /// `back to normal`, `series vanished`, `series not in the history at restart` or
    /// `signal no longer configured`.
    pub reason: String,
}

/// `anomaly_resumed`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AnomalyResumed {
    /// The anomaly's id (unchanged).
    pub id: String,
    /// Its signal.
    pub signal: String,
    /// Its series.
    pub labels: Labels,
    /// RFC 3339 time it opened.
    pub started_at: String,
    /// Playbooks already matched or suppressed for it.
    pub handled: BTreeSet<String>,
}

/// `playbook_matched`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PlaybookMatched {
    /// The anomaly or alert id.
    pub anomaly_id: String,
    /// The playbook.
    pub playbook: String,
    /// SHA-256 of the playbook version.
    pub sha256: String,
    /// The incident group (empty in records written before grouping).
    pub group: String,
    /// The event as the playbook saw it.
    pub anomaly: Anomaly,
}

/// `playbook_suppressed`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PlaybookSuppressed {
    /// The anomaly or alert id.
    pub anomaly_id: String,
    /// The playbook.
    pub playbook: String,
    /// The incident group.
    pub group: String,
    /// Why: `incident` (the playbook answered another member of the incident) or
    /// `cooldown` (a plan for the group ran within the playbook's cooldown).
    pub reason: String,
    /// Age of the group's (or the incident's) last plan.
    pub last_plan_secs_ago: f64,
    /// The playbook's cooldown: after it, the same group (or incident) is answered again.
    pub cooldown_secs: f64,
}

/// `plan`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PlanChosen {
    /// The anomaly or alert id.
    pub anomaly_id: String,
    /// The playbook.
    pub playbook: String,
    /// The playbook's mode (`dry-run`, `approval`, `auto`).
    pub mode: String,
    /// 0 for `plan`'s, n for the n-th follow-up from `on_result`.
    pub round: usize,
    /// For a follow-up: the results of the round before it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<Vec<StepResult>>,
    /// The steps, in order.
    pub actions: Vec<Action>,
}

/// `playbook_failed`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PlaybookFailed {
    /// The anomaly or alert id.
    pub anomaly_id: String,
    /// The playbook.
    pub playbook: String,
    /// `plan` or `on_result` (empty in records written before it was kept).
    pub stage: String,
    /// What went wrong.
    pub error: String,
}

/// `action_intent`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionIntent {
    /// The anomaly or alert id.
    #[serde(default)]
    pub anomaly_id: String,
    /// The playbook.
    #[serde(default)]
    pub playbook: String,
    /// The plan's round.
    #[serde(default)]
    pub round: usize,
    /// 1-based step number.
    #[serde(default)]
    pub step: usize,
    /// The playbook's mode.
    #[serde(default)]
    pub mode: String,
    /// The mode the action actually runs in.
    #[serde(default)]
    pub effective_mode: String,
    /// The action.
    pub action: Action,
    /// The target as read before acting (absent in records older than effectors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<Value>,
    /// The exact requests about to be sent (the API's dry run sends these too).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requests: Vec<Request>,
}

/// `action_outcome`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionOutcome {
    /// The anomaly or alert id.
    #[serde(default)]
    pub anomaly_id: String,
    /// The playbook.
    #[serde(default)]
    pub playbook: String,
    /// The plan's round.
    #[serde(default)]
    pub round: usize,
    /// 1-based step number.
    #[serde(default)]
    pub step: usize,
    /// The action kind.
    #[serde(default)]
    pub kind: String,
    /// How it ended.
    pub outcome: Outcome,
    /// What the API answered or what was observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<Value>,
}

/// `guardrail_refused`: which rule said no to what.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GuardrailRefused {
    /// The anomaly or alert id.
    pub anomaly_id: String,
    /// The playbook.
    pub playbook: String,
    /// The plan's round.
    pub round: usize,
    /// 1-based step number; 0 when the whole incident was refused.
    pub step: usize,
    /// The action kind (empty for an incident).
    pub kind: String,
    /// Its target.
    pub target: BTreeMap<String, String>,
    /// The rule (`paused`, `breaker`, `max_actions`, `blast_radius`, `interlock`, ...).
    pub rule: String,
    /// What the rule saw.
    pub message: String,
}

/// `approval_requested`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ApprovalRequested {
    /// The approval id (`ap-…`).
    pub id: String,
    /// The anomaly or alert id.
    pub anomaly_id: String,
    /// The playbook.
    pub playbook: String,
    /// The plan's round.
    pub round: usize,
    /// SHA-256 of the plan: what an approval must name.
    pub plan_hash: String,
    /// When it expires (RFC 3339).
    pub expires_at: String,
}

/// `approval_granted`, `approval_rejected`, `approval_expired`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ApprovalDecided {
    /// The approval id.
    pub id: String,
    /// The anomaly or alert id.
    pub anomaly_id: String,
    /// The playbook.
    pub playbook: String,
    /// The plan's hash.
    pub plan_hash: String,
    /// Who decided (`ttl` for an expiry).
    pub by: String,
    /// Why.
    pub reason: String,
}

/// `breaker_tripped`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BreakerTripped {
    /// The playbook now disabled.
    pub playbook: String,
    /// Its consecutive failed or unverified incidents.
    pub failures: u32,
}

/// `breaker_reset`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BreakerReset {
    /// The playbook enabled again.
    pub playbook: String,
    /// Who reset it (`api`, `cli`, a user name).
    pub by: String,
    /// Why.
    pub reason: String,
}

/// `paused`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Paused {
    /// Why.
    pub reason: String,
    /// Who or what (`api`, `cli`, `file` when the pause file appeared by other means).
    pub by: String,
}

/// `resumed`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Resumed {
    /// Who or what.
    pub by: String,
}

/// `action_reconciled`: at start, an intent found without its outcome (the agent
/// stopped between the two) and what its target looks like now. It is never re-run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ActionReconciled {
    /// The anomaly or alert id.
    pub anomaly_id: String,
    /// The playbook.
    pub playbook: String,
    /// The plan's round.
    pub round: usize,
    /// 1-based step number.
    pub step: usize,
    /// The sequence number of the intent left open.
    pub intent_seq: u64,
    /// The action kind.
    pub kind: String,
    /// Its target.
    pub target: std::collections::BTreeMap<String, String>,
    /// The target's state as read now, if the read worked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed: Option<Value>,
    /// Why it could not be read, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `verification`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Verification {
    /// The anomaly or alert id.
    pub anomaly_id: String,
    /// The playbook.
    pub playbook: String,
    /// The plan's round.
    pub round: usize,
    /// 1-based step number.
    pub step: usize,
    /// The PromQL condition.
    pub query: String,
    /// How long it had to come true.
    pub within_secs: f64,
    /// Whether it did.
    pub passed: bool,
    /// How long it was polled.
    pub elapsed_secs: f64,
    /// The last query error, if the last poll failed.
    pub last_error: Option<String>,
}

/// `incident_done`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct IncidentDone {
    /// The anomaly or alert id.
    pub anomaly_id: String,
    /// The playbook.
    pub playbook: String,
    /// The last round.
    pub round: usize,
    /// What became of its steps.
    pub results: Vec<StepResult>,
}

/// `escalation_limit`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EscalationLimit {
    /// The anomaly or alert id.
    pub anomaly_id: String,
    /// The playbook.
    pub playbook: String,
    /// Follow-up rounds allowed per incident.
    pub limit: usize,
    /// The follow-up plan's steps, not run.
    pub dropped_actions: Vec<Action>,
}

/// `audit_recovered`: what a crash left at the end of the log, and what was done.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuditRecovered {
    /// The last complete record, where the log ends once recovered (0: none).
    pub last_seq: u64,
    /// Its hash (64 zeros for none).
    pub last_hash: String,
    /// The torn last line, cut off: its write never returned, so nothing acted on it.
    pub partial_line: Option<PartialLine>,
    /// The head, if it was rewritten: it lagged the last complete record by one (or,
    /// after a log's first record, was never written).
    pub head: Option<HeadRewrite>,
}

/// Bytes after a log's last newline: a line whose write was torn.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PartialLine {
    /// Where it started: the log's length once it was cut off.
    pub offset: u64,
    /// Its length in bytes.
    pub bytes: u64,
    /// SHA-256 (hex) of its bytes.
    pub sha256: String,
}

/// A head file replaced at recovery.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HeadRewrite {
    /// What it said (`None`: there was none).
    pub found: Option<Head>,
    /// What it says now.
    pub wrote: Head,
}

impl AuditRecovered {
    /// What was found and done, in words.
    pub fn describe(&self) -> String {
        let mut done = Vec::new();
        if let Some(p) = &self.partial_line {
            done.push(format!(
                "cut off a torn last line of {} bytes (sha256 {}) after record {}",
                p.bytes,
                p.sha256.get(..12).unwrap_or(&p.sha256),
                self.last_seq
            ));
        }
        if let Some(h) = &self.head {
            done.push(match &h.found {
                Some(found) => format!(
                    "head rewritten from record {} to record {}",
                    found.seq, h.wrote.seq
                ),
                None => format!("head written at record {} (there was none)", h.wrote.seq),
            });
        }
        done.join("; ")
    }
}

/// `audit_sealed`: always a log's first record, linking it to the segment set aside.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuditSealed {
    /// File name of the previous segment, in this log's directory.
    pub previous: String,
    /// SHA-256 (hex) of its bytes when it was sealed.
    pub previous_sha256: String,
    /// Its length in bytes.
    pub previous_bytes: u64,
    /// Its last record that verifies, chained from its first (0: none).
    pub last_seq: u64,
    /// That record's hash (64 zeros for none).
    pub last_hash: String,
    /// Its first bad line, if it did not verify (one past the end: a cut or torn tail).
    pub first_bad_line: Option<usize>,
    /// What is wrong there.
    pub problem: Option<String>,
    /// Why the operator sealed it.
    pub reason: String,
}
