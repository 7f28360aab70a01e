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
//! What a record says is typed: the agent writes [`Event`]s and reads them back with
//! [`AuditRecord::event`]; [`AuditRecord`] is the raw, verifiable line.

mod event;
mod summary;

pub use event::*;
pub use summary::summarize;

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
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
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The existing log is damaged, so appending to it would hide the damage.
    #[error(
        "{path}: refusing to append to a damaged log: {reason} (run `homeostat audit verify`)"
    )]
    Damaged {
        /// The log.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The head file's content: where the log must end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
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

impl AuditLog {
    /// Opens (or creates) a log for appending; an existing log must end where its head says.
    pub fn open(path: &Path) -> Result<AuditLog, AuditError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .map_err(io_err(path))?;
        let (seq, last_hash) = match last_line(&mut file).map_err(io_err(path))? {
            None => (0, GENESIS.to_string()),
            Some(line) => {
                let damaged = |reason: String| AuditError::Damaged {
                    path: path.to_path_buf(),
                    reason,
                };
                let Some(line) = line.strip_suffix('\n') else {
                    return Err(damaged("the last record is incomplete".into()));
                };
                let rec = check_line(line).map_err(damaged)?;
                if let Some(head) = read_head(path)? {
                    if head.seq != rec.seq || head.hash != rec.hash {
                        return Err(damaged(format!(
                            "the log ends at record {} but its head file says {}",
                            rec.seq, head.seq
                        )));
                    }
                }
                (rec.seq, rec.hash)
            }
        };
        Ok(AuditLog {
            path: path.to_path_buf(),
            file,
            seq,
            last_hash,
        })
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
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
    pub fn append(&mut self, kind: &str, data: &Value) -> Result<u64, AuditError> {
        let seq = self.seq + 1;
        let ts = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let body = format!(
            "{{\"seq\":{seq},\"ts\":{},\"kind\":{},\"prev\":\"{}\",\"data\":{}}}",
            Value::from(ts),
            Value::from(kind),
            self.last_hash,
            data
        );
        let hash = sha256_hex(body.as_bytes());
        let line = format!("{}{HASH_PREFIX}{hash}\"}}\n", &body[..body.len() - 1]);
        self.file
            .write_all(line.as_bytes())
            .map_err(io_err(&self.path))?;
        self.file.sync_data().map_err(io_err(&self.path))?;
        write_head(
            &self.path,
            &Head {
                seq,
                hash: hash.clone(),
            },
        )?;
        self.seq = seq;
        self.last_hash = hash;
        Ok(seq)
    }
}

/// Reads the last line (with its newline, if any) without reading the whole file.
fn last_line(file: &mut File) -> std::io::Result<Option<String>> {
    let len = file.seek(SeekFrom::End(0))?;
    if len == 0 {
        return Ok(None);
    }
    let mut chunk = 4096u64;
    loop {
        let start = len.saturating_sub(chunk);
        file.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::with_capacity((len - start) as usize);
        Read::by_ref(file).take(len - start).read_to_end(&mut buf)?;
        // Skip the final newline when looking for the line's start.
        let search = if buf.last() == Some(&b'\n') {
            &buf[..buf.len() - 1]
        } else {
            &buf[..]
        };
        if let Some(pos) = search.iter().rposition(|&b| b == b'\n') {
            return Ok(Some(String::from_utf8_lossy(&buf[pos + 1..]).into_owned()));
        }
        if start == 0 {
            return Ok(Some(String::from_utf8_lossy(&buf).into_owned()));
        }
        chunk *= 4;
    }
}

fn read_head(log: &Path) -> Result<Option<Head>, AuditError> {
    let path = head_path(log);
    match std::fs::read_to_string(&path) {
        Ok(s) => serde_json::from_str(&s)
            .map(Some)
            .map_err(|e| AuditError::Damaged {
                path: path.clone(),
                reason: format!("unreadable head file: {e}"),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AuditError::Io { path, source: e }),
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
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
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
pub fn verify(path: &Path) -> Result<u64, VerifyError> {
    let at = |line: usize, reason: String| VerifyError { line, reason };
    let file = File::open(path).map_err(|e| at(0, format!("cannot open: {e}")))?;
    let mut reader = BufReader::new(file);
    let mut prev = GENESIS.to_string();
    let mut n = 0u64;
    let mut buf = String::new();
    loop {
        buf.clear();
        let read = reader
            .read_line(&mut buf)
            .map_err(|e| at(n as usize + 1, format!("unreadable: {e}")))?;
        if read == 0 {
            break;
        }
        let lineno = n as usize + 1;
        let Some(line) = buf.strip_suffix('\n') else {
            return Err(at(
                lineno,
                "incomplete record at the end (truncated)".into(),
            ));
        };
        let rec = check_line(line).map_err(|r| at(lineno, r))?;
        if rec.seq != n + 1 {
            return Err(at(
                lineno,
                format!(
                    "sequence {} where {} was expected (deleted, inserted or reordered)",
                    rec.seq,
                    n + 1
                ),
            ));
        }
        if rec.prev != prev {
            return Err(at(
                lineno,
                "does not chain to the record before it (deleted, inserted or reordered)".into(),
            ));
        }
        prev = rec.hash;
        n += 1;
    }
    let head = read_head(path).map_err(|e| at(n as usize + 1, e.to_string()))?;
    match head {
        None if n == 0 => Ok(0),
        None => Err(at(
            n as usize + 1,
            format!(
                "head file {} is missing, so a cut tail cannot be ruled out",
                head_path(path).display()
            ),
        )),
        Some(h) if h.seq == n && h.hash == prev => Ok(n),
        Some(h) if h.seq > n => Err(at(
            n as usize + 1,
            format!(
                "log ends at record {n} but the head says {} (truncated)",
                h.seq
            ),
        )),
        Some(h) => Err(at(
            n as usize,
            format!(
                "last record does not match the head (head says record {})",
                h.seq
            ),
        )),
    }
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
    serde_json::from_str(line).map_err(|e| AuditError::Damaged {
        path: path.to_path_buf(),
        reason: format!("line {}: {e}", i + 1),
    })
}

/// Streams the records of the given `kinds` to `f`, in log order; lines of other kinds
/// are skipped unparsed (the log may be large).
pub fn scan(path: &Path, kinds: &[&str], mut f: impl FnMut(AuditRecord)) -> Result<(), AuditError> {
    use std::io::BufRead as _;
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let needles: Vec<String> = kinds
        .iter()
        .map(|k| format!("\"kind\":{}", Value::from(*k)))
        .collect();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io_err(path))?;
        if !needles.iter().any(|n| line.contains(n.as_str())) {
            continue;
        }
        let rec = parse_line(path, i, &line)?;
        if kinds.contains(&rec.kind.as_str()) {
            f(rec);
        }
    }
    Ok(())
}

/// A cloneable, async-friendly handle to the log; appends run on the blocking pool.
#[derive(Debug, Clone)]
pub struct Auditor {
    log: Arc<Mutex<AuditLog>>,
    path: PathBuf,
    written: Arc<std::sync::atomic::AtomicU64>,
}

impl Auditor {
    /// Wraps an opened log.
    pub fn new(log: AuditLog) -> Self {
        let path = log.path().to_path_buf();
        Auditor {
            log: Arc::new(Mutex::new(log)),
            path,
            written: Arc::default(),
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

    #[test]
    fn missing_head_is_reported() {
        let (_d, path) = write_log(2);
        std::fs::remove_file(head_path(&path)).unwrap();
        assert!(verify(&path).unwrap_err().reason.contains("head file"));
    }
}
