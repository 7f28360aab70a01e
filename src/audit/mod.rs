//! The append-only, hash-chained audit log: one JSON line per step, each fsynced
//! before the caller goes on.
//!
//! A line is `{"seq":N,"ts":"…","kind":"…","prev":"<hash of record N-1>","data":{…},"hash":"…"}`
//! where `hash` is the SHA-256 (hex) of the line's bytes up to, not including, the
//! `,"hash":…` suffix, closed with `}`. Hashing the exact bytes (not a re-serialised
//! value) makes verification independent of JSON key order or number formatting.
//!
//! A chain alone cannot show that its tail was cut off, so every append also rewrites
//! a small *head* file beside the log (`<log>.head`: the last seq and hash),
//! atomically (write, fsync, rename). `verify` checks the log against it.
//!
//! A record is durable once its line is fsynced; the head follows. [`AuditLog::open`]
//! verifies the whole chain and recovers what a crash between the two leaves (a torn
//! last line, a head one record behind), recording an [`AuditRecovered`] event; it
//! refuses any other damage. A write that fails latches the log as failed: no sequence
//! number is ever given out twice. [`seal`] sets a log aside and starts a new segment
//! whose first record ([`AuditSealed`]) links to it; [`rotate`] (and
//! [`AuditLog::rotate`], for the writer itself) does so for an intact log past a size,
//! so that the segments stay one chain, which [`links`] checks back to the first.
//!
//! A [`Checkpoint`] record signs the record before it with an Ed25519 key
//! ([`verify_checkpoints`]): someone who can write the log but not read the key cannot
//! rewrite history up to it undetected, which the chain alone cannot promise.
//!
//! [`incident`] gathers one incident's records across segments, [`Filter`] picks records
//! for listing and export, and [`records`] streams a log's exact lines.
//!
//! What a record says is typed: the agent writes [`Event`]s and reads them back with
//! [`AuditRecord::event`]; [`AuditRecord`] is the raw, verifiable line.

mod chain;
mod event;
mod filter;
mod seal;
mod sign;
mod summary;

pub use event::*;
pub use filter::{is_about, member_of, parse_since, parse_target, Filter};
pub use seal::{chain_files, links, rotate, seal, segment_path, Link, Sealed};
pub use sign::{
    checkpoint_message, generate_key, public_key_path, read_public_key, read_signing_key,
    verify_checkpoints, KeyError, Signed,
};
pub use summary::{escape, summarize};

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const HASH_PREFIX: &str = ",\"hash\":\"";

/// What can go wrong writing or reading the audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The file system refused.
    #[error("{path}: {error}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error: in the message, so not a `source` as well (a chain
        /// printed whole would repeat it).
        error: std::io::Error,
    },
    /// The existing log is damaged, so appending to it would hide the damage.
    #[error(
        "{path}: refusing to append to a damaged log: {reason} (see `homeostat audit verify --log {path}`; `homeostat audit seal --log {path} --reason TEXT` sets it aside and starts a new log linked to it)",
        path = .path.display()
    )]
    Damaged {
        /// The log.
        path: PathBuf,
        /// What is wrong, and where.
        reason: String,
    },
    /// A write to the log failed earlier; it takes no more records until reopened.
    #[error(
        "{path}: the audit log takes no more records since a write failed ({reason}); a restart recovers its tail",
        path = .path.display()
    )]
    Failed {
        /// The log.
        path: PathBuf,
        /// The write that failed.
        reason: String,
    },
    /// A record does not read (listing or scanning, not verifying).
    #[error("{path}: {reason}", path = .path.display())]
    Unreadable {
        /// The log.
        path: PathBuf,
        /// Which line, and why.
        reason: String,
    },
    /// A rotation was asked of a log that does not verify: it would link an intact-looking
    /// chain to damage; sealing it, with a reason, is the way.
    #[error(
        "{path}: not rotating a log that does not verify: {reason} (rotation keeps one intact chain; `homeostat audit seal --log {path} --reason TEXT` sets a damaged log aside)",
        path = .path.display()
    )]
    NotIntact {
        /// The log.
        path: PathBuf,
        /// What is wrong, and where.
        reason: String,
    },
    /// No record of the incident asked for, in the log or the segments before it.
    #[error("{path}: no record of incident {id} in this log or the {segments} sealed segment(s) before it", path = .path.display(), id = escape(.id))]
    NoIncident {
        /// The log.
        path: PathBuf,
        /// The incident's id.
        id: String,
        /// Sealed segments searched besides the log.
        segments: usize,
    },
    /// Another process holds the log (an agent running on it): two writers would
    /// interleave records and repeat sequence numbers.
    #[error("{path}: another process is writing this log (is an agent running on it?)", path = .path.display())]
    Busy {
        /// The log.
        path: PathBuf,
    },
}

