//! What an SRE controls while the agent runs: the kill switch (pause/resume) and the
//! circuit breakers. Every change is audited. The pause is a file, so that it holds
//! across restarts and can be thrown with `touch` when the agent or its API is down;
//! the agent audits a pause file that appeared or vanished by other means too.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::{json, Value};
use tracing::warn;

use super::approval::{self, ApprovalError, Approvals, Decision, Pending};
use super::guard::Guard;
use crate::audit::{ApprovalDecided, AuditError, Auditor, BreakerReset, Event, Paused, Resumed};
use crate::metrics::Metrics;
use crate::source::unix_now;

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
    /// The approval was refused (unknown, expired, another hash, changed plan).
    #[error(transparent)]
    Approval(#[from] ApprovalError),
    /// Approvals are not kept by this agent.
    #[error("this agent keeps no approval queue")]
    NoApprovals,
}

/// A plan an SRE approved, handed to the agent's loop to run.
#[derive(Debug)]
pub struct Approved {
    /// The plan as it waited.
    pub pending: Pending,
    /// The round that waited (0: the first plan).
    pub round: usize,
    /// The sequence number of the `approval_granted` record.
    pub grant_seq: u64,
}

/// The kill switch and the breakers, shared by the agent's loop and its API.
pub struct Control {
    guard: Arc<Guard>,
    audit: Auditor,
    metrics: Arc<Metrics>,
    /// The pause state last audited, to audit only changes.
    audited: Mutex<Option<String>>,
    approvals: Option<Arc<Approvals>>,
    run: Option<tokio::sync::mpsc::UnboundedSender<Approved>>,
    /// The queue's files that did not parse. Held across each sweep of the queue, so
    /// the tick and an approval's expiry never audit an expiry or a damaged file twice.
    damaged: tokio::sync::Mutex<Damaged>,
}

