//! Closing a log for good (`homeostat audit seal`), damaged or not, without rewriting
//! any of it: the log and its head get a second name, `<log>.<n>.sealed` and
//! `<log>.<n>.sealed.head`, and a new log starts in its place whose first record
//! ([`AuditSealed`]) names that segment, pins its bytes by length and SHA-256, and says
//! how far it verifies. [`links`] follows and checks those links back.
//!
//! Each step leaves a state that is safe if the process dies there: until the new log
//! is renamed into place the old one is whole under both names (running `seal` again
//! finishes the job with the same segment); after it, the new log has one record and no
//! head, which `seal` again, or `run`, completes.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use super::{
    chain, format_record, head_path, head_problem, io_err, read_head, sync_dir, write_head,
    AuditError, AuditSealed, Event, Head, VerifyError, GENESIS,
};

/// The name the `n`-th sealed segment of a log gets: `<log>.<n>.sealed`.
pub fn segment_path(log: &Path, n: u64) -> PathBuf {
    let mut s = log.as_os_str().to_owned();
    s.push(format!(".{n}.sealed"));
    PathBuf::from(s)
}

/// What [`seal`] did.
#[derive(Debug, Clone)]
pub struct Sealed {
    /// The sealed segment: the old log's new name.
    pub segment: PathBuf,
    /// The new log's first record.
    pub link: AuditSealed,
    /// Whether a seal interrupted earlier was finished, instead of a new one made.
    pub resumed: bool,
}

/// Sets the log at `log` aside as its next sealed segment and starts a new log whose
/// first record links to it, for `reason`. Stop the agent first: one still running
/// would go on appending to the sealed segment.
pub fn seal(log: &Path, reason: &str) -> Result<Sealed, AuditError> {
    let head = head_path(log);
    if let Some(done) = finish_interrupted(log)? {
        return Ok(done);
    }
    if !log.try_exists().map_err(io_err(log))? {
        if !head.try_exists().map_err(io_err(&head))? {
            return Err(io_err(log)(std::io::ErrorKind::NotFound.into()));
        }
        // A head whose log is gone: the empty log is what gets sealed, with it.
        File::create_new(log).map_err(io_err(log))?;
    }
    // Refused while an agent writes the log: it would go on appending to the segment.
    let held = File::open(log).map_err(io_err(log))?;
    super::lock_writer(&held, log)?;
    seal_held(log, reason, false)
}

/// [`seal`] once the caller holds the log's writer lock. With `continues` (a rotation
/// of an intact log), the new log goes on with the old one's numbering and chain: its
/// first record has the `seq` after, and as `prev` the hash of, the old one's last.
/// Without (a seal, of a log perhaps damaged past its last good record, whose later
/// lines may hold any `seq`), it starts again at 1 from [`GENESIS`].
fn seal_held(log: &Path, reason: &str, continues: bool) -> Result<Sealed, AuditError> {
    let head = head_path(log);
    let (n, resumed) = match latest_segment(log)? {
        Some(m) if same_file(log, &segment_path(log, m)) => (m, true),
        Some(m) => match m.checked_add(1) {
            Some(n) => (n, false),
            // A file named by hand with the largest number: no segment can follow it.
            None => {
                return Err(io_err(&segment_path(log, m))(
                    std::io::ErrorKind::AlreadyExists.into(),
                ))
            }
        },
        None => (1, false),
    };
    let segment = segment_path(log, n);
    if !resumed {
        std::fs::hard_link(log, &segment).map_err(io_err(&segment))?;
    }
    let segment_head = head_path(&segment);
    if head.exists() && !segment_head.exists() {
        std::fs::hard_link(&head, &segment_head).map_err(io_err(&segment_head))?;
    }
    sync_dir(log);

    let file = File::open(&segment).map_err(io_err(&segment))?;
    let scan = chain::read_chain(file, true).map_err(io_err(&segment))?;
    let problem = match &scan.broken {
        Some(broken) => Some(broken.clone()),
        None => match read_head(&segment) {
            Ok(h) => chain::verdict(&scan, h.as_ref()).err(),
            Err(e) => Some(VerifyError {
                line: scan.records as usize + 1,
                reason: head_problem(e),
            }),
        },
    };
    let (previous_bytes, previous_sha256) = scan.file.clone().unwrap_or_default();
    let link = AuditSealed {
        previous: file_name(&segment),
        previous_sha256,
        previous_bytes,
        last_seq: scan.base + scan.records,
        last_hash: scan.last_hash.clone(),
        first_bad_line: problem.as_ref().map(|p| p.line),
        problem: problem.map(|p| p.reason),
        reason: reason.to_string(),
    };

    // The old head goes before the new log comes: a log of one record and no head is
    // what a crash during a first append leaves, and is recovered; the new log with the
    // old head would look cut.
    match std::fs::remove_file(&head) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err(&head)(e)),
        _ => sync_dir(log),
    }
    let (kind, data) = Event::AuditSealed(link.clone()).to_parts();
    let (seq, prev) = match link.last_seq.checked_add(1) {
        Some(next) if continues => (next, link.last_hash.as_str()),
        // A seal, or a log numbered up to the last u64 (only by hand): start again.
        _ => (1, GENESIS),
    };
    let (line, hash) = format_record(seq, &kind, prev, &data);
    let mut tmp = log.as_os_str().to_owned();
    tmp.push(".sealing");
    let tmp = PathBuf::from(tmp);
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(line.as_bytes()).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, log).map_err(io_err(log))?;
    sync_dir(log);
    write_head(log, &Head { seq, hash })?;
    Ok(Sealed {
        segment,
        link,
        resumed,
    })
}

