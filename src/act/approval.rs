//! Approvals: a plan from a playbook in `approval` mode waits here, one file per plan
//! in `<audit_log>.approvals/`, until an SRE approves or rejects it or its TTL passes.
//! The plan is hashed when it is queued, and an approval names that hash: what was
//! approved is exactly what runs, and a plan whose file changed since is refused.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::anomaly::Anomaly;
use crate::playbook::Plan;

/// Default time a plan waits for approval.
pub const DEFAULT_TTL: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// One plan waiting for a decision, as its file holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    /// `ap-` and 16 hex digits.
    pub id: String,
    /// The playbook that made the plan.
    pub playbook: String,
    /// What the plan answers.
    pub anomaly: Anomaly,
    /// The plan, exactly as it will run.
    pub plan: Plan,
    /// Its round (0: the first plan; more: a follow-up from `on_result`).
    #[serde(default)]
    pub round: usize,
    /// SHA-256 of the plan's JSON when it was queued.
    pub plan_hash: String,
    /// Unix seconds it was queued.
    pub requested_unix: f64,
    /// Unix seconds after which it can no longer be approved.
    pub expires_unix: f64,
    /// Set when approved while the agent was down: it runs at the next start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved: Option<Decision>,
}

/// Who decided, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// The approver.
    pub by: String,
    /// Their reason.
    pub reason: String,
}

/// Why an approval or rejection was refused.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    /// No plan waits under that id.
    #[error("no plan waits for approval under {0}")]
    NotFound(String),
    /// The hash named is not the plan's.
    #[error("{id}: the approval names plan {named}, but the plan waiting is {actual}: show it again and approve what you read")]
    HashMismatch {
        /// The approval id.
        id: String,
        /// The hash the approver named.
        named: String,
        /// The plan's hash now.
        actual: String,
    },
    /// The plan's file was changed after it was queued.
    #[error("{id}: the plan was changed after it was queued (hash {recorded} recorded, {actual} now): refused")]
    Tampered {
        /// The approval id.
        id: String,
        /// The hash recorded when queued.
        recorded: String,
        /// The hash of what the file holds now.
        actual: String,
    },
    /// The plan's hash is not the one the audit log recorded when the plan was queued
    /// (the file's own hash matched: plan and hash were both rewritten), or the log
    /// holds no request for it.
    #[error("{id}: the plan waiting (hash {file}) is not the one audited when it was queued ({}): refused", audited.as_deref().unwrap_or("no approval_requested record"))]
    NotAudited {
        /// The approval id.
        id: String,
        /// The hash the file holds.
        file: String,
        /// The hash the log recorded, if any.
        audited: Option<String>,
    },
    /// Its TTL passed.
    #[error("{0}: expired")]
    Expired(String),
    /// The queue could not be read or written.
    #[error("approvals {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file in the queue does not read as a pending plan.
    #[error("approvals {path}: unreadable: {message}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

/// The hash an approval names: SHA-256 of the plan's JSON.
pub fn plan_hash(plan: &Plan) -> String {
    let json = serde_json::to_vec(plan).expect("plans serialise");
    hex::encode(Sha256::digest(&json))
}

/// What one pass over the queue found (see [`Approvals::sweep`]).
#[derive(Debug, Default)]
pub struct Sweep {
    /// Plans whose TTL passed, still in the queue.
    pub expired: Vec<Pending>,
    /// Files that do not parse, with why.
    pub damaged: Vec<(PathBuf, String)>,
}

/// The damaged files of a listing, with why.
fn damaged(listed: Vec<Result<Pending, ApprovalError>>) -> Vec<(PathBuf, String)> {
    listed
        .into_iter()
        .filter_map(|r| match r {
            Err(ApprovalError::Damaged { path, message }) => Some((path, message)),
            _ => None,
        })
        .collect()
}