/// Files of the approval queue that did not parse.
#[derive(Debug, Default)]
struct Damaged {
    /// Seen once: set aside only if still so at the next sweep (an editor writing in
    /// place may have been caught half way).
    suspects: HashSet<PathBuf>,
    /// Audited, but could not be moved: not audited again.
    stuck: HashSet<PathBuf>,
    /// Plans whose expiry was audited but that could not be taken out of the queue:
    /// not audited again while they stay.
    expired: HashSet<String>,
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
        Control::with_approvals(guard, audit, metrics, None, None)
    }

    /// [`Control::new`] with an approval queue; approved plans are sent to `run`.
    pub fn with_approvals(
        guard: Arc<Guard>,
        audit: Auditor,
        metrics: Arc<Metrics>,
        approvals: Option<Arc<Approvals>>,
        run: Option<tokio::sync::mpsc::UnboundedSender<Approved>>,
    ) -> Arc<Control> {
        let now = guard.paused();
        metrics.set_paused(now.is_some());
        Arc::new(Control {
            guard,
            audit,
            metrics,
            audited: Mutex::new(now),
            approvals,
            run,
            damaged: Default::default(),
        })
    }

    fn queue(&self) -> Result<&Arc<Approvals>, ControlError> {
        self.approvals.as_ref().ok_or(ControlError::NoApprovals)
    }

    /// Plans waiting for approval (damaged files are reported as errors in the list),
    /// read off the async runtime.
    pub async fn approvals(&self) -> Result<Vec<Result<Pending, ApprovalError>>, ControlError> {
        Ok(self.blocking(self.queue()?, |q| q.list()).await?)
    }

    /// One waiting plan, and how it stands against the audit log's record of its
    /// request (read off the async runtime: the log may be large).
    pub async fn approval(
        &self,
        id: &str,
    ) -> Result<(Pending, Result<AuditMatch, ApprovalError>), ControlError> {
        let (log, id) = (self.audit.path().to_path_buf(), id.to_string());
        let shown = self.blocking(self.queue()?, move |q| {
            let p = q.show(&id)?;
            let audit = audit_match(&log, &p);
            Ok((p, audit))
        });
        Ok(shown.await?)
    }

    /// Approves a waiting plan whose hash starts with `hash`, audits it, and hands it
    /// to the loop to run.
    pub async fn approve(
        &self,
        id: &str,
        hash: &str,
        by: &str,
        reason: &str,
    ) -> Result<Pending, ControlError> {
        let q = self.queue()?;
        let audited = self.audited(&q.show(id)?).await?;
        let p = match q.approve(id, hash, unix_now()) {
            Ok(p) => p,
            Err(ApprovalError::Expired(_)) => {
                self.expire().await?;
                return Err(ApprovalError::Expired(id.into()).into());
            }
            Err(e) => return Err(e.into()),
        };
        if p.plan_hash != audited {
            // Rewritten between the check and the approval: it is out of the queue now,
            // and never runs.
            let why = format!(
                "the plan changed while it was being approved ({audited} audited, {} now): it never runs",
                p.plan_hash
            );
            self.rejected_by_homeostat(&p, &why).await?;
            return Err(ApprovalError::NotAudited {
                id: id.into(),
                file: p.plan_hash,
                audited: Some(audited),
            }
            .into());
        }
        let round = p.round;
        let grant_seq = self
            .audit
            .record(Event::ApprovalGranted(decided(&p, by, reason)))
            .await?;
        warn!(id, by, playbook = %p.playbook, "plan approved: it runs now");
        if let Some(tx) = &self.run {
            let _ = tx.send(Approved {
                pending: p.clone(),
                round,
                grant_seq,
            });
        }
        Ok(p)
    }

    /// Rejects a waiting plan and audits it.
    pub async fn reject(&self, id: &str, by: &str, reason: &str) -> Result<Pending, ControlError> {
        let now = unix_now();
        let p = self
            .blocking(self.queue()?, {
                let id = id.to_string();
                move |q| q.reject_waiting(&id, now)
            })
            .await?;
        self.audit
            .record(Event::ApprovalRejected(decided(&p, by, reason)))
            .await?;
        warn!(id, by, playbook = %p.playbook, "plan rejected");
        Ok(p)
    }

    /// Audits and drops every plan whose TTL passed, and sets aside every file of the
    /// queue that does not parse (each tick).
    pub async fn expire(&self) -> Result<(), ControlError> {
        let Some(q) = &self.approvals else {
            return Ok(());
        };
        let mut seen = self.damaged.lock().await;
        // Off the async runtime: a directory read and a file per plan.
        let now = unix_now();
        let sweep = self.blocking(q, move |q| q.sweep(now)).await?;
        seen.expired
            .retain(|id| sweep.expired.iter().any(|p| &p.id == id));
        for p in sweep.expired {
            // Audited before it leaves the queue: a failed write keeps it there for the
            // next sweep, and a stop in between records it twice, never not at all.
            if !seen.expired.contains(&p.id) {
                warn!(id = %p.id, playbook = %p.playbook, "plan expired unapproved: it never runs");
                self.audit
                    .record(Event::ApprovalExpired(decided(
                        &p,
                        "ttl",
                        "not approved in time",
                    )))
                    .await?;
                seen.expired.insert(p.id.clone());
            }
            let id = p.id.clone();
            match self.blocking(q, move |q| q.remove_expired(&id, now)).await {
                Ok(_) => {
                    seen.expired.remove(&p.id);
                }
                // It never runs (approve refuses an expired plan); it is logged at each
                // sweep, not audited again, and holds up nothing else.
                Err(e) => {
                    tracing::error!(id = %p.id, error = %e, "could not take the expired plan out of the queue: remove it by hand");
                }
            }
        }
        self.set_aside_damaged(q, &mut seen, sweep.damaged).await
    }

    /// Runs `f` on the queue off the async runtime (directory reads, fsyncs).
    async fn blocking<T: Send + 'static>(
        &self,
        q: &Arc<Approvals>,
        f: impl FnOnce(&Approvals) -> Result<T, ApprovalError> + Send + 'static,
    ) -> Result<T, ApprovalError> {
        let queue = Arc::clone(q);
        tokio::task::spawn_blocking(move || f(&queue))
            .await
            .map_err(|e| ApprovalError::Io {
                path: q.dir().to_path_buf(),
                source: std::io::Error::other(e),
            })?
    }

    /// [`audited_hash`], read off the async runtime (the log may be large).
    async fn audited(&self, p: &Pending) -> Result<String, ControlError> {
        let (log, pending) = (self.audit.path().to_path_buf(), p.clone());
        let audited = tokio::task::spawn_blocking(move || audited_hash(&log, &pending))
            .await
            .map_err(|e| self.blocking_failed(e))??;
        Ok(audited)
    }

    /// A read of the audit log whose blocking task failed (panicked or was cancelled).
    fn blocking_failed(&self, e: tokio::task::JoinError) -> AuditError {
        AuditError::Io {
            path: self.audit.path().to_path_buf(),
            error: std::io::Error::other(e),
        }
    }

    /// Audits and moves aside each file of the queue that did not parse at two sweeps in
    /// a row; it can never run. A file that cannot be moved is logged, not audited again,
    /// and holds up nothing else.
    async fn set_aside_damaged(
        &self,
        q: &Arc<Approvals>,
        seen: &mut Damaged,
        damaged: Vec<(PathBuf, String)>,
    ) -> Result<(), ControlError> {
        let suspects = std::mem::take(&mut seen.suspects);
        seen.stuck.retain(|p| damaged.iter().any(|(d, _)| d == p));
        for (path, message) in damaged {
            if seen.stuck.contains(&path) {
                continue;
            }
            if !suspects.contains(&path) {
                seen.suspects.insert(path);
                continue;
            }
            // Its id, playbook and plan are what cannot be read: the file names it.
            let id = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .filter(|id| approval::valid_id(id))
                .unwrap_or_default();
            let why = format!(
                "the file {} does not read as a plan ({message}): set aside beside it as .damaged; it never runs",
                path.display()
            );
            warn!(file = %path.display(), %message, "an approval file does not read as a plan: it never runs");
            self.audit
                .record(Event::ApprovalRejected(ApprovalDecided {
                    id: id.clone(),
                    by: "homeostat".into(),
                    reason: why,
                    ..ApprovalDecided::default()
                }))
                .await?;
            // Only once audited, as for a plan changed on disk.
            let aside = path.clone();
            match self.blocking(q, move |q| q.set_aside(&aside)).await {
                Ok(Some(_)) => {}
                // Fixed by hand since: rejected all the same, as recorded.
                Ok(None) if path.exists() && !id.is_empty() => {
                    let id = id.clone();
                    self.blocking(q, move |q| q.reject(&id)).await?;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "could not set the damaged approval file aside: move it by hand");
                    seen.stuck.insert(path);
                }
            }
        }
        Ok(())
    }

    /// Audits that homeostat itself rejected `p` (it never runs), and why.
    async fn rejected_by_homeostat(&self, p: &Pending, why: &str) -> Result<(), ControlError> {
        warn!(id = %p.id, playbook = %p.playbook, "{why}");
        self.audit
            .record(Event::ApprovalRejected(decided(p, "homeostat", why)))
            .await?;
        Ok(())
    }

    /// Runs the plans approved while the agent was down (at start).
    pub async fn take_offline_approvals(&self) -> Result<(), ControlError> {
        let Some(q) = &self.approvals else {
            return Ok(());
        };
        // Before any is taken: one whose plan is not the audited one never runs.
        let marked = q
            .list()?
            .into_iter()
            .flatten()
            .filter(|p| p.approved.is_some());
        for p in marked {
            match self.audited(&p).await {
                Ok(_) => {}
                Err(ControlError::Approval(e @ ApprovalError::NotAudited { .. })) => {
                    self.rejected_by_homeostat(&p, &format!("{e}; it never runs"))
                        .await?;
                    q.reject(&p.id)?;
                }
                Err(e) => return Err(e),
            }
        }
        let (run, changed) = q.take_approved(unix_now())?;
        for (p, actual) in changed {
            let why = format!(
                "the plan changed on disk after it was approved (approved {}, now {actual}): it never runs",
                p.plan_hash
            );
            self.rejected_by_homeostat(&p, &why).await?;
            // Only once audited: a crash before leaves it to be rejected at the next start.
            q.reject(&p.id)?;
        }
        for (p, d) in run {
            let grant_seq = self
                .audit
                .record(Event::ApprovalGranted(decided(&p, &d.by, &d.reason)))
                .await?;
            if let Some(tx) = &self.run {
                let _ = tx.send(Approved {
                    round: p.round,
                    pending: p,
                    grant_seq,
                });
            }
        }
        Ok(())
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

    /// The state an SRE asks for: paused (and why), open breakers, waiting plans.
    pub fn status(&self) -> Value {
        let paused = self.guard.paused();
        json!({
            "paused": paused.is_some(),
            "pause_reason": paused,
            "breakers_open": self.guard.tripped(),
            "approvals_waiting": self
                .approvals
                .as_ref()
                .and_then(|q| q.list().ok())
                .map_or(0, |l| l.len()),
        })
    }
}