/// A seal that stopped after its new log was in place: the log is a single
/// `audit_sealed` record linking to the latest segment, and has no head yet.
fn finish_interrupted(log: &Path) -> Result<Option<Sealed>, AuditError> {
    if head_path(log).exists() || !log.exists() {
        return Ok(None);
    }
    let Some(latest) = latest_segment(log)? else {
        return Ok(None);
    };
    let segment = segment_path(log, latest);
    let Some(link) = sealed_from(log) else {
        return Ok(None);
    };
    let file = File::open(log).map_err(io_err(log))?;
    let scan = chain::read_chain(file, false).map_err(io_err(log))?;
    if link.previous != file_name(&segment)
        || scan.records != 1
        || scan.broken.is_some()
        || scan.partial.is_some()
    {
        return Ok(None);
    }
    write_head(
        log,
        &Head {
            seq: scan.base + 1,
            hash: scan.last_hash,
        },
    )?;
    Ok(Some(Sealed {
        segment,
        link,
        resumed: true,
    }))
}

/// The highest `n` of the log's sealed segments, if any.
fn latest_segment(log: &Path) -> Result<Option<u64>, AuditError> {
    let dir = dir_of(log);
    let prefix = format!("{}.", file_name(log));
    let mut latest = None;
    for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
        let entry = entry.map_err(io_err(&dir))?;
        let name = entry.file_name();
        let n = name
            .to_str()
            .and_then(|s| s.strip_prefix(&prefix))
            .and_then(|s| s.strip_suffix(".sealed"))
            .and_then(|s| s.parse::<u64>().ok());
        latest = latest.max(n);
    }
    Ok(latest)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

fn dir_of(log: &Path) -> PathBuf {
    match log.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The link in a log's first record, if the log was started by [`seal`].
fn sealed_from(log: &Path) -> Option<AuditSealed> {
    let file = File::open(log).ok()?;
    let first = chain::first_record(file).ok()??;
    match first.event() {
        Ok(Event::AuditSealed(s)) => Some(s),
        _ => None,
    }
}

/// One link from a log back to the segment sealed before it, checked.
#[derive(Debug, Clone)]
pub struct Link {
    /// The log whose first record is the link.
    pub log: PathBuf,
    /// The segment it names, if the name is one a link may hold.
    pub segment: Option<PathBuf>,
    /// What the link says.
    pub sealed: AuditSealed,
    /// `Ok` with the records it holds, chained, if the segment is beside the log with the
    /// length and SHA-256 it was sealed with and its chain verifies as far as the link
    /// says; else what is wrong.
    pub check: Result<u64, String>,
}

/// The links from a log back through the segments sealed before it, each checked; empty
/// for a log not started by [`seal`]. Stops at the first link that does not hold.
pub fn links(log: &Path) -> Vec<Link> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::from([log.to_path_buf()]);
    let mut current = log.to_path_buf();
    while let Some(sealed) = sealed_from(&current) {
        let previous = previous_path(&current, &sealed.previous);
        let check = previous
            .as_deref()
            .map_err(Clone::clone)
            .and_then(|p| check_segment(p, &sealed));
        let holds = check.is_ok();
        out.push(Link {
            log: current,
            segment: previous.clone().ok(),
            sealed,
            check,
        });
        match previous {
            Ok(p) if holds && seen.insert(p.clone()) => current = p,
            _ => break,
        }
    }
    out
}

/// Where a link's segment is: only a plain file name in the log's own directory is
/// followed (a record must not make `verify` read files elsewhere).
fn previous_path(log: &Path, name: &str) -> Result<PathBuf, String> {
    let mut parts = Path::new(name).components();
    match (parts.next(), parts.next()) {
        (Some(Component::Normal(n)), None) => Ok(log.with_file_name(n)),
        _ => Err("the link does not name a file beside the log".into()),
    }
}

