//! One streaming pass over a log: every complete line checked (its own hash, `seq`
//! counting up by one, `prev` chaining to the record before), stopping at the first bad
//! one, and whatever lies past the last newline. Then two pure judgements of what was
//! found against the head: [`verdict`] (is the log intact?) and [`recovery`] (is it a
//! state a crash of the writer leaves, and what puts it right?).
//!
//! [`verify`](super::verify), [`AuditLog::open`](super::AuditLog::open) and
//! [`seal`](super::seal) all read through here, so they never disagree about a log.

use std::io::{self, BufRead, BufReader, Read};

use sha2::{Digest, Sha256};

use super::{check_line, AuditRecord, Head, PartialLine, VerifyError, GENESIS};

/// The longest line read into memory (a record is a few KiB); a longer one is bad, and
/// a longer tail is hashed as it streams past.
pub(crate) const MAX_LINE: usize = 64 << 20;

/// What one pass over a log found.
#[derive(Debug, Clone)]
pub(crate) struct Scan {
    /// The `seq` before the first record: 0 for a log that starts from [`GENESIS`], the
    /// last `seq` of the previous segment for a log a rotation started (see [`first`]).
    pub base: u64,
    /// Complete records that verify and chain, from the first up to the first bad line.
    pub records: u64,
    /// Hash of the last of them ([`GENESIS`] for none).
    pub last_hash: String,
    /// `prev` of the last of them ([`GENESIS`] for none): the head a crash between its
    /// line and its head leaves.
    pub last_prev: String,
    /// The first complete line that is not a good record; the pass stops there.
    pub broken: Option<VerifyError>,
    /// Bytes past the last newline, when nothing before them is broken.
    pub partial: Option<PartialLine>,
    /// The first record, if it is good.
    pub first: Option<AuditRecord>,
    /// Length and SHA-256 (hex) of the whole file, when asked for.
    pub file: Option<(u64, String)>,
}

/// One piece of a log as [`Lines`] cuts it.
enum Piece {
    /// A complete line, without its newline.
    Line(Vec<u8>),
    /// A complete line longer than the limit: its length.
    Overlong(u64),
    /// Bytes after the last newline.
    Tail { bytes: u64, sha256: String },
}

/// Newline-terminated lines of at most `limit` bytes, in bounded memory.
struct Lines<R> {
    inner: R,
    limit: usize,
}

impl<R: BufRead> Lines<R> {
    fn next(&mut self) -> io::Result<Option<Piece>> {
        let mut buf = Vec::new();
        // Past the limit the line is only hashed (a torn tail's sha256 is recorded).
        let mut over: Option<Sha256> = None;
        let mut len = 0u64;
        loop {
            let chunk = self.inner.fill_buf()?;
            if chunk.is_empty() {
                if len == 0 {
                    return Ok(None);
                }
                let sha256 = match over {
                    Some(h) => hex::encode(h.finalize()),
                    None => hex::encode(Sha256::digest(&buf)),
                };
                return Ok(Some(Piece::Tail { bytes: len, sha256 }));
            }
            let newline = chunk.iter().position(|&b| b == b'\n');
            let content = &chunk[..newline.unwrap_or(chunk.len())];
            len += content.len() as u64;
            match &mut over {
                Some(h) => h.update(content),
                None if buf.len() + content.len() > self.limit => {
                    let mut h = Sha256::new();
                    h.update(&buf);
                    h.update(content);
                    buf = Vec::new();
                    over = Some(h);
                }
                None => buf.extend_from_slice(content),
            }
            let used = content.len() + usize::from(newline.is_some());
            self.inner.consume(used);
            if newline.is_some() {
                return Ok(Some(match over {
                    Some(_) => Piece::Overlong(len),
                    None => Piece::Line(buf),
                }));
            }
        }
    }
}