/// Takes the log's one-writer lock (released when `file` is closed, so a crash frees it).
pub(crate) fn lock_writer(file: &File, path: &Path) -> Result<(), AuditError> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(AuditError::Busy {
            path: path.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(io_err(path)(e)),
    }
}

/// The head file's content: where the log must end.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// Sequence number of the last record.
    pub seq: u64,
    /// Hash of the last record.
    pub hash: String,
}

/// A record as read back from the log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditRecord {
    /// 1-based sequence number.
    pub seq: u64,
    /// RFC 3339 time of writing.
    pub ts: String,
    /// What step this records (`anomaly_opened`, `plan`, `action_intent`, …).
    pub kind: String,
    /// Hash of the previous record.
    pub prev: String,
    /// The step's details.
    pub data: Value,
    /// This record's hash.
    pub hash: String,
}

impl AuditRecord {
    /// What the record says, typed; fails for a kind this version does not know or data
    /// that does not read as its kind.
    pub fn event(&self) -> Result<Event, serde_json::Error> {
        Event::from_parts(&self.kind, &self.data)
    }

    /// When it was written; `None` if its time does not read.
    pub fn time(&self) -> Option<SystemTime> {
        humantime::parse_rfc3339_weak(&self.ts).ok()
    }
}

/// The writer. Single owner; share it through [`Auditor`].
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: File,
    seq: u64,
    last_hash: String,
    /// Set once a write fails: why. Shared with every [`Auditor`] of this log.
    failed: Arc<OnceLock<String>>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> AuditError + '_ {
    move |error| AuditError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// Path of the head file that belongs to a log.
