//! OpenStack: reads for playbooks and the effector for `openstack.*` actions, through
//! the `openstack` crate's authenticated session (Keystone v3: password or application
//! credential). Nova has no server-side dry run: in dry-run mode the exact request
//! (method, path, microversion, body) is recorded and nothing is sent.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::effect::{ActError, Effector, Prepared, Report};
use crate::playbook::Action;
use crate::source::BoxFuture;

/// `[openstack]`: which cloud, and the limits of calls.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settings {
    /// The `clouds.yaml` entry; without it `OS_CLOUD`, then the `OS_*` variables.
    pub cloud: Option<String>,
    /// A `clouds.yaml` file instead of the usual search path (`./clouds.yaml`,
    /// `~/.config/openstack/`, `/etc/openstack/`); `secure.yaml` beside it is merged.
    pub clouds_file: Option<PathBuf>,
    /// The region, if the cloud has several.
    pub region: Option<String>,
    /// The endpoint interface: `public`, `internal` or `admin`.
    pub interface: String,
    /// Limit of one API call.
    #[serde(with = "crate::config::humantime_serde_str")]
    pub timeout: Duration,
    /// Default time limit of one action including waiting for its effect (a reboot's
    /// ACTIVE, a migration's new host); a step's `params.timeout` overrides it.
    #[serde(with = "crate::config::humantime_serde_str")]
    pub action_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            cloud: None,
            clouds_file: None,
            region: None,
            interface: "public".into(),
            timeout: Duration::from_secs(30),
            action_timeout: Duration::from_secs(600),
        }
    }
}

/// A connected OpenStack client (compute).
pub struct OpenStack {
    settings: Settings,
}

impl OpenStack {
    /// Authenticates with the settings' cloud and negotiates the compute microversion.
    pub async fn connect(settings: &Settings) -> Result<OpenStack, ActError> {
        Err(ActError::Config {
            layer: "openstack",
            message: format!("not implemented yet ({settings:?})"),
        })
    }

    /// The settings this client was built with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// One server by id or name, or `None` when it does not exist.
    pub async fn server(&self, id_or_name: &str) -> Result<Option<Value>, String> {
        Err(format!(
            "openstack server {id_or_name}: not implemented yet"
        ))
    }

    /// Servers matching Nova's list filters (`status`, `host`, `name`, ...).
    pub async fn servers(&self, filters: &Map<String, Value>) -> Result<Vec<Value>, String> {
        Err(format!(
            "openstack servers {filters:?}: not implemented yet"
        ))
    }

    /// Compute services, only those on `host` unless it is `""`.
    pub async fn compute_services(&self, host: &str) -> Result<Vec<Value>, String> {
        Err(format!(
            "openstack compute services {host}: not implemented yet"
        ))
    }

    /// Hypervisors.
    pub async fn hypervisors(&self) -> Result<Vec<Value>, String> {
        Err("openstack hypervisors: not implemented yet".into())
    }
}

impl Effector for OpenStack {
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
