//! Arbitrary logs and heads against the audit log's readers and its writer's `open`:
//! nothing panics, a log `open` refuses is left byte for byte as it was, and a log it
//! accepts is an intact chain (at most a torn line past its end, or a head one behind),
//! so no record is ever appended after damage.
//!
//! Logs are either arbitrary bytes or lines, or a real log (written once by the writer)
//! cut, flipped, reordered or extended, with its head missing, right, behind, ahead or
//! garbage. Which of those `open` must accept is decided here by a model of what a crash
//! of the writer can leave, written apart from the code under test.

use std::path::Path;
use std::sync::OnceLock;

use homeostat::audit::{self, head_path, AuditLog};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{json, Value};

/// Records in the real log the cases start from.
const RECORDS: usize = 6;

/// A real log: its bytes, its lines, and the head the writer left after each record
/// (`heads[j]` after record `j + 1`).
struct Template {
    bytes: Vec<u8>,
    lines: Vec<Vec<u8>>,
    heads: Vec<Vec<u8>>,
}

fn template() -> &'static Template {
    static T: OnceLock<Template> = OnceLock::new();
    T.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut log = AuditLog::open(&path).unwrap();
        let mut heads = Vec::new();
        for i in 0..RECORDS {
            let data =
                json!({"i": i, "note": "é \" \\ \u{1b}[31m", "labels": {"pod": format!("p{i}")}});
            log.append("step", &data).unwrap();
            heads.push(std::fs::read(head_path(&path)).unwrap());
        }
        let bytes = std::fs::read(&path).unwrap();
        let lines = bytes
            .split_inclusive(|&b| b == b'\n')
            .map(<[u8]>::to_vec)
            .collect();
        Template {
            bytes,
            lines,
            heads,
        }
    })
}

#[derive(Debug, Clone)]
enum Body {
    Bytes(Vec<u8>),
    Lines(Vec<String>, bool),
    /// The first `records` lines of the real log, edited.
    Real {
        records: usize,
        edit: Edit,
    },
}

#[derive(Debug, Clone)]
enum Edit {
    Keep,
    Cut(Index),
    Flip(Index, u8),
    Drop(Index),
    Duplicate(Index),
    Swap(Index),
    Append(Vec<u8>),
}

#[derive(Debug, Clone)]
enum HeadCase {
    Missing,
    /// The head the writer left after this many records (1..=RECORDS).
    After(usize),
    Garbage(Vec<u8>),
}

fn body() -> impl Strategy<Value = Body> {
    let edit = prop_oneof![
        Just(Edit::Keep),
        any::<Index>().prop_map(Edit::Cut),
        (any::<Index>(), 1u8..=255).prop_map(|(i, x)| Edit::Flip(i, x)),
        any::<Index>().prop_map(Edit::Drop),
        any::<Index>().prop_map(Edit::Duplicate),
        any::<Index>().prop_map(Edit::Swap),
        prop::collection::vec(any::<u8>(), 1..80).prop_map(Edit::Append),
    ];
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..600).prop_map(Body::Bytes),
        1 => (prop::collection::vec(".{0,80}", 0..6), any::<bool>())
            .prop_map(|(l, nl)| Body::Lines(l, nl)),
        4 => (0..=RECORDS, edit).prop_map(|(records, edit)| Body::Real { records, edit }),
    ]
}

fn head_case() -> impl Strategy<Value = HeadCase> {
    prop_oneof![
        1 => Just(HeadCase::Missing),
        3 => (1..=RECORDS).prop_map(HeadCase::After),
        1 => prop::collection::vec(any::<u8>(), 0..60).prop_map(HeadCase::Garbage),
    ]
}

