//! An audit an auditor trusts (issue 25): one incident read as a unit across sealed
//! segments, filters, an export that re-verifies, rotation that keeps one chain, and
//! signed checkpoints that catch a rewrite the chain alone cannot. Through the built
//! binary where a person would use it: output and exit codes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use homeostat::audit::{self, head_path, segment_path, AuditLog};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

fn homeostat(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_homeostat"))
        .args(args)
        .output()
        .expect("runs the binary")
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn said(o: &Output) -> String {
    format!("{}{}", stdout(o), stderr(o))
}

/// One record's line as the writer lays it out, with its hash.
fn line(seq: u64, ts: &str, kind: &str, prev: &str, data: &Value) -> (String, String) {
    let body = format!(
        "{{\"seq\":{seq},\"ts\":{},\"kind\":{},\"prev\":\"{prev}\",\"data\":{data}}}",
        json!(ts),
        json!(kind)
    );
    let hash = hex::encode(Sha256::digest(body.as_bytes()));
    (
        format!("{},\"hash\":\"{hash}\"}}", &body[..body.len() - 1]),
        hash,
    )
}

/// Writes `records` (time, kind, data) as a whole, well-chained log with its head: what
/// someone with write access can make of a log.
fn write_chain(log: &Path, records: &[(String, String, Value)]) {
    let mut prev = audit::GENESIS.to_string();
    let mut text = String::new();
    for (i, (ts, kind, data)) in records.iter().enumerate() {
        let (l, hash) = line(i as u64 + 1, ts, kind, &prev, data);
        text.push_str(&l);
        text.push('\n');
        prev = hash;
    }
    std::fs::write(log, text).unwrap();
    let head = json!({"seq": records.len(), "hash": prev}).to_string();
    std::fs::write(head_path(log), head).unwrap();
}

/// A log's records as (time, kind, data), to edit and write back with [`write_chain`].
fn parts(log: &Path) -> Vec<(String, String, Value)> {
    audit::read_records(log)
        .unwrap()
        .into_iter()
        .map(|r| (r.ts, r.kind, r.data))
        .collect()
}

fn new_log() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    (dir, log)
}

fn opened(id: &str, deployment: &str) -> Value {
    json!({"id": id, "signal": "errors", "labels": {"deployment": deployment, "namespace": "shop"},
           "value": 0.2, "expected": 0.01, "lower": 0.0, "upper": 0.02, "score": 0.99})
}

fn intent(id: &str, step: usize, deployment: &str) -> Value {
    json!({"anomaly_id": id, "playbook": "restart", "round": 0, "step": step, "mode": "auto",
           "effective_mode": "auto",
           "action": {"kind": "k8s.rollout_restart", "target": {"deployment": deployment, "namespace": "shop"}}})
}