pub fn head_path(log: &Path) -> PathBuf {
    let mut s = log.as_os_str().to_owned();
    s.push(".head");
    PathBuf::from(s)
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// One record's line (with its newline) and hash.
fn format_record(seq: u64, kind: &str, prev: &str, data: &Value) -> (String, String) {
    let ts = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    let body = format!(
        "{{\"seq\":{seq},\"ts\":{},\"kind\":{},\"prev\":\"{prev}\",\"data\":{data}}}",
        Value::from(ts),
        Value::from(kind),
    );
    let hash = sha256_hex(body.as_bytes());
    let line = format!("{}{HASH_PREFIX}{hash}\"}}\n", &body[..body.len() - 1]);
    (line, hash)
}

/// Makes a new or renamed directory entry durable (best effort: some file systems
/// cannot fsync a directory).
fn sync_dir(file: &Path) {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

impl AuditLog {
    /// Opens (or creates) a log for appending. The whole chain is verified first (one
    /// streaming pass); what a crash of the writer leaves is recovered and recorded as
    /// [`AuditRecovered`]; any other damage is refused, naming the first bad line.
    pub fn open(path: &Path) -> Result<AuditLog, AuditError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        let existed = path.try_exists().map_err(io_err(path))?;
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .map_err(io_err(path))?;
        lock_writer(&file, path)?;
        if !existed {
            // The first record is durable only once the log's directory entry is.
            sync_dir(path);
        }
        let scan = chain::read_chain(&file, false).map_err(io_err(path))?;
        let head = read_head(path)?;
        let recovery = chain::recovery(&scan, head.as_ref()).map_err(|e| AuditError::Damaged {
            path: path.to_path_buf(),
            reason: escape(&e.to_string()).into_owned(),
        })?;
        if let Some(torn) = &recovery.truncate {
            file.set_len(torn.offset).map_err(io_err(path))?;
            file.sync_all().map_err(io_err(path))?;
        }
        if let Some((_, head)) = &recovery.head {
            write_head(path, head)?;
        }
        let mut log = AuditLog {
            path: path.to_path_buf(),
            file,
            // A log a rotation started goes on with the previous segment's numbering.
            seq: scan.base + scan.records,
            last_hash: scan.last_hash,
            failed: Arc::default(),
        };
        if !recovery.is_empty() {
            let event = AuditRecovered {
                last_seq: log.seq,
                last_hash: log.last_hash.clone(),
                partial_line: recovery.truncate,
                head: recovery
                    .head
                    .map(|(found, wrote)| HeadRewrite { found, wrote }),
            };
            tracing::warn!(log = %path.display(), "audit log recovered after a crash: {}", event.describe());
            log.record(&Event::AuditRecovered(event))?;
        }
        Ok(log)
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Why the log takes no more records, if a write failed.
    pub fn failed(&self) -> Option<&str> {
        self.failed.get().map(String::as_str)
    }

    /// Appends an event and fsyncs it (and the head) before returning its sequence number.
    pub fn record(&mut self, event: &Event) -> Result<u64, AuditError> {
        let (kind, data) = event.to_parts();
        self.append(&kind, &data)
    }

    /// Appends a record of any kind and data, typed or not, and fsyncs it (and the
    /// head) before returning its sequence number. The agent writes through
    /// [`record`](Self::record); this is for records no [`Event`] describes (tests of
    /// damaged or foreign logs).
    ///
    /// The record is durable once its line is fsynced, and its sequence number is used
    /// from then on. If the line or the head cannot be written, the log is latched as
    /// failed and every later append fails too: a half-written line or a stale head is
    /// for the next [`open`](Self::open) to recover, not for more records to follow.
    pub fn append(&mut self, kind: &str, data: &Value) -> Result<u64, AuditError> {
        if let Some(reason) = self.failed.get() {
            return Err(AuditError::Failed {
                path: self.path.clone(),
                reason: reason.clone(),
            });
        }
        // Only a log numbered by hand gets here; it takes no more records.
        let Some(seq) = self.seq.checked_add(1) else {
            return Err(AuditError::Failed {
                path: self.path.clone(),
                reason: "sequence numbers used up".into(),
            });
        };
        let (line, hash) = format_record(seq, kind, &self.last_hash, data);
        let written = self
            .file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            let _ = self.failed.set(format!("writing record {seq}: {e}"));
            return Err(io_err(&self.path)(e));
        }
        self.seq = seq;
        self.last_hash = hash.clone();
        if let Err(e) = write_head(&self.path, &Head { seq, hash }) {
            let _ = self
                .failed
                .set(format!("writing the head after record {seq}: {e}"));
            return Err(e);
        }
        Ok(seq)
    }
}

fn read_head(log: &Path) -> Result<Option<Head>, AuditError> {
    let path = head_path(log);
    match std::fs::read(&path) {
        Ok(s) => serde_json::from_slice(&s)
            .map(Some)
            // The log is what is damaged: the error names it, so that the commands it
            // suggests are run on the log.
            .map_err(|e| AuditError::Damaged {
                path: log.to_path_buf(),
                reason: format!("head file {}: unreadable: {e}", path.display()),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AuditError::Io { path, error: e }),
    }
}

/// What is wrong with a head that does not read, without the advice for `run`.
fn head_problem(e: AuditError) -> String {
    match e {
        AuditError::Damaged { reason, .. } => reason,
        other => other.to_string(),
    }
}

fn write_head(log: &Path, head: &Head) -> Result<(), AuditError> {
    let path = head_path(log);
    let mut tmp = path.clone().into_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    let body = serde_json::to_string(head).expect("head serialises");
    f.write_all(body.as_bytes()).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
    // The rename is durable only once the directory entry is.
    sync_dir(&path);
    Ok(())
}

/// Checks one line's own hash and shape; the chain is checked by the caller.
fn check_line(line: &str) -> Result<AuditRecord, String> {
    let Some(pos) = line.rfind(HASH_PREFIX) else {
        return Err("no hash field at the end of the record".into());
    };
    let claimed = &line[pos + HASH_PREFIX.len()..];
    let Some(claimed) = claimed.strip_suffix("\"}") else {
        return Err("malformed hash field".into());
    };
    let body = format!("{}}}", &line[..pos]);
    if sha256_hex(body.as_bytes()) != claimed {
        return Err("content does not match its hash (edited)".into());
    }
    serde_json::from_str::<AuditRecord>(line).map_err(|e| format!("not a valid record: {e}"))
}

/// A broken log: which record is the first bad one, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct VerifyError {
    /// 1-based line number of the first bad record (or one past the end for a cut tail).
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

/// Checks the whole chain and the head; returns the number of records.
///
/// A log as a crash leaves it (a torn last line, a head one behind) fails here, saying
/// so: `run` recovers it at start, `verify` only reads.
pub fn verify(path: &Path) -> Result<u64, VerifyError> {
    let at = |reason: String| VerifyError { line: 0, reason };
    let file = File::open(path).map_err(|e| at(format!("cannot open: {e}")))?;
    let scan = chain::read_chain(file, false).map_err(|e| at(format!("unreadable: {e}")))?;
    if let Some(broken) = scan.broken {
        return Err(broken);
    }
    let head = read_head(path).map_err(|e| VerifyError {
        line: scan.records as usize + 1,
        reason: head_problem(e),
    })?;
    chain::verdict(&scan, head.as_ref())
}

/// Reads every record without verifying (use [`verify`] for that).
pub fn read_records(path: &Path) -> Result<Vec<AuditRecord>, AuditError> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    text.lines()
        .enumerate()
        .map(|(i, l)| parse_line(path, i, l))
        .collect()
}

/// Parses line `i` (0-based) of the log at `path`.
fn parse_line(path: &Path, i: usize, line: &str) -> Result<AuditRecord, AuditError> {
    serde_json::from_str(line).map_err(|e| AuditError::Unreadable {
        path: path.to_path_buf(),
        // The parser may quote the line: it is shown, so it must not reach a terminal raw.
        reason: escape(&format!("line {}: {e}", i + 1)).into_owned(),
    })
}

/// Every line of a log, in order, as its exact text (without the newline) and the
/// record it reads as; read as it goes (a log may be large), without verifying (use
/// [`verify`] for that).
pub fn records(
    path: &Path,
) -> Result<impl Iterator<Item = Result<(String, AuditRecord), AuditError>> + '_, AuditError> {
    use std::io::BufRead as _;
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    Ok(std::io::BufReader::new(file)
        .lines()
        .enumerate()
        .map(move |(i, line)| {
            let line = line.map_err(io_err(path))?;
            let rec = parse_line(path, i, &line)?;
            Ok((line, rec))
        }))
}

