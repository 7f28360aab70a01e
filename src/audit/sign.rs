//! Signed checkpoints: an Ed25519 signature over the `seq` and `hash` of the record
//! before it, appended as a [`Checkpoint`] record by `homeostat audit checkpoint`.
//!
//! The hash chain alone does not stop someone who can write the log from rewriting it
//! from any record on and recomputing every hash after it (and the head). A checkpoint
//! does, up to the record it signs, for whoever cannot read the private key: a rewrite
//! changes that record's hash, and the signature over the old one no longer matches any
//! record, nor can a new one be made. Records after the last checkpoint are protected
//! by the chain alone.
//!
//! Keys are one line of text each, a label then 64 hex digits: the 32-byte secret seed
//! (`homeostat-audit-ed25519-private …`, mode 0600, written once) and the 32-byte public
//! key beside it (`homeostat-audit-ed25519-public …`, `<key>.pub`). The labels keep one
//! from being taken for the other (a public key passed as `--key` would otherwise sign
//! as a "private" key anyone can read). Verification uses the public key the auditor
//! brings, never the one a record names.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};

use super::{AuditError, AuditLog, Checkpoint, Event};

/// What can go wrong with a key file.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file system refused.
    #[error("{path}: {error}", path = .path.display())]
    Io {
        /// The key file.
        path: PathBuf,
        /// The underlying error: in the message, so not a `source` as well (a chain
        /// printed whole would repeat it).
        error: std::io::Error,
    },
    /// `keygen` never overwrites a key: the old one may be the only way to check old
    /// checkpoints.
    #[error("{path}: already exists; not overwriting a key", path = .path.display())]
    Exists {
        /// The key file.
        path: PathBuf,
    },
    /// The file does not hold a key of the expected form.
    #[error("{path}: not a homeostat {what} key: expected one line `{label} <64 hex digits>` (from `homeostat audit keygen`)", path = .path.display(), label = label(.what))]
    Malformed {
        /// The key file.
        path: PathBuf,
        /// `private` or `public`.
        what: &'static str,
    },
}

/// The label a key file of kind `what` (`private` or `public`) starts with.
fn label(what: &str) -> String {
    format!("homeostat-audit-ed25519-{what}")
}

/// Where the public key of the private key at `key` is written: `<key>.pub`.
pub fn public_key_path(key: &Path) -> PathBuf {
    let mut s = key.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

/// The bytes a checkpoint signs: a fixed prefix (so that a signature made for anything
/// else with the same key is never a checkpoint), the record's `seq` and `hash`.
pub fn checkpoint_message(seq: u64, hash: &str) -> Vec<u8> {
    format!("homeostat audit checkpoint v1\nseq {seq}\nhash {hash}\n").into_bytes()
}

/// Makes a new key pair from 32 bytes of the kernel's randomness: the private key at
/// `out` (mode 0600, created only if absent) and the public key at `<out>.pub`.
pub fn generate_key(out: &Path) -> Result<VerifyingKey, KeyError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |error| KeyError::Io { path, error }
    };
    let pub_path = public_key_path(out);
    for p in [out, pub_path.as_path()] {
        if p.try_exists().map_err(io(p))? {
            return Err(KeyError::Exists {
                path: p.to_path_buf(),
            });
        }
    }
    let mut seed = [0u8; 32];
    let urandom = Path::new("/dev/urandom");
    File::open(urandom)
        .and_then(|mut f| f.read_exact(&mut seed))
        .map_err(io(urandom))?;
    let key = SigningKey::from_bytes(&seed);
    let mut secret = format!("{} {}\n", label("private"), hex::encode(seed));
    wipe(&mut seed);
    // Created 0600 from the start: never readable by others, not even for an instant.
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .and_then(|mut f| f.write_all(secret.as_bytes()).and_then(|()| f.sync_all()));
    wipe_string(&mut secret);
    written.map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => KeyError::Exists {
            path: out.to_path_buf(),
        },
        _ => io(out)(e),
    })?;
    let public = key.verifying_key();
    let line = format!("{} {}\n", label("public"), hex::encode(public.as_bytes()));
    std::fs::write(&pub_path, line).map_err(io(&pub_path))?;
    Ok(public)
}

/// 32 bytes from a key file: its label, a space, 64 hex digits (surrounding whitespace
/// allowed).
fn read_key_bytes(path: &Path, what: &'static str) -> Result<[u8; 32], KeyError> {
    let malformed = || KeyError::Malformed {
        path: path.to_path_buf(),
        what,
    };
    let mut text = String::new();
    let read = File::open(path)
        // A key is 65 bytes: read a little more than that, never a whole large file.
        .and_then(|f| f.take(256).read_to_string(&mut text));
    let mut bytes = [0u8; 32];
    let decoded = match text.trim().split_once(' ') {
        Some((l, hex)) if l == label(what) => {
            hex::decode_to_slice(hex.trim(), &mut bytes).map_err(|_| ())
        }
        _ => Err(()),
    };
    wipe_string(&mut text);
    match read {
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => return Err(malformed()),
        Err(error) => {
            return Err(KeyError::Io {
                path: path.to_path_buf(),
                error,
            })
        }
        Ok(_) => {}
    }
    decoded.map_err(|_| malformed())?;
    Ok(bytes)
}