fn bytes_of(body: &Body) -> Vec<u8> {
    let t = template();
    match body {
        Body::Bytes(b) => b.clone(),
        Body::Lines(lines, trailing) => {
            let mut s = lines.join("\n");
            if *trailing {
                s.push('\n');
            }
            s.into_bytes()
        }
        Body::Real { records, edit } => {
            let mut lines = t.lines[..*records].to_vec();
            let n = lines.len();
            match edit {
                Edit::Keep => {}
                Edit::Drop(i) if n > 0 => {
                    lines.remove(i.index(n));
                }
                Edit::Duplicate(i) if n > 0 => {
                    let i = i.index(n);
                    lines.insert(i, lines[i].clone());
                }
                Edit::Swap(i) if n > 1 => {
                    let i = i.index(n - 1);
                    lines.swap(i, i + 1);
                }
                _ => {}
            }
            let mut b = lines.concat();
            match edit {
                Edit::Cut(i) => b.truncate(i.index(b.len() + 1)),
                Edit::Flip(i, x) if !b.is_empty() => {
                    let i = i.index(b.len());
                    b[i] ^= x;
                }
                Edit::Append(extra) => b.extend_from_slice(extra),
                _ => {}
            }
            b
        }
    }
}

fn head_of(case: &HeadCase) -> Option<Vec<u8>> {
    match case {
        HeadCase::Missing => None,
        HeadCase::After(j) => Some(template().heads[j - 1].clone()),
        HeadCase::Garbage(g) => Some(g.clone()),
    }
}

/// The model: `Some(k)` if the log's complete lines are the real log's first `k`
/// records; `None` if they are anything else.
fn intact_records(log: &[u8]) -> Option<usize> {
    let end = log.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    let complete = &log[..end];
    let t = template();
    let k = complete.iter().filter(|&&b| b == b'\n').count();
    (k <= RECORDS && t.bytes.starts_with(complete)).then_some(k)
}

/// Which head the writer left after how many records, if it is one of them.
fn head_records(head: &Option<Vec<u8>>) -> Option<Option<usize>> {
    match head {
        None => Some(None),
        Some(h) => template()
            .heads
            .iter()
            .position(|t| t == h)
            .map(|j| Some(j + 1)),
    }
}

/// Whether a crash of the writer can leave this log and head: a torn line after a log
/// its head matches, or a whole last line one past its head (the first one: no head).
fn crash_state(log: &[u8], head: &Option<Vec<u8>>) -> bool {
    let (Some(k), Some(h)) = (intact_records(log), head_records(head)) else {
        return false;
    };
    let torn = !log.ends_with(b"\n") && !log.is_empty();
    match h {
        Some(j) if j == k => true,
        None if k == 0 => true,
        None => k == 1 && !torn,
        Some(j) => j + 1 == k && !torn,
    }
}

/// Whether `verify` must pass: the real log's first `k` records and their head, or nothing.
fn intact(log: &[u8], head: &Option<Vec<u8>>) -> bool {
    let torn = !log.ends_with(b"\n") && !log.is_empty();
    match (intact_records(log), head_records(head)) {
        _ if torn => false,
        (Some(0), Some(None)) => true,
        (Some(k), Some(Some(j))) => k == j,
        _ => false,
    }
}

fn read(path: &Path) -> Option<Vec<u8>> {
    std::fs::read(path).ok()
}