/// Every record of incident `id` (its `anomaly_id` or `id`) and of the anomalies that
/// opened as its members, oldest first, across the log and the sealed segments its
/// links reach back to, each with its file. Fails naming the id if there is none.
pub fn incident(log: &Path, id: &str) -> Result<Vec<(PathBuf, AuditRecord)>, AuditError> {
    let files = chain_files(log);
    // Most lines are about something else: only those holding an id are parsed. A
    // member opens before any other record about it, so its id is known in time.
    let mut ids = vec![id.to_string()];
    let mut needles = vec![Value::from(id).to_string()];
    let mut out = Vec::new();
    for file in &files {
        use std::io::BufRead as _;
        let reader = std::fs::File::open(file).map_err(io_err(file))?;
        for (i, line) in std::io::BufReader::new(reader).lines().enumerate() {
            let line = line.map_err(io_err(file))?;
            if !needles.iter().any(|n| line.contains(n.as_str())) {
                continue;
            }
            let rec = parse_line(file, i, &line)?;
            if let Some(member) = member_of(&rec, id) {
                if !ids.iter().any(|m| m == member) {
                    needles.push(Value::from(member).to_string());
                    ids.push(member.to_string());
                }
            }
            if ids.iter().any(|m| is_about(&rec, m)) {
                out.push((file.clone(), rec));
            }
        }
    }
    if out.is_empty() {
        return Err(AuditError::NoIncident {
            path: log.to_path_buf(),
            id: id.to_string(),
            segments: files.len() - 1,
        });
    }
    Ok(out)
}

/// Streams the records of the given `kinds` to `f`, in log order; lines of other kinds
/// are skipped unparsed (the log may be large).
pub fn scan(path: &Path, kinds: &[&str], mut f: impl FnMut(AuditRecord)) -> Result<(), AuditError> {
    let needles: Vec<String> = kinds.iter().map(|k| kind_needle(k)).collect();
    lines_holding(path, &needles, |i, line| {
        let rec = parse_line(path, i, line)?;
        if kinds.contains(&rec.kind.as_str()) {
            f(rec);
        }
        Ok(())
    })
}

