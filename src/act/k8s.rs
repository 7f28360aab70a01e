//! Kubernetes: reads for playbooks and the effector for `k8s.*` actions, through
//! `kube::Client`. Every write is sent with `dryRun=All` in dry-run mode, so the API
//! server validates it (RBAC, admission, PodDisruptionBudgets) without persisting.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::time::Instant;

use super::effect::{ActError, Effector, Prepared, Report};
use crate::playbook::Action;
use crate::source::BoxFuture;

/// `[kubernetes]`: where the cluster's credentials come from, and the limits of calls.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settings {
    /// A kubeconfig file; without it `KUBECONFIG`, `~/.kube/config`, then the in-cluster
    /// service account are tried, as kubectl does.
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use instead of its current one.
    pub context: Option<String>,
    /// Limit of one API call.
    #[serde(with = "crate::config::humantime_serde_str")]
    pub timeout: Duration,
    /// The most objects one `k8s::list` returns; a longer answer is an error.
    pub max_list_items: usize,
    /// Default time limit of one action (a drain, an eviction retried under a PDB);
    /// a step's `params.timeout` overrides it.
    #[serde(with = "crate::config::humantime_serde_str")]
    pub action_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            kubeconfig: None,
            context: None,
            timeout: Duration::from_secs(10),
            max_list_items: 1000,
            action_timeout: Duration::from_secs(300),
        }
    }
}

/// A connected Kubernetes client.
pub struct Kube {
    settings: Settings,
}

impl Kube {
    /// Loads the credentials the settings name and builds the client.
    pub async fn connect(settings: &Settings) -> Result<Kube, ActError> {
        Err(ActError::Config {
            layer: "kubernetes",
            message: format!("not implemented yet ({settings:?})"),
        })
    }

    /// The settings this client was built with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// One object of a kind (`pods`, `deployments`, `statefulsets`, `daemonsets`,
    /// `nodes`, `events`, `poddisruptionbudgets`), or `None` when it does not exist.
    pub async fn get(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Value>, String> {
        Err(format!(
            "k8s get {kind} {namespace}/{name}: not implemented yet"
        ))
    }

    /// Objects of a kind in a namespace (`""`: all) matching a label selector.
    pub async fn list(
        &self,
        kind: &str,
        namespace: &str,
        selector: &str,
    ) -> Result<Vec<Value>, String> {
        Err(format!(
            "k8s list {kind} {namespace} {selector}: not implemented yet"
        ))
    }
}

impl Effector for Kube {
    fn prepare<'a>(&'a self, action: &'a Action) -> BoxFuture<'a, Result<Prepared, Report>> {
        Box::pin(async move {
            Err(Report::new(
                super::Outcome::Failed,
                format!("{}: not implemented yet", action.kind),
            ))
        })
    }

    fn execute<'a>(
        &'a self,
        action: &'a Action,
        _prepared: Prepared,
        _dry_run: bool,
        _deadline: Instant,
    ) -> BoxFuture<'a, Report> {
        Box::pin(async move {
            Report::new(
                super::Outcome::Failed,
                format!("{}: not implemented yet", action.kind),
            )
        })
    }

    fn observe<'a>(&'a self, action: &'a Action) -> BoxFuture<'a, Result<Value, String>> {
        Box::pin(async move { Err(format!("{}: not implemented yet", action.kind)) })
    }
}