fn check(body: &Body, head_case: &HeadCase) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = bytes_of(body);
    let head = head_of(head_case);
    std::fs::write(&path, &log).unwrap();
    if let Some(h) = &head {
        std::fs::write(head_path(&path), h).unwrap();
    }

    // The readers take anything without panicking.
    let verified = audit::verify(&path);
    if let Ok(records) = audit::read_records(&path) {
        for r in &records {
            let line = audit::summarize(&r.kind, &r.data, 80);
            prop_assert!(!line.chars().any(char::is_control), "{line:?}");
        }
    }
    let _ = audit::scan(&path, &["step", "audit_recovered"], |_| {});
    let _ = audit::links(&path);
    prop_assert_eq!(
        verified.is_ok(),
        intact(&log, &head),
        "verify said {:?}",
        verified
    );

    match AuditLog::open(&path) {
        Err(e) => {
            prop_assert!(!crash_state(&log, &head), "refused a crash state: {e}");
            prop_assert_eq!(read(&path), Some(log), "a refused log was changed");
            prop_assert_eq!(read(&head_path(&path)), head, "a refused head was changed");
        }
        Ok(mut writer) => {
            prop_assert!(crash_state(&log, &head), "opened a damaged log");
            writer.append("more", &json!({})).unwrap();
            let now = read(&path).unwrap();
            let end = log.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
            prop_assert!(
                now.starts_with(&log[..end]),
                "a complete line was rewritten"
            );
            let records = audit::read_records(&path).unwrap();
            prop_assert_eq!(audit::verify(&path), Ok(records.len() as u64));
            let kinds: Vec<&str> = records[intact_records(&log).unwrap()..]
                .iter()
                .map(|r| r.kind.as_str())
                .collect();
            // Anything `open` accepts that `verify` did not is a recovery, and says so.
            let recovered = !intact(&log, &head);
            let expected: &[&str] = if recovered {
                &["audit_recovered", "more"]
            } else {
                &["more"]
            };
            prop_assert_eq!(kinds, expected);
            if recovered {
                let r = &records[records.len() - 2];
                prop_assert_eq!(&r.data["last_seq"], &Value::from(r.seq - 1));
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(384))]

    #[test]
    fn arbitrary_logs_and_heads(body in body(), head in head_case()) {
        check(&body, &head)?;
    }

    #[test]
    fn summaries_never_carry_control_characters(kind in ".{0,20}", text in any::<String>()) {
        let line = audit::summarize(&kind, &json!({"error": text, "playbook": text, "anomaly_id": text}), 200);
        prop_assert!(!line.chars().any(char::is_control), "{line:?}");
        let escaped = audit::escape(&text);
        prop_assert!(
            !escaped.chars().any(|c| c.is_control() || c == '\u{202e}'),
            "{:?}",
            escaped
        );
    }
}

/// The one signing key the checkpoint cases are checked against.
fn signing_key() -> &'static ed25519_dalek::SigningKey {
    static K: OnceLock<ed25519_dalek::SigningKey> = OnceLock::new();
    K.get_or_init(|| ed25519_dalek::SigningKey::from_bytes(&[7; 32]))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A checkpoint record made by anyone without the key, in any shape, never holds,
    /// and checking it never panics.
    #[test]
    fn checkpoints_without_the_key_never_hold(
        seq in prop_oneof![Just(1u64), any::<u64>()],
        hash in "[0-9a-f]{0,70}",
        signature in "[0-9a-fA-F]{0,130}",
        public_key in proptest::option::of("[0-9a-f]{0,66}"),
        raw in any::<String>(),
    ) {
        let key = signing_key();
        let ours = hex::encode(key.verifying_key().as_bytes());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut log = AuditLog::open(&path).unwrap();
        log.append("step", &json!({"raw": raw})).unwrap();
        // Right after the record, naming our key: everything but the signature fits.
        let prev = audit::read_records(&path).unwrap()[0].hash.clone();
        let hash = if seq == 1 { prev } else { hash };
        log.append("checkpoint", &json!({"seq": seq, "hash": hash,
            "public_key": public_key.unwrap_or(ours), "signature": signature})).unwrap();
        log.append("checkpoint", &json!(raw)).unwrap();
        log.append("checkpoint", &json!({"seq": raw, "signature": 5})).unwrap();
        let signed = audit::verify_checkpoints(std::slice::from_ref(&path), &key.verifying_key()).unwrap();
        prop_assert_eq!(signed.valid, 0);
        prop_assert!(!signed.holds(0));
        // A good checkpoint after them does not excuse them: the first bad one is named.
        log.checkpoint(key).unwrap();
        let signed = audit::verify_checkpoints(&[path], &key.verifying_key()).unwrap();
        prop_assert!(signed.bad.is_some() && signed.valid == 0);
    }
}