/// Two incidents interleaved, half of each sealed away by a rotation, and records the
/// lead's approval and guardrail work will write (kinds this version does not know).
#[test]
fn show_reads_one_incident_across_a_sealed_segment_in_order() {
    let (_d, log) = new_log();
    let mut l = AuditLog::open(&log).unwrap();
    l.append("anomaly_opened", &opened("an-aaa", "cart"))
        .unwrap();
    l.append("anomaly_opened", &opened("an-bbb", "web"))
        .unwrap();
    l.append(
        "plan",
        &json!({"anomaly_id": "an-aaa", "playbook": "restart", "mode": "auto", "round": 0,
        "actions": [{"kind": "k8s.rollout_restart", "target": {"deployment": "cart"}}]}),
    )
    .unwrap();
    l.append(
        "approval_requested",
        &json!({"anomaly_id": "an-bbb", "playbook": "restart"}),
    )
    .unwrap();
    l.append(
        "approval_granted",
        &json!({"anomaly_id": "an-aaa", "by": "alice"}),
    )
    .unwrap();
    assert!(l.rotate(0).unwrap().is_some(), "rotated");
    l.append("action_intent", &intent("an-aaa", 1, "cart"))
        .unwrap();
    l.append(
        "guardrail_refused",
        &json!({"anomaly_id": "an-bbb", "reason": "rate limit"}),
    )
    .unwrap();
    l.append(
        "action_outcome",
        &json!({"anomaly_id": "an-aaa", "playbook": "restart", "step": 1,
        "kind": "k8s.rollout_restart", "outcome": "succeeded"}),
    )
    .unwrap();
    l.append(
        "incident_done",
        &json!({"anomaly_id": "an-aaa", "playbook": "restart", "round": 0, "results": []}),
    )
    .unwrap();
    l.append(
        "anomaly_closed",
        &json!({"id": "an-aaa", "signal": "errors", "reason": "back to normal"}),
    )
    .unwrap();
    drop(l);

    let out = homeostat(&[
        "audit",
        "show",
        "an-aaa",
        "--log",
        p(&log),
        "--width",
        "200",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let text = stdout(&out);
    let rows: Vec<&str> = text.lines().collect();
    assert!(
        rows[0].starts_with("incident an-aaa: 7 records in audit.jsonl.1.sealed, audit.jsonl"),
        "{text}"
    );
    let kinds: Vec<&str> = rows
        .iter()
        .filter(|r| r.contains("an-aaa") && !r.starts_with("incident"))
        .map(|r| r.split_whitespace().nth(2).unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "anomaly_opened",
            "plan",
            "approval_granted",
            "action_intent",
            "action_outcome",
            "incident_done",
            "anomaly_closed"
        ],
        "{text}"
    );
    // Each file's rows under its name, the sealed segment first.
    let segment_at = rows
        .iter()
        .position(|r| r.contains("-- audit.jsonl.1.sealed"));
    let log_at = rows.iter().position(|r| r.trim() == "-- audit.jsonl");
    assert!(segment_at.is_some() && segment_at < log_at, "{text}");
    // The rotation's link is not about the incident; the other incident is not shown.
    assert!(
        !text.contains("an-bbb") && !text.contains("audit_sealed"),
        "{text}"
    );
    assert!(
        text.contains("by alice"),
        "the approval names its approver: {text}"
    );

    let out = homeostat(&["audit", "show", "an-bbb", "--log", p(&log)]);
    assert_eq!(stdout(&out).matches("an-bbb").count(), 4, "{}", said(&out));

    // list reads the current file unless asked for the segments too.
    let list = |extra: &[&str]| {
        let mut args = vec![
            "audit",
            "list",
            "--log",
            p(&log),
            "--target",
            "deployment=cart",
        ];
        args.extend_from_slice(extra);
        stdout(&homeostat(&args))
    };
    assert_eq!(list(&[]).lines().count(), 2, "{}", list(&[]));
    let all = list(&["--segments"]);
    let rows: Vec<&str> = all.lines().collect();
    assert_eq!(
        rows.len(),
        1 + 2 + 3,
        "header, 2 file names, 3 records: {all}"
    );
    assert!(
        rows[1].contains("-- audit.jsonl.1.sealed") && rows[4].trim() == "-- audit.jsonl",
        "{all}"
    );

    let out = homeostat(&["audit", "show", "an-zzz", "--log", p(&log)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no record of incident an-zzz") && stdout(&out).is_empty(),
        "{}",
        said(&out)
    );
}

#[test]
fn list_filters_combine() {
    let (_d, log) = new_log();
    let old = "2026-01-01T00:00:00.000Z".to_string();
    let new = "2026-06-01T00:00:00.000Z".to_string();
    write_chain(
        &log,
        &[
            (old.clone(), "anomaly_opened".into(), opened("an-1", "cart")),
            (
                old.clone(),
                "action_intent".into(),
                intent("an-1", 1, "cart"),
            ),
            (new.clone(), "anomaly_opened".into(), opened("an-2", "web")),
            (
                new.clone(),
                "action_intent".into(),
                intent("an-2", 1, "web"),
            ),
            (
                new.clone(),
                "playbook_failed".into(),
                json!({"anomaly_id": "an-2", "playbook": "other", "error": "x"}),
            ),
        ],
    );
    let seqs = |extra: &[&str]| -> Vec<u64> {
        let mut args = vec!["audit", "list", "--log", p(&log)];
        args.extend_from_slice(extra);
        let out = homeostat(&args);
        assert_eq!(out.status.code(), Some(0), "{extra:?}: {}", said(&out));
        stdout(&out)
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
            .collect()
    };
    assert_eq!(seqs(&[]), [1, 2, 3, 4, 5]);
    assert_eq!(seqs(&["--since", "2026-03-01T00:00:00Z"]), [3, 4, 5]);
    assert_eq!(seqs(&["--since", "1h"]), Vec::<u64>::new(), "all older");
    assert_eq!(
        seqs(&["--kind", "action_intent", "--kind", "playbook_failed"]),
        [2, 4, 5]
    );
    assert_eq!(
        seqs(&["--kind", "anomaly_opened,playbook_failed"]),
        [1, 3, 5]
    );
    assert_eq!(seqs(&["--playbook", "restart"]), [2, 4]);
    // A target matches an action's target and an anomaly's labels alike.
    assert_eq!(seqs(&["--target", "deployment=cart"]), [1, 2]);
    assert_eq!(
        seqs(&["--target", "deployment=web", "--target", "namespace=shop"]),
        [3, 4]
    );
    assert_eq!(
        seqs(&[
            "--target",
            "deployment=web",
            "--kind",
            "action_intent",
            "--since",
            "2026-03-01T00:00:00Z",
            "--playbook",
            "restart"
        ]),
        [4]
    );
    let out = homeostat(&["audit", "list", "--log", p(&log), "--target", "cart"]);
    assert_eq!(out.status.code(), Some(2), "a bad filter is a usage error");
    assert!(stderr(&out).contains("key=value"), "{}", said(&out));
}

#[test]
fn export_writes_the_records_exactly_and_they_re_verify() {
    let (d, log) = new_log();
    let mut l = AuditLog::open(&log).unwrap();
    l.append("anomaly_opened", &opened("an-1", "cart")).unwrap();
    l.append("action_intent", &intent("an-1", 1, "cart"))
        .unwrap();
    l.rotate(0).unwrap();
    l.append("action_intent", &intent("an-1", 2, "cart"))
        .unwrap();
    drop(l);

    let out = homeostat(&["audit", "export", "--log", p(&log)]);
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    assert_eq!(stdout(&out), std::fs::read_to_string(&log).unwrap());
    // Written elsewhere with a head, the copy verifies as the log does.
    let copy = d.path().join("siem.jsonl");
    std::fs::write(&copy, &out.stdout).unwrap();
    let last = audit::read_records(&copy).unwrap().pop().unwrap();
    std::fs::write(
        head_path(&copy),
        json!({"seq": last.seq, "hash": last.hash}).to_string(),
    )
    .unwrap();
    assert_eq!(audit::verify(&copy), Ok(2));

    // With the segments: oldest first, each file's lines exactly.
    let out = homeostat(&["audit", "export", "--log", p(&log), "--segments"]);
    let segment = std::fs::read_to_string(segment_path(&log, 1)).unwrap();
    assert_eq!(
        stdout(&out),
        segment + std::fs::read_to_string(&log).unwrap().as_str()
    );

    // A rotation goes on with the numbering and the chain: the segments exported
    // together are one log, which verifies as such.
    let whole = d.path().join("whole.jsonl");
    std::fs::write(&whole, &out.stdout).unwrap();
    let last = audit::read_records(&whole).unwrap().pop().unwrap();
    assert_eq!(last.seq, 4);
    std::fs::write(
        head_path(&whole),
        json!({"seq": last.seq, "hash": last.hash}).to_string(),
    )
    .unwrap();
    assert_eq!(audit::verify(&whole), Ok(4));

    // Filtered: only those records, each line still carrying a hash that checks.
    let out = homeostat(&[
        "audit",
        "export",
        "--log",
        p(&log),
        "--segments",
        "--kind",
        "action_intent",
    ]);
    let lines: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 2, "{}", said(&out));
    for l in &lines {
        let r: Value = serde_json::from_str(l).unwrap();
        assert_eq!(r["kind"], "action_intent");
        let body = l.rsplit_once(",\"hash\":").unwrap().0.to_string() + "}";
        assert_eq!(
            hex::encode(Sha256::digest(body.as_bytes())),
            r["hash"].as_str().unwrap()
        );
    }
}

#[test]
fn rotation_keeps_one_chain_that_verify_counts_across_segments() {
    let (_d, log) = new_log();
    let mut l = AuditLog::open(&log).unwrap();
    for i in 0..3 {
        l.append("step", &json!({"i": i})).unwrap();
    }
    // The agent rotates its own log, keeping the writer lock.
    let size = std::fs::metadata(&log).unwrap().len();
    assert!(l.rotate(size + 1).unwrap().is_none(), "not due");
    let sealed = l.rotate(size).unwrap().expect("due");
    assert_eq!(sealed.segment, segment_path(&log, 1));
    assert_eq!(sealed.link.last_seq, 3);
    assert!(
        sealed.link.reason.starts_with("rotated at"),
        "{:?}",
        sealed.link
    );
    assert_eq!(
        l.append("step", &json!({"i": 3})).unwrap(),
        5,
        "goes on with the numbering, in the new log"
    );
    assert!(
        matches!(AuditLog::open(&log), Err(audit::AuditError::Busy { .. })),
        "still the one writer"
    );
    drop(l);

    // From the command line, while no agent runs.
    let out = homeostat(&["audit", "rotate", "--log", p(&log), "--max-bytes", "100000"]);
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    assert!(stdout(&out).contains("not rotated"), "{}", said(&out));
    let out = homeostat(&["audit", "rotate", "--log", p(&log)]);
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    assert!(
        stdout(&out).contains("audit.jsonl.2.sealed"),
        "{}",
        said(&out)
    );
    AuditLog::open(&log)
        .unwrap()
        .append("step", &json!({"i": 4}))
        .unwrap();

    let out = homeostat(&["audit", "verify", "--log", p(&log)]);
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    // 3 steps; a link and a step; a link and a step.
    assert!(
        stdout(&out).contains("one chain: 3 segments, 7 records"),
        "{}",
        said(&out)
    );

    // A rotation refuses a damaged log (sealing one takes a reason).
    let text = std::fs::read_to_string(&log)
        .unwrap()
        .replace("\"i\":4", "\"i\":5");
    std::fs::write(&log, text).unwrap();
    let out = homeostat(&["audit", "rotate", "--log", p(&log)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not rotating a log that does not verify: line 2"),
        "{}",
        said(&out)
    );
    assert!(!segment_path(&log, 3).exists());
}

/// The agent's handle rotates the log it holds; records go on in the new file and the
/// whole stays one chain, with typed events reading back (a checkpoint among them).
#[tokio::test]
async fn the_agent_rotates_and_signs_through_its_auditor() {
    let (_d, log) = new_log();
    let auditor = audit::Auditor::new(AuditLog::open(&log).unwrap());
    let stopped = audit::Event::AgentStopped(audit::AgentStopped::default());
    auditor.record(stopped.clone()).await.unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    assert_eq!(auditor.checkpoint(key.clone()).await.unwrap(), 2);
    assert!(auditor.rotate(u64::MAX).await.unwrap().is_none());
    let sealed = auditor.rotate(1).await.unwrap().expect("rotated");
    assert_eq!(sealed.link.last_seq, 2);
    assert_eq!(auditor.record(stopped).await.unwrap(), 4);
    assert_eq!(auditor.written(), 3);
    assert!(auditor.failed().is_none());

    let segment = audit::read_records(&segment_path(&log, 1)).unwrap();
    match segment[1].event().unwrap() {
        audit::Event::Checkpoint(c) => {
            assert_eq!((c.seq, c.hash.as_str()), (1, segment[0].hash.as_str()));
            assert_eq!(c.public_key, hex::encode(key.verifying_key().as_bytes()));
        }
        other => panic!("{other:?}"),
    }
    let files = audit::chain_files(&log);
    assert_eq!(files, [segment_path(&log, 1), log.clone()]);
    let signed = audit::verify_checkpoints(&files, &key.verifying_key()).unwrap();
    assert_eq!(
        (signed.valid, signed.last),
        (1, Some((files[0].clone(), 1)))
    );
    let out = homeostat(&["audit", "verify", "--log", p(&log)]);
    assert!(
        stdout(&out).contains("one chain: 2 segments, 4 records"),
        "{}",
        said(&out)
    );
}

/// The log a rotation starts is judged like any other: its first record may go on from
/// the segment before it only as the link that says so, a crash before its head is
/// recovered, and a cut tail is still caught against the head.
#[test]
fn a_rotated_log_is_judged_like_any_log() {
    let (_d, log) = new_log();
    let mut l = AuditLog::open(&log).unwrap();
    for i in 0..3 {
        l.append("step", &json!({"i": i})).unwrap();
    }
    l.rotate(0).unwrap();
    l.append("step", &json!({"i": 3})).unwrap();
    l.append("step", &json!({"i": 4})).unwrap();
    drop(l);
    assert_eq!(audit::verify(&log), Ok(3), "records in this file");
    let lines: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| l.to_string() + "\n")
        .collect();

    // Cut to its first record and no head: what a crash during the rotation leaves.
    std::fs::write(&log, &lines[0]).unwrap();
    std::fs::remove_file(head_path(&log)).unwrap();
    let mut l = AuditLog::open(&log).unwrap();
    assert_eq!(
        l.append("step", &json!({})).unwrap(),
        6,
        "recovered, numbering kept"
    );
    drop(l);
    assert_eq!(audit::verify(&log), Ok(3));

    // Whole records cut off the end: the head still tells.
    std::fs::write(&log, lines[..2].concat()).unwrap();
    let e = audit::verify(&log).unwrap_err();
    assert!(
        e.reason
            .contains("log ends at record 5 but the head says 6 (truncated)"),
        "{e}"
    );

    // Any other first record must start at 1 from 64 zeros: a step, or a link whose
    // numbers do not match its place, that claims to go on from elsewhere is refused.
    let mut records = parts(&log);
    records.truncate(1);
    for (kind, last_seq) in [("step", 3), ("audit_sealed", 2)] {
        let mut data = records[0].2.clone();
        data["last_seq"] = json!(last_seq);
        let (line, _) = line(
            4,
            &records[0].0,
            kind,
            data["last_hash"].as_str().unwrap(),
            &data,
        );
        std::fs::write(&log, line + "\n").unwrap();
        let e = audit::verify(&log).unwrap_err();
        assert_eq!(e.line, 1, "{kind}: {e}");
        assert!(
            e.reason.contains("sequence 4 where 1 was expected"),
            "{kind}: {e}"
        );
    }
}

/// A sealed segment rewritten with its link's sha256 and every hash after it
/// recomputed: the pins all agree, only reading the segment's chain again shows it.
#[test]
fn verify_re_reads_each_segment_chain_not_only_its_sha256() {
    let (_d, log) = new_log();
    let mut l = AuditLog::open(&log).unwrap();
    for i in 0..3 {
        l.append("step", &json!({"i": i})).unwrap();
    }
    l.rotate(0).unwrap();
    drop(l);
    let segment = segment_path(&log, 1);
    // Damage in the segment (a record edited), then a link that calls it intact.
    let edited = std::fs::read_to_string(&segment)
        .unwrap()
        .replace("\"i\":1", "\"i\":7");
    std::fs::write(&segment, &edited).unwrap();
    let mut records = parts(&log);
    let link = &mut records[0].2;
    link["previous_sha256"] = json!(hex::encode(Sha256::digest(edited.as_bytes())));
    link["previous_bytes"] = json!(edited.len());
    write_chain(&log, &records);

    let out = homeostat(&["audit", "verify", "--log", p(&log)]);
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    assert!(
        stderr(&out)
            .contains("sealed after audit.jsonl.1.sealed: BROKEN: its chain verifies to record 1"),
        "{}",
        said(&out)
    );
}

fn keygen(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(name);
    let out = homeostat(&["audit", "keygen", "--out", p(&key)]);
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    (key.clone(), audit::public_key_path(&key))
}

fn checkpoint(log: &Path, key: &Path) {
    let out = homeostat(&["audit", "checkpoint", "--log", p(log), "--key", p(key)]);
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
}

fn verify_with(log: &Path, public: &Path) -> Output {
    homeostat(&["audit", "verify", "--log", p(log), "--pubkey", p(public)])
}

#[test]
fn keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keygen(dir.path(), "audit.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let secret = std::fs::read_to_string(&key).unwrap();
    let public_hex = std::fs::read_to_string(&public).unwrap();
    let hex_of = |text: &str, label: &str| {
        let (l, hex) = text.trim().split_once(' ').unwrap();
        assert_eq!(l, label);
        assert_eq!(hex.len(), 64);
        hex.to_string()
    };
    let (secret_hex, public_hex) = (
        hex_of(&secret, "homeostat-audit-ed25519-private"),
        hex_of(&public_hex, "homeostat-audit-ed25519-public"),
    );
    assert_ne!(secret_hex, public_hex);
    let out = homeostat(&["audit", "keygen", "--out", p(&key)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("already exists"), "{}", said(&out));
    assert_eq!(std::fs::read_to_string(&key).unwrap(), secret, "kept");
    // A file that is not a key is refused with its name, not a panic.
    std::fs::write(dir.path().join("junk"), "not hex\u{1b}[2J").unwrap();
    let log = dir.path().join("audit.jsonl");
    AuditLog::open(&log)
        .unwrap()
        .append("step", &json!({}))
        .unwrap();
    let out = homeostat(&[
        "audit",
        "checkpoint",
        "--log",
        p(&log),
        "--key",
        p(&dir.path().join("junk")),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("junk: not a homeostat private key"),
        "{}",
        said(&out)
    );
    // Nor is the public key taken for the private one, or the other way round.
    let out = homeostat(&["audit", "checkpoint", "--log", p(&log), "--key", p(&public)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(
            "not a homeostat private key: expected one line `homeostat-audit-ed25519-private"
        ),
        "{}",
        said(&out)
    );
    let out = homeostat(&["audit", "verify", "--log", p(&log), "--pubkey", p(&key)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not a homeostat public key"),
        "{}",
        said(&out)
    );
    assert_eq!(
        audit::read_records(&log).unwrap().len(),
        1,
        "nothing signed"
    );
}

#[test]
fn a_rewritten_history_passes_the_chain_but_not_the_checkpoint_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let (key, public) = keygen(dir.path(), "audit.key");
    let mut l = AuditLog::open(&log).unwrap();
    l.append("action_intent", &intent("an-1", 1, "cart"))
        .unwrap();
    l.append(
        "action_outcome",
        &json!({"anomaly_id": "an-1", "outcome": "failed"}),
    )
    .unwrap();
    drop(l);
    checkpoint(&log, &key);
    AuditLog::open(&log)
        .unwrap()
        .append("step", &json!({"i": 4}))
        .unwrap();

    let out = verify_with(&log, &public);
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    assert!(
        stdout(&out).contains(
            "signed: 1 checkpoint hold; the last signs record 2 of audit.jsonl; 2 records after it"
        ),
        "{}",
        said(&out)
    );

    // The private key never reaches the log (nor its head).
    let written = std::fs::read_to_string(&log).unwrap()
        + std::fs::read_to_string(head_path(&log)).unwrap().as_str();
    let hex_in = |path: &Path| {
        let text = std::fs::read_to_string(path).unwrap();
        text.trim().split_once(' ').unwrap().1.to_string()
    };
    assert!(!written.contains(&hex_in(&key)));
    assert!(
        written.contains(&hex_in(&public)),
        "the public key tells keys apart"
    );

    // Someone who can write the log changes record 2 and recomputes every hash after it.
    let honest = parts(&log);
    let mut forged = honest.clone();
    forged[1].2["outcome"] = json!("succeeded");
    write_chain(&log, &forged);
    let plain = homeostat(&["audit", "verify", "--log", p(&log)]);
    assert_eq!(
        plain.status.code(),
        Some(0),
        "the chain alone is fooled: {}",
        said(&plain)
    );
    let out = verify_with(&log, &public);
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    assert!(
        stderr(&out).contains(
            "checkpoint BROKEN: record 3 of audit.jsonl: signs record 2 but does not follow it"
        ),
        "{}",
        said(&out)
    );

    // ... and also makes the checkpoint name the new hash: the signature gives it away.
    let new_hash = audit::read_records(&log).unwrap()[1].hash.clone();
    forged[2].2["hash"] = json!(new_hash);
    write_chain(&log, &forged);
    assert_eq!(
        homeostat(&["audit", "verify", "--log", p(&log)])
            .status
            .code(),
        Some(0)
    );
    let out = verify_with(&log, &public);
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    assert!(
        stderr(&out).contains("the signature does not match"),
        "{}",
        said(&out)
    );

    // ... or drops the checkpoint: then there is none to show.
    let mut dropped = forged.clone();
    dropped.remove(2);
    write_chain(&log, &dropped);
    let out = verify_with(&log, &public);
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    assert!(
        stderr(&out).contains("no checkpoint signed by this key"),
        "{}",
        said(&out)
    );

    // The honest log, checked against another key, fails too.
    write_chain(&log, &honest);
    assert_eq!(verify_with(&log, &public).status.code(), Some(0));
    let (_, other) = keygen(dir.path(), "other.key");
    let out = verify_with(&log, &other);
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    assert!(
        stderr(&out).contains("signed with another key"),
        "{}",
        said(&out)
    );
}

/// A checkpoint in a sealed segment covers it: the rotation's link pins the segment's
/// bytes, so a rewrite there fails even though the checkpoint lives in an older file.
#[test]
fn checkpoints_are_checked_in_every_segment() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let (key, public) = keygen(dir.path(), "audit.key");
    AuditLog::open(&log)
        .unwrap()
        .append("step", &json!({"i": 1}))
        .unwrap();
    checkpoint(&log, &key);
    assert!(homeostat(&["audit", "rotate", "--log", p(&log)])
        .status
        .success());
    checkpoint(&log, &key);
    let out = verify_with(&log, &public);
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    assert!(
        stdout(&out)
            .contains("signed: 2 checkpoints hold; the last signs record 3 of audit.jsonl;"),
        "{}",
        said(&out)
    );

    // The old segment's checkpoint forged with another key, its link and the new log
    // rewritten to match: every pin agrees, the signature does not.
    let segment = segment_path(&log, 1);
    let (other, _) = keygen(dir.path(), "other.key");
    let mut records = parts(&segment);
    records.truncate(1);
    write_chain(&segment, &records);
    checkpoint(&segment, &other);
    let bytes = std::fs::read(&segment).unwrap();
    let mut new = parts(&log);
    new[0].2["previous_sha256"] = json!(hex::encode(Sha256::digest(&bytes)));
    new[0].2["previous_bytes"] = json!(bytes.len());
    new[0].2["last_hash"] = json!(audit::read_records(&segment).unwrap()[1].hash);
    write_chain(&log, &new);
    // (the new log's own checkpoint now fails too; the first bad one is named)
    let out = verify_with(&log, &public);
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    assert!(
        stderr(&out).contains("record 2 of audit.jsonl.1.sealed: signed with another key"),
        "{}",
        said(&out)
    );
}

/// Numbers only a hostile hand writes (a link going on from the largest `seq`, a head
/// or a segment named with it) give errors, never an overflow.
#[test]
fn the_largest_sequence_numbers_give_errors_not_overflows() {
    let (d, log) = new_log();
    let max = u64::MAX;
    let prev = "ab".repeat(32);
    let link = json!({"previous": "gone", "last_seq": max - 1, "last_hash": prev, "reason": "x"});
    let (first, hash) = line(max, "2026-01-01T00:00:00Z", "audit_sealed", &prev, &link);
    std::fs::write(&log, format!("{first}\n")).unwrap();
    std::fs::write(
        head_path(&log),
        json!({"seq": max, "hash": hash}).to_string(),
    )
    .unwrap();
    assert_eq!(audit::verify(&log), Ok(1));
    let mut l = AuditLog::open(&log).unwrap();
    assert!(matches!(
        l.append("step", &json!({})),
        Err(audit::AuditError::Failed { .. })
    ));
    drop(l);

    // A second record after it cannot be numbered.
    let (second, _) = line(max, "2026-01-01T00:00:00Z", "step", &hash, &json!({}));
    std::fs::write(&log, format!("{first}\n{second}\n")).unwrap();
    let e = audit::verify(&log).unwrap_err();
    assert!(e.reason.contains("past the last there can be"), "{e}");
    std::fs::write(&log, format!("{first}\n")).unwrap();

    // A head at the largest number against a shorter log.
    let other = d.path().join("other.jsonl");
    AuditLog::open(&other)
        .unwrap()
        .append("step", &json!({}))
        .unwrap();
    std::fs::write(
        head_path(&other),
        json!({"seq": max, "hash": "00"}).to_string(),
    )
    .unwrap();
    assert!(audit::verify(&other)
        .unwrap_err()
        .reason
        .contains("truncated"));

    // Rotating the log numbered to the end starts again at 1 rather than overflow.
    let out = homeostat(&["audit", "rotate", "--log", p(&log)]);
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    assert_eq!(audit::read_records(&log).unwrap()[0].seq, 1);

    // A segment named with the largest number: no segment can follow it.
    std::fs::write(segment_path(&other, max), "").unwrap();
    std::fs::write(head_path(&other), "").unwrap();
    let out = homeostat(&["audit", "seal", "--log", p(&other), "--reason", "x"]);
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
}

/// Cutting off the last checkpoint with every record after it leaves a log whose
/// earlier checkpoint holds: only the last signed record an auditor saw before shows it.
#[test]
fn a_cut_tail_with_its_checkpoint_shows_against_the_last_signed_record_seen() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let (key, public) = keygen(dir.path(), "audit.key");
    AuditLog::open(&log)
        .unwrap()
        .append("step", &json!({"i": 1}))
        .unwrap();
    checkpoint(&log, &key);
    AuditLog::open(&log)
        .unwrap()
        .append("step", &json!({"i": 3}))
        .unwrap();
    checkpoint(&log, &key);
    let out = verify_with(&log, &public);
    assert!(
        stdout(&out).contains(
            "signed: 2 checkpoints hold; the last signs record 3 of audit.jsonl; 1 record after it"
        ),
        "{}",
        said(&out)
    );
    let at_least = |n: &str| {
        homeostat(&[
            "audit",
            "verify",
            "--log",
            p(&log),
            "--pubkey",
            p(&public),
            "--signed-at-least",
            n,
        ])
    };
    assert_eq!(at_least("3").status.code(), Some(0));

    // Records 3 and 4 cut off, the head rewritten to match.
    let mut records = parts(&log);
    records.truncate(2);
    write_chain(&log, &records);
    assert_eq!(
        verify_with(&log, &public).status.code(),
        Some(0),
        "fooled without it"
    );
    let out = at_least("3");
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    assert!(
        stderr(&out).contains("the last checkpoint signs record 1, but record 3 was signed before"),
        "{}",
        said(&out)
    );
    // It needs the key to mean anything.
    let out = homeostat(&[
        "audit",
        "verify",
        "--log",
        p(&log),
        "--signed-at-least",
        "3",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", said(&out));
}
