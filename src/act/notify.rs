//! Notifications: `notify.alertmanager` posts an alert to Alertmanager's API v2,
//! `notify.webhook` posts JSON to a URL; both with a timeout and bounded retries.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::time::Instant;

use super::effect::{Effector, Outcome, Prepared, Report};
use crate::playbook::Action;
use crate::source::BoxFuture;

/// `[notify]`: where alarms go, and how hard a notification is tried.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settings {
    /// Alertmanager's base URL, e.g. `http://127.0.0.1:9093` (absent: no alarms).
    pub alertmanager_url: Option<String>,
    /// Base of the `generatorURL` of alerts (homeostat's own address as operators reach it).
    pub generator_url: Option<String>,
    /// Limit of one HTTP request.
    #[serde(with = "crate::config::humantime_serde_str")]
    pub timeout: Duration,
    /// Retries of a failed request (with backoff) before a notification fails.
    pub retries: u32,
    /// How often a firing alarm is re-sent (Alertmanager resolves what it stops hearing).
    #[serde(with = "crate::config::humantime_serde_str")]
    pub resend_every: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            alertmanager_url: None,
            generator_url: None,
            timeout: Duration::from_secs(10),
            retries: 3,
            resend_every: Duration::from_secs(60),
        }
    }
}

/// Sends notifications.
pub struct Notifier {
    settings: Settings,
}

impl Notifier {
    /// A notifier with these settings.
    pub fn new(settings: Settings) -> Notifier {
        Notifier { settings }
    }

    /// The time limit of one notification, retries included.
    pub fn timeout(&self) -> Duration {
        self.settings.timeout * (self.settings.retries + 1) * 2
    }
}

impl Effector for Notifier {
    fn prepare<'a>(&'a self, action: &'a Action) -> BoxFuture<'a, Result<Prepared, Report>> {
        Box::pin(async move {
            Err(Report::new(
                Outcome::Failed,
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
                Outcome::Failed,
                format!("{}: not implemented yet", action.kind),
            )
        })
    }

    fn observe<'a>(&'a self, _action: &'a Action) -> BoxFuture<'a, Result<Value, String>> {
        Box::pin(async move { Ok(Value::Null) })
    }
}