fn decided(p: &Pending, by: &str, reason: &str) -> ApprovalDecided {
    ApprovalDecided {
        id: p.id.clone(),
        anomaly_id: p.anomaly.id.clone(),
        playbook: p.playbook.clone(),
        plan_hash: p.plan_hash.clone(),
        by: by.into(),
        reason: reason.into(),
    }
}

/// Whether a waiting plan is the one the audit log recorded when it was queued: what
/// `approvals show` says before anyone approves it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditMatch {
    /// The plan hash of the log's latest `approval_requested` for it (none: no record).
    pub recorded_plan_hash: Option<String>,
    /// Whether the plan shown hashes to it, as the file's own `plan_hash` says: only
    /// then can it be approved.
    pub matches: bool,
}

/// How `p` stands against what `audit_log` recorded when it was queued (reads the
/// whole log, blocking). The files carry their own hash, so a plan rewritten with a
/// matching one would otherwise pass.
pub fn audit_match(audit_log: &Path, p: &Pending) -> Result<AuditMatch, ApprovalError> {
    let recorded = recorded_hash(audit_log, &p.id)?;
    let actual = approval::plan_hash(&p.plan);
    Ok(AuditMatch {
        matches: actual == p.plan_hash && recorded.as_deref() == Some(actual.as_str()),
        recorded_plan_hash: recorded,
    })
}

