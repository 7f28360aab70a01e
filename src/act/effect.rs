//! What every effector (Kubernetes, OpenStack, notifications) speaks to the executor:
//! read the target and work out the exact requests (`prepare`), send them (`execute`),
//! and read the target again after a crash (`observe`). The executor audits between
//! the steps, so an effector never writes the audit log and never decides a mode.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::time::Instant;

use crate::playbook::Action;
use crate::source::BoxFuture;

/// How one action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The API accepted every request and the effect was observed.
    Done,
    /// The target was already in the wanted state: nothing was sent.
    Skipped,
    /// The API or a rule said no (a PodDisruptionBudget, a 403, a policy, a lock).
    Refused,
    /// A request failed (with the API's status and message in the detail).
    Failed,
    /// The effect was not observed within the step's time limit.
    TimedOut,
    /// Validated by the API's own dry run, or recorded only where it has none.
    DryRun,
    /// Not run because its playbook waits for approval.
    NotExecuted,
    /// Not run because an earlier step of the plan stopped it.
    NotRun,
    /// Not run, or interrupted, because the kill switch is thrown.
    Paused,
}

impl Outcome {
    /// The name written to the audit log.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::Skipped => "skipped",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
            Outcome::TimedOut => "timed_out",
            Outcome::DryRun => "dry_run",
            Outcome::NotExecuted => "not_executed",
            Outcome::NotRun => "not_run",
            Outcome::Paused => "paused",
        }
    }

    /// Whether the step counts as failed for its plan (`on_failure` applies).
    pub fn is_failure(&self) -> bool {
        matches!(self, Outcome::Refused | Outcome::Failed | Outcome::TimedOut)
    }
}

/// One HTTP request an effector sends, as it is recorded in the intent before it is
/// sent: what dry-run shows and what would run. Credentials are never part of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// `GET`, `POST`, `PATCH`, `PUT`, `DELETE`.
    pub method: String,
    /// Path and query relative to the API's endpoint, e.g.
    /// `/api/v1/namespaces/shop/pods/cart-1/eviction` or `/servers/{id}/action`.
    pub path: String,
    /// Headers that change what the request means (`Content-Type` of a patch,
    /// `OpenStack-API-Version`); never `Authorization` or `X-Auth-Token`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The JSON body, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
}

/// What `prepare` found: the target as read, and the requests the action will send.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// The parts of the target's state the action depends on (a node's
    /// `spec.unschedulable`, a server's `status` and `OS-EXT-STS:task_state`).
    pub observed: Value,
    /// The requests, in order. Empty when the target is already as wanted (`skipped`).
    pub requests: Vec<Request>,
}

/// How an action ended, with what the API answered or what was observed.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The outcome.
    pub outcome: Outcome,
    /// For the audit log: status codes, API messages, the observed end state, a result
    /// per pod of a drain. Never credentials.
    pub detail: Value,
}

impl Report {
    /// A report with a one-line message as its detail.
    pub fn new(outcome: Outcome, message: impl Into<String>) -> Report {
        Report {
            outcome,
            detail: serde_json::json!({ "message": message.into() }),
        }
    }
}

/// One layer homeostat can act on. Implementations are the only code that sends
/// requests that change anything; the executor calls them, and audits around them.
pub trait Effector: Send + Sync {
    /// Reads the target and works out the exact requests `action` needs; sends nothing
    /// that changes anything. An `Err` is the report of an action that cannot run (the
    /// target does not exist, the API refused the read).
    fn prepare<'a>(&'a self, action: &'a Action) -> BoxFuture<'a, Result<Prepared, Report>>;

    /// Sends the prepared requests and waits for their effect until `deadline`. With
    /// `dry_run`, sends them as the API's own dry run where it has one (Kubernetes'
    /// `dryRun=All`), and sends nothing where it has none (outcome `DryRun`).
    /// A non-idempotent request is never resent after an ambiguous failure without
    /// reading the target first.
    fn execute<'a>(
        &'a self,
        action: &'a Action,
        prepared: Prepared,
        dry_run: bool,
        deadline: Instant,
    ) -> BoxFuture<'a, Report>;

    /// Reads the target's state now: how an intent whose outcome a crash lost is
    /// reconciled (it is never executed again).
    fn observe<'a>(&'a self, action: &'a Action) -> BoxFuture<'a, Result<Value, String>>;
}

/// Why an effector's client could not be built at start.
#[derive(Debug, thiserror::Error)]
pub enum ActError {
    /// The configuration or credentials could not be loaded.
    #[error("{layer}: {message}")]
    Config {
        /// `kubernetes`, `openstack`, `alertmanager`.
        layer: &'static str,
        /// What is wrong, without secrets.
        message: String,
    },
}