/// Counts, and optionally hashes, every byte read through it.
struct Hashing<R> {
    inner: R,
    sha: Option<Sha256>,
    bytes: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(out)?;
        if let Some(sha) = &mut self.sha {
            sha.update(&out[..n]);
        }
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Reads a log from its start; with `hash_file`, also the length and SHA-256 of all of
/// it (read to the end even past a broken line).
pub(crate) fn read_chain(file: impl Read, hash_file: bool) -> io::Result<Scan> {
    read_chain_with(file, hash_file, MAX_LINE)
}

pub(crate) fn read_chain_with(file: impl Read, hash_file: bool, limit: usize) -> io::Result<Scan> {
    let mut lines = Lines {
        inner: BufReader::new(Hashing {
            inner: file,
            sha: hash_file.then(Sha256::new),
            bytes: 0,
        }),
        limit,
    };
    let mut scan = Scan {
        base: 0,
        records: 0,
        last_hash: GENESIS.to_string(),
        last_prev: GENESIS.to_string(),
        broken: None,
        partial: None,
        first: None,
        file: None,
    };
    let mut offset = 0u64;
    while let Some(piece) = lines.next()? {
        let lineno = scan.records as usize + 1;
        let bad = |reason: String| {
            Some(VerifyError {
                line: lineno,
                reason,
            })
        };
        match piece {
            Piece::Tail { bytes, sha256 } => {
                scan.partial = Some(PartialLine {
                    offset,
                    bytes,
                    sha256,
                });
                break;
            }
            Piece::Overlong(len) => {
                scan.broken = bad(format!("a line of {len} bytes, longer than any record"));
                break;
            }
            Piece::Line(line) => match next_record(&line, &mut scan) {
                Ok(rec) => {
                    offset += line.len() as u64 + 1;
                    scan.records += 1;
                    scan.last_prev = std::mem::replace(&mut scan.last_hash, rec.hash.clone());
                    if scan.first.is_none() {
                        scan.first = Some(rec);
                    }
                }
                Err(reason) => {
                    scan.broken = bad(reason);
                    break;
                }
            },
        }
    }
    if hash_file {
        io::copy(&mut lines.inner, &mut io::sink())?;
        let h = lines.inner.into_inner();
        let sha = h.sha.map(|s| hex::encode(s.finalize())).unwrap_or_default();
        scan.file = Some((h.bytes, sha));
    }
    Ok(scan)
}

/// Checks one complete line as the next record of `scan`; the first may also be the
/// link a rotation starts a log with, which sets `scan.base`.
fn next_record(line: &[u8], scan: &mut Scan) -> Result<AuditRecord, String> {
    if scan.records > 0 {
        return check_record(line, scan.base + scan.records, &scan.last_hash);
    }
    let (rec, base) = first(line)?;
    scan.base = base;
    // The record before it is the previous segment's last.
    scan.last_hash = rec.prev.clone();
    Ok(rec)
}

/// Checks a log's first line: a record that starts from [`GENESIS`] with `seq` 1, or
/// the `audit_sealed` link a rotation starts a log with, which goes on with the previous
/// segment's numbering and chain: its `seq` is one past, and its `prev` is, the
/// `last_seq` and `last_hash` it names. Returns the record and the `seq` before it.
/// (That the previous segment does end there is for [`links`](super::links) to check.)
fn first(line: &[u8]) -> Result<(AuditRecord, u64), String> {
    let genesis = check_record(line, 0, GENESIS);
    let Err(why) = genesis else {
        return genesis.map(|rec| (rec, 0));
    };
    let line = std::str::from_utf8(line).map_err(|_| "not UTF-8 text".to_string())?;
    let rec = check_line(line)?;
    let continues = rec.kind == "audit_sealed"
        && rec.seq > 1
        && rec.data.get("last_seq").and_then(serde_json::Value::as_u64) == Some(rec.seq - 1)
        && rec
            .data
            .get("last_hash")
            .and_then(serde_json::Value::as_str)
            == Some(&rec.prev);
    if continues {
        Ok((rec.clone(), rec.seq - 1))
    } else {
        Err(why)
    }
}

/// Checks one complete line as the record after `n` records ending in `prev`.
fn check_record(line: &[u8], n: u64, prev: &str) -> Result<AuditRecord, String> {
    let line = std::str::from_utf8(line).map_err(|_| "not UTF-8 text".to_string())?;
    let rec = check_line(line)?;
    // A hostile log may number its records up to the largest u64: never overflow.
    let Some(expected) = n.checked_add(1) else {
        return Err(format!("sequence {} past the last there can be", rec.seq));
    };
    if rec.seq != expected {
        return Err(format!(
            "sequence {} where {expected} was expected (deleted, inserted or reordered)",
            rec.seq,
        ));
    }
    if rec.prev != prev {
        return Err(
            "does not chain to the record before it (deleted, inserted or reordered)".into(),
        );
    }
    Ok(rec)
}

/// What puts a log a crash left right: at most one torn line cut off and the head
/// (re)written. Empty for an intact log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Recovery {
    /// The torn last line to cut off.
    pub truncate: Option<PartialLine>,
    /// The head as found (`None`: missing) and the head to write.
    pub head: Option<(Option<Head>, Head)>,
}

impl Recovery {
    /// Whether the log needs nothing.
    pub fn is_empty(&self) -> bool {
        self.truncate.is_none() && self.head.is_none()
    }
}

