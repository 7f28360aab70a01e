//! Accepted means durable: the alerts the webhook accepts are appended to a spool file
//! and fsynced before it answers 202. The agent takes them from there in order and marks
//! them done only once their `alert_received` record is in the audit log, so a crash or
//! a stop leaves whatever was not done in the spool, and the next start takes it up.
//! Alertmanager does not resend what was accepted; what is refused (the spool is full, or
//! cannot be written) is answered 503, which it retries.
//!
//! The file is JSON lines: `{"seq":N,"alert":{…}}` for an accepted alert, `{"done":N}`
//! once every alert up to `N` is handled. It is emptied whenever nothing is pending.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::anomaly::AlertmanagerAlert;

/// Why alerts could not be accepted, or the spool not read.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// More alerts are pending than the spool holds: the sender should retry later.
    #[error("the alert queue is full ({pending} pending, room for {capacity})")]
    Full {
        /// Alerts pending.
        pending: usize,
        /// The most it holds.
        capacity: usize,
    },
    /// An earlier write failed and could not be undone: the spool takes nothing more
    /// until a restart recovers it.
    #[error("{path}: the spool takes no more alerts after a failed write: {reason}")]
    Broken {
        /// The spool file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The file system refused.
    #[error("{path}: {source}")]
    Io {
        /// The spool file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// One line of the spool.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum Line {
    Alert { seq: u64, alert: AlertmanagerAlert },
    Done { done: u64 },
}

/// The durable queue of accepted alerts; shared by the webhook (writer) and the agent.
#[derive(Debug)]
pub struct Spool {
    path: PathBuf,
    capacity: usize,
    inner: Mutex<Inner>,
    arrived: Notify,
}

#[derive(Debug)]
struct Inner {
    file: File,
    pending: VecDeque<(u64, AlertmanagerAlert)>,
    next_seq: u64,
    /// Set when a failed write could not be undone: nothing more is accepted, so no
    /// acknowledged alert can be glued to a torn line (restart to recover).
    broken: Option<String>,
}

/// What [`Spool::open`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    /// Alerts accepted before and not yet handled.
    pub pending: usize,
    /// Bytes of a last line cut short by a crash, dropped (never acknowledged).
    pub torn_bytes: u64,
}