/// Overwrites a copy of secret bytes once done with them (best effort: without
/// `unsafe`, the compiler is only asked, through `black_box`, to keep the writes).
fn wipe(bytes: &mut [u8]) {
    bytes.fill(0);
    std::hint::black_box(bytes);
}

/// [`wipe`] for the hex text of a secret.
fn wipe_string(s: &mut String) {
    let mut bytes = std::mem::take(s).into_bytes();
    wipe(&mut bytes);
}

/// Reads a private key written by [`generate_key`].
pub fn read_signing_key(path: &Path) -> Result<SigningKey, KeyError> {
    let mut seed = read_key_bytes(path, "private")?;
    let key = SigningKey::from_bytes(&seed);
    wipe(&mut seed);
    Ok(key)
}

/// Reads a public key written by [`generate_key`] (`<key>.pub`).
pub fn read_public_key(path: &Path) -> Result<VerifyingKey, KeyError> {
    VerifyingKey::from_bytes(&read_key_bytes(path, "public")?).map_err(|_| KeyError::Malformed {
        path: path.to_path_buf(),
        what: "public",
    })
}

impl AuditLog {
    /// Appends a [`Checkpoint`] signing the last record (its `seq` and `hash`) with
    /// `key`; returns the checkpoint's own sequence number.
    pub fn checkpoint(&mut self, key: &SigningKey) -> Result<u64, AuditError> {
        let (seq, hash) = (self.seq, self.last_hash.clone());
        let signature = key.sign(&checkpoint_message(seq, &hash));
        self.record(&Event::Checkpoint(Checkpoint {
            seq,
            hash,
            public_key: hex::encode(key.verifying_key().as_bytes()),
            signature: hex::encode(signature.to_bytes()),
        }))
    }
}

/// What the checkpoints of a log's files say, checked against one public key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Signed {
    /// Checkpoints whose signature holds.
    pub valid: u64,
    /// The last of them: its file and the `seq` it signs there.
    pub last: Option<(PathBuf, u64)>,
    /// Records after the one the last checkpoint signs (the checkpoint's own included):
    /// what rests on the chain alone.
    pub after: u64,
    /// The first checkpoint that does not hold: its file, its own `seq`, and why.
    pub bad: Option<(PathBuf, u64, String)>,
}

impl Signed {
    /// Whether at least one checkpoint holds, none fails, and the last signs record
    /// `at_least` or later (what an auditor saw signed before: less means checkpoints
    /// were removed with the records after them).
    pub fn holds(&self, at_least: u64) -> bool {
        self.bad.is_none() && self.last.as_ref().is_some_and(|(_, seq)| *seq >= at_least)
    }
}

/// Checks every checkpoint in `files` (oldest first) against `key`: its signature, and
/// that it signs the record right before it (so the chain, verified separately, ties
/// every earlier record to it). Stops at the first that fails. Only lines that may be
/// checkpoints are parsed: a sealed segment's damage past its link is not this check's.
pub fn verify_checkpoints(files: &[PathBuf], key: &VerifyingKey) -> Result<Signed, AuditError> {
    use std::io::BufRead as _;
    let mut out = Signed::default();
    let ours = hex::encode(key.as_bytes());
    let needle = "\"kind\":\"checkpoint\"";
    for file in files {
        let reader = File::open(file).map_err(super::io_err(file))?;
        for (i, line) in std::io::BufReader::new(reader).split(b'\n').enumerate() {
            let line = line.map_err(super::io_err(file))?;
            out.after += 1;
            let Ok(line) = std::str::from_utf8(&line) else {
                continue;
            };
            if !line.contains(needle) {
                continue;
            }
            let rec = super::parse_line(file, i, line)?;
            if rec.kind != "checkpoint" {
                continue;
            }
            match check_one(&rec, &ours, key) {
                Ok(signed) => {
                    out.valid += 1;
                    out.last = Some((file.clone(), signed));
                    out.after = 1;
                }
                Err(why) => {
                    out.bad = Some((file.clone(), rec.seq, why));
                    return Ok(out);
                }
            }
        }
    }
    Ok(out)
}

/// Checks one checkpoint record; returns the `seq` it signs.
fn check_one(rec: &super::AuditRecord, ours: &str, key: &VerifyingKey) -> Result<u64, String> {
    let cp = match rec.event() {
        Ok(Event::Checkpoint(cp)) => cp,
        _ => return Err("not a readable checkpoint record".into()),
    };
    if cp.seq.checked_add(1) != Some(rec.seq) || cp.hash != rec.prev {
        return Err(format!(
            "signs record {} but does not follow it (a record before it was changed)",
            cp.seq
        ));
    }
    if !cp.public_key.eq_ignore_ascii_case(ours) {
        return Err(format!(
            "signed with another key (public key {})",
            super::escape(&cp.public_key)
        ));
    }
    let mut sig = [0u8; 64];
    hex::decode_to_slice(&cp.signature, &mut sig).map_err(|_| "malformed signature")?;
    key.verify_strict(
        &checkpoint_message(cp.seq, &cp.hash),
        &Signature::from_bytes(&sig),
    )
    .map_err(|_| "the signature does not match (forged or changed)".to_string())?;
    Ok(cp.seq)
}