/// Checks a segment against its link: the bytes it was sealed with (length and
/// SHA-256), and, read again in the same pass, its chain: it verifies up to the record
/// the link names and, where the link recorded no problem, ends there. The SHA-256
/// alone pins the bytes; re-reading the chain also catches a link written by hand
/// that calls a damaged segment intact.
fn check_segment(path: &Path, sealed: &AuditSealed) -> Result<u64, String> {
    let file = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let scan = chain::read_chain(file, true).map_err(|e| format!("unreadable: {e}"))?;
    let (bytes, sha) = scan.file.clone().unwrap_or_default();
    if (bytes, sha.as_str()) != (sealed.previous_bytes, sealed.previous_sha256.as_str()) {
        return Err(format!(
            "changed since it was sealed: {bytes} bytes with sha256 {sha}, sealed as {} bytes with sha256 {}",
            sealed.previous_bytes, sealed.previous_sha256
        ));
    }
    let clean = scan.broken.is_none() && scan.partial.is_none();
    let last_seq = scan.base + scan.records;
    if (last_seq, scan.last_hash.as_str()) != (sealed.last_seq, sealed.last_hash.as_str())
        || (sealed.problem.is_none() && !clean)
    {
        return Err(format!(
            "its chain verifies to record {} ({}), not as its link says (record {})",
            last_seq,
            scan.broken
                .as_ref()
                .map_or_else(|| "then ends".to_string(), |b| b.to_string()),
            sealed.last_seq
        ));
    }
    Ok(scan.records)
}

/// The files of a log's linked chain that exist, oldest first: each sealed segment the
/// links reach back to, then the log itself.
pub fn chain_files(log: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = links(log)
        .into_iter()
        .filter_map(|l| l.segment)
        .filter(|p| p.is_file())
        .collect();
    files.reverse();
    files.push(log.to_path_buf());
    files
}

/// Rotates the log at `log` if it holds `max_bytes` or more (0: always, if it holds
/// any record): seals it with reason `rotated at N bytes` and starts a new log linked
/// to it, so that every segment stays one verifiable chain. Refuses a damaged log
/// (that is for [`seal`], with a reason) and a log an agent holds (the agent rotates
/// its own through [`AuditLog::rotate`](super::AuditLog::rotate)). `None` if it was
/// not due.
pub fn rotate(log: &Path, max_bytes: u64) -> Result<Option<Sealed>, AuditError> {
    let held = File::open(log).map_err(io_err(log))?;
    super::lock_writer(&held, log)?;
    let bytes = held.metadata().map_err(io_err(log))?.len();
    if bytes == 0 || bytes < max_bytes {
        return Ok(None);
    }
    super::verify(log).map_err(|e| AuditError::NotIntact {
        path: log.to_path_buf(),
        reason: super::escape(&e.to_string()).into_owned(),
    })?;
    seal_held(log, &rotation_reason(bytes, max_bytes), true).map(Some)
}

/// The `reason` of a rotation's `audit_sealed` record.
fn rotation_reason(bytes: u64, max_bytes: u64) -> String {
    format!("rotated at {bytes} bytes (limit {max_bytes})")
}

impl super::AuditLog {
    /// Rotates this log if it holds `max_bytes` or more (see [`rotate`]), keeping its
    /// writer lock throughout, and goes on appending to the new log. A rotation that
    /// fails latches the log as failed, like a failed append: which file the next
    /// record would go to is then unsure, and the next open recovers it.
    pub fn rotate(&mut self, max_bytes: u64) -> Result<Option<Sealed>, AuditError> {
        if let Some(reason) = self.failed.get() {
            return Err(AuditError::Failed {
                path: self.path.clone(),
                reason: reason.clone(),
            });
        }
        let bytes = self.file.metadata().map_err(io_err(&self.path))?.len();
        if self.seq == 0 || bytes < max_bytes {
            return Ok(None);
        }
        let rotated =
            seal_held(&self.path, &rotation_reason(bytes, max_bytes), true).and_then(|s| {
                let next = super::AuditLog::open(&self.path)?;
                Ok((s, next))
            });
        match rotated {
            Ok((sealed, next)) => {
                // The old file (now the segment) is closed with its lock; the latch is
                // kept, shared with every `Auditor` of this log.
                self.file = next.file;
                self.seq = next.seq;
                self.last_hash = next.last_hash;
                Ok(Some(sealed))
            }
            Err(e) => {
                let _ = self.failed.set(format!("rotating: {e}"));
                Err(e)
            }
        }
    }
}
