//! What an SRE controls while the agent runs: the kill switch (pause/resume) and the
//! circuit breakers. Every change is audited. The pause is a file, so that it holds
//! across restarts and can be thrown with `touch` when the agent or its API is down;
//! the agent audits a pause file that appeared or vanished by other means too.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::{json, Value};
use tracing::warn;

use super::guard::Guard;
use crate::audit::{AuditError, Auditor, BreakerReset, Event, Paused, Resumed};
use crate::metrics::Metrics;

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The pause file could not be written or removed.
    #[error("pause file {path}: {source}")]
    PauseFile {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The audit log refused the record.
    #[error(transparent)]
    Audit(#[from] AuditError),
}

/// The kill switch and the breakers, shared by the agent's loop and its API.
pub struct Control {
    guard: Arc<Guard>,
    audit: Auditor,
    metrics: Arc<Metrics>,
    /// The pause state last audited, to audit only changes.
    audited: Mutex<Option<String>>,
}

/// Writes the pause file (with its reason) durably.
pub fn write_pause_file(path: &Path, reason: &str, by: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("pause.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(json!({ "reason": reason, "by": by }).to_string().as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Removes the pause file; `false` if there was none.
pub fn remove_pause_file(path: &Path) -> std::io::Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

impl Control {
    /// Control over `guard`, auditing to `audit`; `paused` is the state at start (as
    /// last audited, so that a restart does not audit it again).
    pub fn new(guard: Arc<Guard>, audit: Auditor, metrics: Arc<Metrics>) -> Arc<Control> {
        let now = guard.paused();
        metrics.set_paused(now.is_some());
        Arc::new(Control {
            guard,
            audit,
            metrics,
            audited: Mutex::new(now),
        })
    }

    fn pause_path(&self) -> &Path {
        &self.guard.settings().pause_file
    }

    /// Throws the kill switch; `false` if it already was.
    pub async fn pause(&self, reason: &str, by: &str) -> Result<bool, ControlError> {
        if self.guard.paused().is_some() {
            return Ok(false);
        }
        let path = self.pause_path().to_path_buf();
        write_pause_file(&path, reason, by).map_err(|source| ControlError::PauseFile {
            path: path.display().to_string(),
            source,
        })?;
        *self.audited.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason.into());
        self.metrics.set_paused(true);
        warn!(reason, by, "paused: nothing is executed until resumed");
        self.audit
            .record(Event::Paused(Paused {
                reason: reason.into(),
                by: by.into(),
            }))
            .await?;
        Ok(true)
    }

    /// Releases the kill switch; `false` if it was not thrown.
    pub async fn resume(&self, by: &str) -> Result<bool, ControlError> {
        let path = self.pause_path().to_path_buf();
        let removed = remove_pause_file(&path).map_err(|source| ControlError::PauseFile {
            path: path.display().to_string(),
            source,
        })?;
        if !removed {
            return Ok(false);
        }
        *self.audited.lock().unwrap_or_else(PoisonError::into_inner) = None;
        self.metrics.set_paused(false);
        warn!(by, "resumed: actions run again");
        self.audit
            .record(Event::Resumed(Resumed { by: by.into() }))
            .await?;
        Ok(true)
    }

    /// Audits a pause file that appeared or vanished without the API (each tick).
    pub async fn sync(&self) -> Result<(), AuditError> {
        let now = self.guard.paused();
        let event = {
            let mut audited = self.audited.lock().unwrap_or_else(PoisonError::into_inner);
            if now.is_some() == audited.is_some() {
                return Ok(());
            }
            *audited = now.clone();
            match now {
                Some(reason) => {
                    warn!(reason = %reason, "pause file found: nothing is executed until it is removed");
                    Event::Paused(Paused {
                        reason,
                        by: "file".into(),
                    })
                }
                None => {
                    warn!("pause file removed: actions run again");
                    Event::Resumed(Resumed { by: "file".into() })
                }
            }
        };
        self.metrics.set_paused(matches!(event, Event::Paused(_)));
        self.audit.record(event).await.map(|_| ())
    }

    /// Closes a playbook's breaker; `false` if it was not open.
    pub async fn reset_breaker(
        &self,
        playbook: &str,
        by: &str,
        reason: &str,
    ) -> Result<bool, ControlError> {
        if !self.guard.reset_breaker(playbook) {
            return Ok(false);
        }
        self.metrics.breaker(playbook, false);
        warn!(playbook, by, reason, "circuit breaker reset");
        self.audit
            .record(Event::BreakerReset(BreakerReset {
                playbook: playbook.into(),
                by: by.into(),
                reason: reason.into(),
            }))
            .await?;
        Ok(true)
    }

    /// The state an SRE asks for: paused (and why), open breakers.
    pub fn status(&self) -> Value {
        let paused = self.guard.paused();
        json!({
            "paused": paused.is_some(),
            "pause_reason": paused,
            "breakers_open": self.guard.tripped(),
        })
    }
}