/// A listing as the API and the CLI show it: each plan, or the error of a damaged file.
pub fn listing(list: Vec<Result<Pending, ApprovalError>>) -> serde_json::Value {
    list.into_iter()
        .map(|p| match p {
            Ok(p) => serde_json::to_value(p).unwrap_or_default(),
            Err(e) => serde_json::json!({ "error": e.to_string() }),
        })
        .collect()
}

/// The queue directory beside an audit log.
pub fn queue_dir(audit_log: &Path) -> PathBuf {
    let mut name = audit_log.as_os_str().to_os_string();
    name.push(".approvals");
    PathBuf::from(name)
}

/// The approval queue on disk. One lock serialises decisions, so a plan is approved,
/// rejected or expired once.
pub struct Approvals {
    dir: PathBuf,
    lock: Mutex<()>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ApprovalError + '_ {
    move |source| ApprovalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The largest approval file read (a plan is a few KB).
const MAX_FILE: u64 = 16 << 20;

/// Whether `id` is an approval id (`ap-` and 16 hex digits).
pub fn valid_id(id: &str) -> bool {
    id.len() == 19 && id.starts_with("ap-") && id[3..].bytes().all(|b| b.is_ascii_hexdigit())
}

impl Approvals {
    /// The queue in `dir` (created if missing).
    pub fn open(dir: &Path) -> Result<Approvals, ApprovalError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        Ok(Approvals {
            dir: dir.to_path_buf(),
            lock: Mutex::new(()),
        })
    }

    fn path(&self, id: &str) -> Result<PathBuf, ApprovalError> {
        // Ids come from the API and the CLI: never a path of their choosing.
        if !valid_id(id) {
            return Err(ApprovalError::NotFound(id.to_string()));
        }
        Ok(self.dir.join(format!("{id}.json")))
    }

    /// Queues a plan; durable when this returns.
    pub fn request(
        &self,
        playbook: &str,
        anomaly: &Anomaly,
        plan: &Plan,
        round: usize,
        now: f64,
        ttl: std::time::Duration,
    ) -> Result<Pending, ApprovalError> {
        let plan_hash = plan_hash(plan);
        let seed = format!("{}|{playbook}|{now}|{plan_hash}", anomaly.id);
        let id = format!("ap-{}", &hex::encode(Sha256::digest(seed.as_bytes()))[..16]);
        let p = Pending {
            id,
            playbook: playbook.into(),
            anomaly: anomaly.clone(),
            plan: plan.clone(),
            round,
            plan_hash,
            requested_unix: now,
            expires_unix: now + ttl.as_secs_f64(),
            approved: None,
        };
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.write(&p)?;
        Ok(p)
    }