/// The plan hash the log recorded when approval `id` was queued (its latest
/// `approval_requested`, over every segment of the chain), if it did. A line that does
/// not read is passed over: the record that counts was written whole and synced long
/// before, and one that cannot be read is no evidence (the caller then refuses).
pub fn requested_hash(log: &Path, id: &str) -> Result<Option<String>, AuditError> {
    let needle = [kind_needle("approval_requested")];
    let quoted = Value::from(id).to_string();
    let mut found = None;
    for path in chain_files(log) {
        lines_holding(&path, &needle, |_, line| {
            if !line.contains(&quoted) {
                return Ok(());
            }
            let rec = serde_json::from_str::<AuditRecord>(line).ok();
            if let Some(Ok(Event::ApprovalRequested(r))) = rec.map(|r| r.event()) {
                if r.id == id {
                    found = Some(r.plan_hash);
                }
            }
            Ok(())
        })?;
    }
    Ok(found)
}

/// How a record of `kind` reads in a line: a test on the text that spares parsing the
/// records nobody asked for.
fn kind_needle(kind: &str) -> String {
    format!("\"kind\":{}", Value::from(kind))
}

/// Calls `f` with each line of one log file (and its index) that holds one of
/// `needles`, read as it goes.
fn lines_holding(
    path: &Path,
    needles: &[String],
    mut f: impl FnMut(usize, &str) -> Result<(), AuditError>,
) -> Result<(), AuditError> {
    use std::io::BufRead as _;
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io_err(path))?;
        if needles.iter().any(|n| line.contains(n.as_str())) {
            f(i, &line)?;
        }
    }
    Ok(())
}

/// Why an audit log stopped taking records, if it has (see [`Auditor::failure`]).
#[derive(Debug, Clone, Default)]
pub struct AuditFailure(Arc<OnceLock<String>>);

impl AuditFailure {
    /// The failed write, once one has.
    pub fn reason(&self) -> Option<&str> {
        self.0.get().map(String::as_str)
    }
}

/// A cloneable, async-friendly handle to the log; appends run on the blocking pool.
#[derive(Debug, Clone)]
pub struct Auditor {
    log: Arc<Mutex<AuditLog>>,
    path: PathBuf,
    written: Arc<std::sync::atomic::AtomicU64>,
    failed: Arc<OnceLock<String>>,
}