/// The plan hash `audit_log` recorded when approval `id` was queued, if it did.
fn recorded_hash(audit_log: &Path, id: &str) -> Result<Option<String>, ApprovalError> {
    crate::audit::requested_hash(audit_log, id).map_err(|e| ApprovalError::Io {
        path: audit_log.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })
}

/// The hash `audit_log` recorded when `p` was queued, if it is the file's; refused
/// otherwise. (Whether the plan still hashes to it is the queue's check.)
fn audited_hash(audit_log: &Path, p: &Pending) -> Result<String, ApprovalError> {
    match recorded_hash(audit_log, &p.id)? {
        Some(h) if h == p.plan_hash => Ok(h),
        audited => Err(ApprovalError::NotAudited {
            id: p.id.clone(),
            file: p.plan_hash.clone(),
            audited,
        }),
    }
}

/// A waiting plan as `approvals show` prints it: the file, and under `audit` how it
/// stands against the log's record of its request (or why that could not be read:
/// the plan is shown all the same).
pub fn shown(p: &Pending, audit: &Result<AuditMatch, ApprovalError>) -> Value {
    let mut v = serde_json::to_value(p).unwrap_or_default();
    if let Value::Object(o) = &mut v {
        let audit = match audit {
            Ok(m) => json!(m),
            Err(e) => json!({ "error": e.to_string() }),
        };
        o.insert("audit".into(), audit);
    }
    v
}

/// An approval given while the agent is down: marked in its file, run at the next start.
/// As through the agent, the plan must be the one `audit_log` recorded when it was
/// queued (the next start checks again).
pub fn approve_offline(
    queue: &Approvals,
    audit_log: &Path,
    id: &str,
    hash: &str,
    by: &str,
    reason: &str,
) -> Result<Pending, ApprovalError> {
    audited_hash(audit_log, &queue.show(id)?)?;
    queue.approve_offline(
        id,
        hash,
        Decision {
            by: by.into(),
            reason: reason.into(),
        },
        unix_now(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_names_a_log_it_cannot_read_and_shows_the_plan_all_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let q = Approvals::open(&dir.path().join("queue")).unwrap();
        let plan = serde_json::from_value(json!({
            "playbook": "drain", "anomaly_id": "an-1",
            "actions": [{"kind": "k8s.drain", "target": {"node": "n1"}}]
        }))
        .unwrap();
        let p = q
            .request(
                "drain",
                &crate::anomaly::Anomaly::default(),
                &plan,
                0,
                1000.0,
                std::time::Duration::from_secs(60),
            )
            .unwrap();
        let missing = dir.path().join("no-such-audit.jsonl");
        let v = shown(&p, &audit_match(&missing, &p));
        assert_eq!(v["plan_hash"], json!(p.plan_hash));
        let error = v["audit"]["error"].as_str().unwrap_or_default();
        assert!(error.contains("no-such-audit.jsonl"), "{v}");
    }
}