/// Whether the log and its head are a state the writer can leave when killed at any
/// instant, and if so what recovers it; anything else is damage, named as
/// [`verdict`] names it.
///
/// The writer appends a line, fsyncs it, then replaces the head, and writes the next line
/// only after that; so a crash leaves either a torn line after a log its head matches,
/// or a complete last line one past its head (none on the first record), never both.
pub(crate) fn recovery(scan: &Scan, head: Option<&Head>) -> Result<Recovery, VerifyError> {
    if let Some(broken) = &scan.broken {
        return Err(broken.clone());
    }
    let n = scan.records;
    let last = Head {
        seq: scan.base + n,
        hash: scan.last_hash.clone(),
    };
    let behind = Head {
        seq: (scan.base + n).saturating_sub(1),
        hash: scan.last_prev.clone(),
    };
    match (head, &scan.partial) {
        (Some(h), partial) if *h == last => Ok(Recovery {
            truncate: partial.clone(),
            head: None,
        }),
        (None, partial) if n == 0 => Ok(Recovery {
            truncate: partial.clone(),
            head: None,
        }),
        (None, None) if n == 1 => Ok(Recovery {
            truncate: None,
            head: Some((None, last)),
        }),
        (Some(h), None) if n >= 2 && *h == behind => Ok(Recovery {
            truncate: None,
            head: Some((Some(h.clone()), last)),
        }),
        _ => Err(mismatch(scan, head)),
    }
}

/// Whether the log is intact: every line good, none torn, and the last record the one
/// its head names. Returns the number of records.
pub(crate) fn verdict(scan: &Scan, head: Option<&Head>) -> Result<u64, VerifyError> {
    match recovery(scan, head) {
        Ok(r) if r.is_empty() => Ok(scan.records),
        Ok(_) => {
            let mut e = mismatch(scan, head);
            e.reason
                .push_str(": what a crash leaves; `homeostat run` recovers it at start");
            Err(e)
        }
        Err(e) => Err(e),
    }
}

/// What is wrong with the end of a log whose complete lines are good.
fn mismatch(scan: &Scan, head: Option<&Head>) -> VerifyError {
    let n = scan.records;
    // Lines count in this file; `seq` may go on from a segment before it.
    let last_seq = scan.base + n;
    let at = |line: u64, reason: String| VerifyError {
        line: line as usize,
        reason,
    };
    if let Some(p) = &scan.partial {
        return at(
            n + 1,
            format!(
                "incomplete record at the end (truncated): {} bytes without a newline",
                p.bytes
            ),
        );
    }
    match head {
        None => at(
            n + 1,
            "the head file is missing, so a cut tail cannot be ruled out".into(),
        ),
        Some(h) if h.seq > last_seq => at(
            n + 1,
            format!(
                "log ends at record {last_seq} but the head says {} (truncated)",
                h.seq
            ),
        ),
        Some(h) if h.seq.checked_add(1) == Some(last_seq) && h.hash == scan.last_prev => at(
            n,
            format!(
                "the head is one record behind the last (head says record {})",
                h.seq
            ),
        ),
        Some(h) => at(
            n,
            format!(
                "last record does not match the head (head says record {})",
                h.seq
            ),
        ),
    }
}

/// The first record of a log, if its first line is a good record; reads no further.
pub(crate) fn first_record(file: impl Read) -> io::Result<Option<AuditRecord>> {
    let mut lines = Lines {
        inner: BufReader::new(file),
        limit: MAX_LINE,
    };
    Ok(match lines.next()? {
        Some(Piece::Line(line)) => first(&line).ok().map(|(rec, _)| rec),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(input: &[u8], limit: usize) -> Vec<String> {
        let mut lines = Lines {
            inner: BufReader::with_capacity(3, input),
            limit,
        };
        let mut out = Vec::new();
        while let Some(p) = lines.next().unwrap() {
            out.push(match p {
                Piece::Line(l) => format!("line {}", String::from_utf8_lossy(&l)),
                Piece::Overlong(n) => format!("overlong {n}"),
                Piece::Tail { bytes, sha256 } => {
                    assert_eq!(
                        sha256,
                        hex::encode(Sha256::digest(&input[input.len() - bytes as usize..]))
                    );
                    format!("tail {bytes}")
                }
            });
        }
        out
    }

    #[test]
    fn lines_are_cut_in_bounded_memory() {
        assert_eq!(pieces(b"", 8), Vec::<String>::new());
        assert_eq!(pieces(b"ab\n\ncd", 8), ["line ab", "line ", "tail 2"]);
        assert_eq!(
            pieces(b"0123456789\nabc\n0123456789", 8),
            ["overlong 10", "line abc", "tail 10"]
        );
    }

    #[test]
    fn the_whole_file_is_hashed_past_a_broken_line() {
        let input = b"not a record\nmore\ntail";
        let scan = read_chain(&input[..], true).unwrap();
        assert_eq!(scan.broken.unwrap().line, 1);
        assert_eq!(
            scan.file,
            Some((input.len() as u64, hex::encode(Sha256::digest(input))))
        );
    }
}