impl Auditor {
    /// Wraps an opened log.
    pub fn new(log: AuditLog) -> Self {
        let path = log.path().to_path_buf();
        let failed = log.failed.clone();
        Auditor {
            log: Arc::new(Mutex::new(log)),
            path,
            written: Arc::default(),
            failed,
        }
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records this handle (and its clones) wrote since it was made.
    pub fn written(&self) -> u64 {
        self.written.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Why the log takes no more records, if a write failed; never waits on a write in
    /// progress (a health check may ask).
    pub fn failed(&self) -> Option<&str> {
        self.failed.get().map(String::as_str)
    }

    /// A handle that tells, without waiting on a write, why the log failed (if it has):
    /// for health checks.
    pub fn failure(&self) -> AuditFailure {
        AuditFailure(self.failed.clone())
    }

    /// `Err` once a write has failed: whoever records must stop.
    pub fn check(&self) -> Result<(), AuditError> {
        match self.failed() {
            None => Ok(()),
            Some(reason) => Err(AuditError::Failed {
                path: self.path.clone(),
                reason: reason.to_string(),
            }),
        }
    }

    /// Rotates the log if it holds `max_bytes` or more (see [`AuditLog::rotate`]);
    /// waits for any append in progress, and the next goes to the new log.
    pub async fn rotate(&self, max_bytes: u64) -> Result<Option<Sealed>, AuditError> {
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || {
            let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
            log.rotate(max_bytes)
        })
        .await
        .expect("audit rotation does not panic")
    }

    /// Appends a checkpoint signing the last record with `key` (see
    /// [`AuditLog::checkpoint`]).
    pub async fn checkpoint(&self, key: ed25519_dalek::SigningKey) -> Result<u64, AuditError> {
        let log = self.log.clone();
        let seq = tokio::task::spawn_blocking(move || {
            let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
            log.checkpoint(&key)
        })
        .await
        .expect("audit append does not panic")?;
        self.written
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(seq)
    }

    /// Appends and fsyncs an event; returns once it is durable.
    pub async fn record(&self, event: Event) -> Result<u64, AuditError> {
        let log = self.log.clone();
        let seq = tokio::task::spawn_blocking(move || {
            let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
            log.record(&event)
        })
        .await
        .expect("audit append does not panic")?;
        self.written
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write_log(n: usize) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/audit.jsonl");
        let mut log = AuditLog::open(&path).unwrap();
        for i in 0..n {
            log.append("step", &json!({"i": i, "note": "x"})).unwrap();
        }
        (dir, path)
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn rewrite(path: &Path, lines: &[String]) {
        let mut s = lines.join("\n");
        s.push('\n');
        std::fs::write(path, s).unwrap();
    }

    #[test]
    fn a_second_writer_is_refused_while_the_first_holds_the_log() {
        let (_d, path) = write_log(2);
        let first = AuditLog::open(&path).unwrap();
        assert!(matches!(
            AuditLog::open(&path),
            Err(AuditError::Busy { .. })
        ));
        assert!(matches!(
            seal::seal(&path, "while running"),
            Err(AuditError::Busy { .. })
        ));
        drop(first);
        assert!(AuditLog::open(&path).is_ok(), "released with the writer");
    }

    #[test]
    fn intact_log_verifies_and_reopens() {
        let (_d, path) = write_log(5);
        assert_eq!(verify(&path), Ok(5));
        let mut log = AuditLog::open(&path).unwrap();
        assert_eq!(log.append("more", &json!({})).unwrap(), 6);
        assert_eq!(verify(&path), Ok(6));
        assert_eq!(read_records(&path).unwrap()[5].kind, "more");
    }

    #[test]
    fn edit_is_detected_at_the_edited_record() {
        let (_d, path) = write_log(5);
        let mut l = lines(&path);
        l[2] = l[2].replace("\"note\":\"x\"", "\"note\":\"y\"");
        rewrite(&path, &l);
        let e = verify(&path).unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert!(e.reason.contains("edited"));
    }

    #[test]
    fn delete_insert_reorder_are_detected() {
        let (_d, path) = write_log(5);
        let orig = lines(&path);

        let mut l = orig.clone();
        l.remove(1);
        rewrite(&path, &l);
        assert_eq!(verify(&path).unwrap_err().line, 2, "delete");

        let mut l = orig.clone();
        l.insert(3, orig[0].clone());
        rewrite(&path, &l);
        assert_eq!(verify(&path).unwrap_err().line, 4, "insert");

        let mut l = orig.clone();
        l.swap(1, 2);
        rewrite(&path, &l);
        assert_eq!(verify(&path).unwrap_err().line, 2, "reorder");
    }

    #[test]
    fn truncation_is_detected() {
        let (_d, path) = write_log(5);
        let orig = lines(&path);
        // Whole records cut off the end: only the head can tell.
        rewrite(&path, &orig[..3]);
        let e = verify(&path).unwrap_err();
        assert_eq!(e.line, 4);
        assert!(e.reason.contains("truncated"), "{e}");
        // Cut in the middle of a record.
        let full = orig.join("\n") + "\n";
        std::fs::write(&path, &full[..full.len() - 20]).unwrap();
        assert!(verify(&path).unwrap_err().reason.contains("truncated"));
        // And the writer refuses to append to it.
        assert!(matches!(
            AuditLog::open(&path),
            Err(AuditError::Damaged { .. })
        ));
    }

    #[tokio::test]
    async fn a_failed_write_latches_every_handle() {
        let (_d, path) = write_log(2);
        let auditor = Auditor::new(AuditLog::open(&path).unwrap());
        let other = auditor.clone();
        assert_eq!((auditor.failed(), auditor.check().is_ok()), (None, true));
        let mut tmp = head_path(&path).into_os_string();
        tmp.push(".tmp");
        std::fs::create_dir(&tmp).unwrap();
        let stopped = Event::AgentStopped(AgentStopped::default());
        assert!(auditor.record(stopped.clone()).await.is_err());
        std::fs::remove_dir(&tmp).unwrap();
        let why = other.failed().expect("the latch is shared").to_string();
        assert!(why.contains("head after record 3"), "{why}");
        assert!(matches!(other.check(), Err(AuditError::Failed { .. })));
        assert!(matches!(
            other.record(stopped).await,
            Err(AuditError::Failed { .. })
        ));
        // The record whose head failed is durable; nothing came after it.
        assert_eq!(read_records(&path).unwrap().len(), 3);
    }

    #[test]
    fn missing_head_is_reported() {
        let (_d, path) = write_log(2);
        std::fs::remove_file(head_path(&path)).unwrap();
        assert!(verify(&path).unwrap_err().reason.contains("head file"));
    }
}