impl Spool {
    /// Opens (or creates) the spool at `path`, holding at most `capacity` pending alerts.
    pub fn open(path: &Path, capacity: usize) -> Result<(Spool, Recovered), SpoolError> {
        let io = |source| SpoolError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        let mut pending = VecDeque::new();
        let mut next_seq = 1;
        let mut good = 0u64;
        let mut reader = BufReader::new(&file);
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line).map_err(io)?;
            if n == 0 || line.last() != Some(&b'\n') {
                break;
            }
            // Writes are undone when they fail and a torn end is cut at open, so a line
            // that does not parse is damage from outside: said, and skipped.
            match serde_json::from_slice::<Line>(&line) {
                Ok(Line::Alert { seq, alert }) => {
                    pending.push_back((seq, alert));
                    next_seq = next_seq.max(seq.saturating_add(1));
                }
                Ok(Line::Done { done }) => {
                    while pending.front().is_some_and(|(s, _)| *s <= done) {
                        pending.pop_front();
                    }
                    next_seq = next_seq.max(done.saturating_add(1));
                }
                Err(e) => {
                    tracing::warn!(spool = %path.display(), offset = good, error = %e, "unreadable spool line skipped");
                }
            }
            good += n as u64;
        }
        let len = file.seek(SeekFrom::End(0)).map_err(io)?;
        let torn_bytes = len - good;
        if torn_bytes > 0 {
            file.set_len(good).map_err(io)?;
            file.sync_data().map_err(io)?;
        }
        // A new file is durable only once its directory entry is.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        let recovered = Recovered {
            pending: pending.len(),
            torn_bytes,
        };
        let spool = Spool {
            path: path.to_path_buf(),
            capacity,
            inner: Mutex::new(Inner {
                file,
                pending,
                next_seq,
                broken: None,
            }),
            arrived: Notify::new(),
        };
        if recovered.pending > 0 {
            spool.arrived.notify_one();
        }
        Ok((spool, recovered))
    }

    /// The spool's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn io(&self) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
        move |source| SpoolError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Appends alerts and fsyncs them (blocking): once this returns `Ok` they survive a
    /// crash. All or none: a batch that does not fit is refused whole.
    pub fn accept(&self, alerts: Vec<AlertmanagerAlert>) -> Result<usize, SpoolError> {
        let mut inner = self.lock();
        if let Some(reason) = &inner.broken {
            return Err(SpoolError::Broken {
                path: self.path.clone(),
                reason: reason.clone(),
            });
        }
        if inner.pending.len() + alerts.len() > self.capacity {
            return Err(SpoolError::Full {
                pending: inner.pending.len(),
                capacity: self.capacity,
            });
        }
        let mut buf = Vec::with_capacity(alerts.len() * 256);
        let first = inner.next_seq;
        for (i, alert) in alerts.iter().enumerate() {
            let seq = first + i as u64;
            serde_json::to_writer(
                &mut buf,
                &Line::Alert {
                    seq,
                    alert: alert.clone(),
                },
            )
            .expect("alerts serialise");
            buf.push(b'\n');
        }
        self.write_or_undo(&mut inner, &buf)?;
        let n = alerts.len();
        inner.next_seq = first + n as u64;
        inner.pending.extend(
            alerts
                .into_iter()
                .enumerate()
                .map(|(i, a)| (first + i as u64, a)),
        );
        drop(inner);
        self.arrived.notify_one();
        Ok(n)
    }

    /// Alerts accepted and not yet done.
    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }

    /// Up to `max` of the oldest pending alerts, with their sequence numbers; they stay
    /// pending until [`Spool::done`].
    pub fn peek(&self, max: usize) -> Vec<(u64, AlertmanagerAlert)> {
        self.lock().pending.iter().take(max).cloned().collect()
    }

    /// Marks every alert up to `seq` handled (blocking, fsynced); empties the file once
    /// nothing is pending.
    pub fn done(&self, seq: u64) -> Result<(), SpoolError> {
        let mut inner = self.lock();
        while inner.pending.front().is_some_and(|(s, _)| *s <= seq) {
            inner.pending.pop_front();
        }
        if inner.pending.is_empty() {
            inner.file.set_len(0).map_err(self.io())?;
            inner.file.sync_data().map_err(self.io())
        } else {
            let mut line = serde_json::to_vec(&Line::Done { done: seq }).expect("serialises");
            line.push(b'\n');
            self.write_or_undo(&mut inner, &line)
        }
    }

    /// Appends `bytes` and fsyncs them; on failure cuts the file back to where it was, so
    /// the next line starts clean, or, if even that fails, takes nothing more.
    fn write_or_undo(&self, inner: &mut Inner, bytes: &[u8]) -> Result<(), SpoolError> {
        let before = inner.file.metadata().map_err(self.io())?.len();
        let written = inner
            .file
            .write_all(bytes)
            .and_then(|()| inner.file.sync_data());
        let Err(e) = written else {
            return Ok(());
        };
        let undone = inner
            .file
            .set_len(before)
            .and_then(|()| inner.file.sync_data());
        if let Err(u) = undone {
            inner.broken = Some(format!("{e}; undoing it: {u}"));
        }
        Err(self.io()(e))
    }

    /// Resolves when alerts may be pending (at once if some arrived since the last call).
    pub async fn arrived(&self) {
        self.arrived.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(name: &str) -> AlertmanagerAlert {
        AlertmanagerAlert {
            status: "firing".into(),
            labels: [("alertname".to_string(), name.to_string())].into(),
            annotations: Default::default(),
            starts_at: "2026-12-07T10:00:00Z".into(),
            fingerprint: name.into(),
        }
    }

    fn names(v: &[(u64, AlertmanagerAlert)]) -> Vec<String> {
        v.iter()
            .map(|(_, a)| a.labels["alertname"].clone())
            .collect()
    }

    #[test]
    fn accepted_alerts_survive_a_reopen_until_they_are_done() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl.spool");
        let (spool, rec) = Spool::open(&path, 10).unwrap();
        assert_eq!(rec.pending, 0);
        spool.accept(vec![alert("a"), alert("b")]).unwrap();
        spool.accept(vec![alert("c")]).unwrap();
        let first = spool.peek(2);
        assert_eq!(names(&first), ["a", "b"]);
        spool.done(first[1].0).unwrap();
        drop(spool);

        // As after a crash: what was not done is still there, in order.
        let (spool, rec) = Spool::open(&path, 10).unwrap();
        assert_eq!(rec.pending, 1);
        let left = spool.peek(10);
        assert_eq!(names(&left), ["c"]);
        spool.accept(vec![alert("d")]).unwrap();
        assert!(spool.peek(10)[1].0 > left[0].0, "sequence numbers go on");
        spool.done(spool.peek(10)[1].0).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "emptied");
        let (_, rec) = Spool::open(&path, 10).unwrap();
        assert_eq!(rec.pending, 0);
    }

    #[test]
    fn a_batch_beyond_the_capacity_is_refused_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(&dir.path().join("s"), 3).unwrap();
        spool.accept(vec![alert("a"), alert("b")]).unwrap();
        let e = spool.accept(vec![alert("c"), alert("d")]).unwrap_err();
        assert!(
            matches!(
                e,
                SpoolError::Full {
                    pending: 2,
                    capacity: 3
                }
            ),
            "{e}"
        );
        assert_eq!(spool.pending(), 2);
        spool.accept(vec![alert("c")]).unwrap();
        assert_eq!(spool.pending(), 3);
    }

    #[test]
    fn a_line_torn_by_a_crash_is_dropped_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let (spool, _) = Spool::open(&path, 10).unwrap();
        spool.accept(vec![alert("a"), alert("b")]).unwrap();
        drop(spool);
        let bytes = std::fs::read(&path).unwrap();
        // The second line cut in the middle: it was never acknowledged.
        let cut = bytes.len() - 10;
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let (spool, rec) = Spool::open(&path, 10).unwrap();
        assert_eq!(rec.pending, 1);
        assert!(rec.torn_bytes > 0);
        assert_eq!(names(&spool.peek(10)), ["a"]);
        spool.accept(vec![alert("c")]).unwrap();
        drop(spool);
        let (spool, _) = Spool::open(&path, 10).unwrap();
        assert_eq!(names(&spool.peek(10)), ["a", "c"]);
    }
}