    fn write(&self, p: &Pending) -> Result<(), ApprovalError> {
        use std::io::Write as _;
        let path = self.path(&p.id)?;
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&serde_json::to_vec_pretty(p).expect("pending plans serialise"))
            .and_then(|()| f.sync_all())
            .map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))
    }

    fn read(&self, path: &Path) -> Result<Pending, ApprovalError> {
        // Only a plain file of plausible size is read: a FIFO, a device or a link to one
        // dropped in the queue must not stall the agent or fill its memory.
        let meta = std::fs::symlink_metadata(path).map_err(io(path))?;
        let damaged = |message: String| ApprovalError::Damaged {
            path: path.to_path_buf(),
            message,
        };
        if !meta.is_file() {
            return Err(damaged("not a regular file".into()));
        }
        if meta.len() > MAX_FILE {
            return Err(damaged(format!(
                "{} bytes, more than a plan's file may hold ({MAX_FILE})",
                meta.len()
            )));
        }
        let text = std::fs::read(path).map_err(io(path))?;
        let p: Pending = serde_json::from_slice(&text).map_err(|e| damaged(e.to_string()))?;
        // A plan is found, approved and removed by its id, which names its file: one
        // copied under another name would act on another plan's file.
        if path.file_stem() != Some(std::ffi::OsStr::new(&p.id)) {
            return Err(damaged(format!("it holds plan {:?}, not its file's", p.id)));
        }
        Ok(p)
    }

    /// The queue's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every plan waiting, oldest first; damaged files are reported, not skipped.
    pub fn list(&self) -> Result<Vec<Result<Pending, ApprovalError>>, ApprovalError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let path = entry.map_err(io(&self.dir))?.path();
            if path.extension().is_some_and(|e| e == "json") {
                out.push(self.read(&path));
            }
        }
        out.sort_by(|a, b| match (a, b) {
            (Ok(a), Ok(b)) => a.requested_unix.total_cmp(&b.requested_unix),
            (Ok(_), Err(_)) => std::cmp::Ordering::Less,
            (Err(_), Ok(_)) => std::cmp::Ordering::Greater,
            _ => std::cmp::Ordering::Equal,
        });
        Ok(out)
    }

    /// Moves a file of the queue that still does not parse out of it, kept beside it for
    /// inspection as `<file>.damaged` (`.damaged-2`, … if that name is taken); returns
    /// where it went, or `None` if the file is gone or parses now (fixed by hand).
    pub fn set_aside(&self, path: &Path) -> Result<Option<PathBuf>, ApprovalError> {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        // Only the queue's own files: never a path of the caller's choosing.
        if path.parent() != Some(self.dir.as_path()) {
            return Err(ApprovalError::NotFound(path.display().to_string()));
        }
        match self.read(path) {
            Err(ApprovalError::Damaged { .. }) => {}
            Err(ApprovalError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e),
            Ok(_) => return Ok(None),
        }
        let name = |n: u32| {
            let mut aside = path.as_os_str().to_owned();
            aside.push(if n == 1 {
                ".damaged".to_string()
            } else {
                format!(".damaged-{n}")
            });
            PathBuf::from(aside)
        };
        let aside = (1..)
            .map(name)
            .find(|p| !p.exists())
            .expect("an unused name exists");
        std::fs::rename(path, &aside).map_err(io(path))?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))?;
        Ok(Some(aside))
    }

    /// One waiting plan.
    pub fn show(&self, id: &str) -> Result<Pending, ApprovalError> {
        let path = self.path(id)?;
        if !path.exists() {
            return Err(ApprovalError::NotFound(id.into()));
        }
        self.read(&path)
    }

    /// Takes a plan out of the queue if `hash` names it, it is intact and not expired.
    pub fn approve(&self, id: &str, hash: &str, now: f64) -> Result<Pending, ApprovalError> {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let p = self.checked(id, hash, now)?;
        self.remove(id)?;
        Ok(p)
    }

    /// Marks a plan approved while the agent is down: it runs (checked again) at start.
    pub fn approve_offline(
        &self,
        id: &str,
        hash: &str,
        by: Decision,
        now: f64,
    ) -> Result<Pending, ApprovalError> {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut p = self.checked(id, hash, now)?;
        p.approved = Some(by);
        self.write(&p)?;
        Ok(p)
    }

    /// Takes a plan that still waits out of the queue, unrun, as an SRE rejects it: an
    /// expired one is refused, it is the sweep's to audit as expired (a plan gets one
    /// decision in the log, never two).
    pub fn reject_waiting(&self, id: &str, now: f64) -> Result<Pending, ApprovalError> {
        self.take_out(id, Some(now))
    }

    /// Takes a plan out of the queue, unrun (homeostat's own rejections).
    pub fn reject(&self, id: &str) -> Result<Pending, ApprovalError> {
        self.take_out(id, None)
    }

    /// Takes a plan out of the queue, unless it expired by `refuse_expired_at`.
    fn take_out(&self, id: &str, refuse_expired_at: Option<f64>) -> Result<Pending, ApprovalError> {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let p = self.show(id)?;
        if refuse_expired_at.is_some_and(|now| p.expires_unix <= now) {
            return Err(ApprovalError::Expired(id.into()));
        }
        self.remove(id)?;
        Ok(p)
    }

    /// One pass over the queue, as the agent makes at each tick: the plans whose TTL
    /// passed (approved-offline ones included: a stale approval must not run days
    /// later), still in the queue (to be audited, then [`Approvals::remove_expired`]),
    /// and the files that do not parse (edited by hand, or damaged on disk), with why:
    /// they can never run, and [`Approvals::set_aside`] takes them out of the queue.
    pub fn sweep(&self, now: f64) -> Result<Sweep, ApprovalError> {
        let listed = self.list()?;
        let expired = listed
            .iter()
            .flatten()
            .filter(|p| p.expires_unix <= now)
            .cloned()
            .collect();
        Ok(Sweep {
            expired,
            damaged: damaged(listed),
        })
    }

    /// Takes plan `id` out of the queue if its TTL has passed by `now`; whether it did
    /// (not if it is gone, or no longer expired: rewritten since).
    pub fn remove_expired(&self, id: &str, now: f64) -> Result<bool, ApprovalError> {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        match self.show(id) {
            Ok(p) if p.expires_unix <= now => self.remove(id).map(|()| true),
            // A damaged file is the damaged sweep's to set aside.
            Ok(_) | Err(ApprovalError::NotFound(_) | ApprovalError::Damaged { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Plans approved while the agent was down: those to run, taken out of the queue
    /// (at most once: a crash before they run loses them, never runs them twice), and
    /// those whose plan changed on disk since (with the hash it has now), left for the
    /// caller to audit and [`Approvals::reject`]; they never run. Expired ones stay for
    /// the sweep ([`Approvals::sweep`]).
    #[allow(clippy::type_complexity)]
    pub fn take_approved(
        &self,
        now: f64,
    ) -> Result<(Vec<(Pending, Decision)>, Vec<(Pending, String)>), ApprovalError> {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let (mut run, mut changed) = (Vec::new(), Vec::new());
        for p in self.list()?.into_iter().flatten() {
            let Some(d) = p.approved.clone() else {
                continue;
            };
            if p.expires_unix <= now {
                continue;
            }
            let actual = plan_hash(&p.plan);
            if actual == p.plan_hash {
                self.remove(&p.id)?;
                run.push((p, d));
            } else {
                changed.push((p, actual));
            }
        }
        Ok((run, changed))
    }

    /// The plan if it is intact, not expired, and `hash` (8+ hex digits) names it.
    fn checked(&self, id: &str, hash: &str, now: f64) -> Result<Pending, ApprovalError> {
        let p = self.show(id)?;
        let actual = plan_hash(&p.plan);
        if actual != p.plan_hash {
            return Err(ApprovalError::Tampered {
                id: id.into(),
                recorded: p.plan_hash,
                actual,
            });
        }
        if p.expires_unix <= now {
            return Err(ApprovalError::Expired(id.into()));
        }
        if hash.len() < 8 || !p.plan_hash.starts_with(&hash.to_ascii_lowercase()) {
            return Err(ApprovalError::HashMismatch {
                id: id.into(),
                named: hash.into(),
                actual: p.plan_hash,
            });
        }
        Ok(p)
    }

    fn remove(&self, id: &str) -> Result<(), ApprovalError> {
        let path = self.path(id)?;
        std::fs::remove_file(&path).map_err(io(&path))?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        serde_json::from_value(serde_json::json!({
            "playbook": "drain", "anomaly_id": "an-1",
            "actions": [{"kind": "k8s.drain", "target": {"node": "n1"}}]
        }))
        .unwrap()
    }

    #[test]
    fn one_sweep_finds_the_expired_and_the_damaged_and_only_the_expired_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let q = Approvals::open(dir.path()).unwrap();
        let ttl = std::time::Duration::from_secs(60);
        let old = q
            .request("drain", &Anomaly::default(), &plan(), 0, 1000.0, ttl)
            .unwrap();
        let fresh = q
            .request("drain", &Anomaly::default(), &plan(), 0, 1050.0, ttl)
            .unwrap();
        let bad = dir.path().join("ap-0000000000000001.json");
        std::fs::write(&bad, "{ torn").unwrap();
        let sweep = q.sweep(1060.0).unwrap();
        let expired: Vec<_> = sweep.expired.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(expired, [old.id.as_str()]);
        assert_eq!(sweep.damaged.len(), 1);
        assert_eq!(sweep.damaged[0].0, bad);
        // Nothing leaves the queue before its expiry is audited.
        assert_eq!(q.list().unwrap().len(), 3);
        // Then the expired one is taken out, once; the fresh plan and the damaged file
        // (the damaged sweep's) stay.
        assert!(q.remove_expired(&old.id, 1060.0).unwrap());
        assert!(!q.remove_expired(&old.id, 1060.0).unwrap());
        assert!(!q.remove_expired(&fresh.id, 1060.0).unwrap());
        assert!(!q.remove_expired("ap-0000000000000001", 1060.0).unwrap());
        assert!(bad.exists());
        let left: Vec<_> = q.list().unwrap().into_iter().flatten().collect();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].id, fresh.id);
    }

    #[test]
    fn only_a_queue_file_that_still_does_not_parse_is_set_aside_and_none_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let q = Approvals::open(dir.path()).unwrap();
        let bad = dir.path().join("ap-0000000000000001.json");
        std::fs::write(&bad, "{ torn").unwrap();
        assert_eq!(q.sweep(0.0).unwrap().damaged.len(), 1);
        // An earlier one of the same name is kept.
        std::fs::write(dir.path().join("ap-0000000000000001.json.damaged"), "old").unwrap();
        let aside = q.set_aside(&bad).unwrap().unwrap();
        assert_eq!(aside, dir.path().join("ap-0000000000000001.json.damaged-2"));
        assert_eq!(std::fs::read_to_string(&aside).unwrap(), "{ torn");
        assert!(!bad.exists() && q.sweep(0.0).unwrap().damaged.is_empty());
        // Gone, or fixed by hand since it was listed: nothing to move.
        assert_eq!(q.set_aside(&bad).unwrap(), None);
        let fixed = q
            .request(
                "drain",
                &Anomaly::default(),
                &plan(),
                0,
                1000.0,
                std::time::Duration::from_secs(60),
            )
            .unwrap();
        let fixed = dir.path().join(format!("{}.json", fixed.id));
        assert_eq!(q.set_aside(&fixed).unwrap(), None);
        assert!(fixed.exists());
        // A plan copied under another plan's name is damaged: it names another file.
        let copy = dir.path().join("ap-0000000000000003.json");
        std::fs::copy(&fixed, &copy).unwrap();
        assert!(matches!(
            q.show("ap-0000000000000003"),
            Err(ApprovalError::Damaged { message, .. }) if message.contains("not its file's")
        ));
        std::fs::remove_file(&copy).unwrap();
        // A link to a device is damaged, never read.
        let link = dir.path().join("ap-0000000000000002.json");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        assert!(matches!(
            q.sweep(0.0).unwrap().damaged.as_slice(),
            [(p, m)] if p == &link && m.contains("not a regular file")
        ));
        assert!(q.set_aside(&link).unwrap().is_some());
        // Never a path outside the queue.
        let elsewhere = tempfile::tempdir().unwrap();
        let outside = elsewhere.path().join("x.json");
        std::fs::write(&outside, "{ torn").unwrap();
        assert!(q.set_aside(&outside).is_err());
        assert!(outside.exists());
    }

    #[test]
    fn approve_reject_expire_and_a_changed_plan_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let q = Approvals::open(dir.path()).unwrap();
        let ttl = std::time::Duration::from_secs(60);
        let a = q
            .request("drain", &Anomaly::default(), &plan(), 0, 1000.0, ttl)
            .unwrap();
        assert_eq!(q.list().unwrap().len(), 1);
        assert!(matches!(
            q.approve(&a.id, "00000000", 1001.0),
            Err(ApprovalError::HashMismatch { .. })
        ));
        assert!(
            matches!(
                q.approve(&a.id, "", 1001.0),
                Err(ApprovalError::HashMismatch { .. })
            ),
            "a hash must be named"
        );
        let got = q.approve(&a.id, &a.plan_hash[..12], 1001.0).unwrap();
        assert_eq!(got.plan, plan());
        assert!(
            matches!(
                q.approve(&a.id, &a.plan_hash, 1001.0),
                Err(ApprovalError::NotFound(_))
            ),
            "approved once"
        );

        let b = q
            .request("drain", &Anomaly::default(), &plan(), 0, 2000.0, ttl)
            .unwrap();
        assert_eq!(q.reject(&b.id).unwrap().id, b.id);
        assert!(q.list().unwrap().is_empty());

        let c = q
            .request("drain", &Anomaly::default(), &plan(), 0, 3000.0, ttl)
            .unwrap();
        assert!(q.sweep(3059.0).unwrap().expired.is_empty());
        assert!(matches!(
            q.approve(&c.id, &c.plan_hash, 3060.0),
            Err(ApprovalError::Expired(_))
        ));
        assert!(matches!(
            q.reject_waiting(&c.id, 3060.0),
            Err(ApprovalError::Expired(_))
        ));
        assert_eq!(q.reject_waiting(&c.id, 3059.0).unwrap().id, c.id);
        let c = q
            .request("drain", &Anomaly::default(), &plan(), 0, 3000.0, ttl)
            .unwrap();
        assert_eq!(q.sweep(3060.0).unwrap().expired[0].id, c.id);
        assert!(q.remove_expired(&c.id, 3060.0).unwrap());

        // Someone edits the queued plan: the recorded hash no longer matches.
        let d = q
            .request("drain", &Anomaly::default(), &plan(), 0, 4000.0, ttl)
            .unwrap();
        let path = dir.path().join(format!("{}.json", d.id));
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("\"n1\"", "\"n2\"");
        std::fs::write(&path, text).unwrap();
        assert!(matches!(
            q.approve(&d.id, &d.plan_hash, 4001.0),
            Err(ApprovalError::Tampered { .. })
        ));
        assert!(matches!(
            q.show("../../etc/passwd"),
            Err(ApprovalError::NotFound(_))
        ));
    }

    #[test]
    fn an_offline_approval_runs_at_start_only_if_still_valid() {
        let dir = tempfile::tempdir().unwrap();
        let q = Approvals::open(dir.path()).unwrap();
        let ttl = std::time::Duration::from_secs(60);
        let a = q
            .request("drain", &Anomaly::default(), &plan(), 0, 1000.0, ttl)
            .unwrap();
        let by = Decision {
            by: "sre".into(),
            reason: "ok".into(),
        };
        q.approve_offline(&a.id, &a.plan_hash, by.clone(), 1001.0)
            .unwrap();
        assert!(
            q.take_approved(1061.0).unwrap().0.is_empty(),
            "expired meanwhile"
        );
        let b = q
            .request("drain", &Anomaly::default(), &plan(), 0, 2000.0, ttl)
            .unwrap();
        q.approve_offline(&b.id, &b.plan_hash, by.clone(), 2001.0)
            .unwrap();
        let (taken, changed) = q.take_approved(2002.0).unwrap();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].1, by);
        assert!(changed.is_empty());

        // Approved, then its plan edited on disk before the start: never run.
        let c = q
            .request("drain", &Anomaly::default(), &plan(), 0, 3000.0, ttl)
            .unwrap();
        q.approve_offline(&c.id, &c.plan_hash, by, 3001.0).unwrap();
        let path = dir.path().join(format!("{}.json", c.id));
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("\"n1\"", "\"n2\"")).unwrap();
        let (taken, changed) = q.take_approved(3002.0).unwrap();
        assert!(taken.is_empty());
        assert_eq!(changed.len(), 1);
        assert_eq!(changed[0].0.id, c.id);
        assert_ne!(changed[0].1, c.plan_hash);
        q.reject(&c.id).unwrap();
        assert!(q.show(&c.id).is_err(), "left in the queue");
    }
}
