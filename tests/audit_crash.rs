//! The audit log after a crash, and against a damaged log (issue 23): the states a
//! `kill -9` can leave are simulated directly on the files, and each is either
//! recovered at open (and the recovery audited) or refused without touching the log.
//!
//! These tests use only the API the log had before crash recovery, so each one can be
//! run against the old code to show it failed there.

use std::path::{Path, PathBuf};
use std::process::Command;

use homeostat::audit::{self, head_path, AuditLog};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// A log of `n` records `step` (`{"i": i}`), in a fresh directory.
fn write_log(n: usize) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let mut log = AuditLog::open(&path).unwrap();
    for i in 0..n {
        log.append("step", &json!({"i": i})).unwrap();
    }
    (dir, path)
}

fn bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

fn head(log: &Path) -> Option<Vec<u8>> {
    std::fs::read(head_path(log)).ok()
}

/// Appends one more record and puts the head back as it was before it: the state of a
/// crash after the line was fsynced and before the head was renamed into place.
fn append_without_head(log: &Path) {
    let before = head(log);
    AuditLog::open(log)
        .unwrap()
        .append("step", &json!({"i": "last"}))
        .unwrap();
    match before {
        Some(h) => std::fs::write(head_path(log), h).unwrap(),
        None => std::fs::remove_file(head_path(log)).unwrap(),
    }
}

fn kinds(log: &Path) -> Vec<String> {
    audit::read_records(log)
        .unwrap()
        .into_iter()
        .map(|r| r.kind)
        .collect()
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// The crash between the line's fsync and the head's rename: the log ends one record
/// past its head. The record is durable (it was fsynced), so the head is rewritten and
/// the run goes on, saying so in an `audit_recovered` record.
#[test]
fn a_head_one_behind_a_complete_last_record_is_rewritten_and_audited() {
    let (_d, log) = write_log(5);
    append_without_head(&log);
    let before = bytes(&log);
    assert!(audit::verify(&log).is_err(), "the head is behind");

    let mut l = AuditLog::open(&log).expect("a crash between line and head is recovered");
    assert_eq!(l.append("more", &json!({})).unwrap(), 8);
    assert_eq!(audit::verify(&log), Ok(8));
    assert!(bytes(&log).starts_with(&before), "no record was rewritten");
    let records = audit::read_records(&log).unwrap();
    let r = &records[6];
    assert_eq!(r.kind, "audit_recovered");
    assert_eq!(r.data["head"]["found"]["seq"], 5, "{}", r.data);
    assert_eq!(r.data["head"]["wrote"]["seq"], 6, "{}", r.data);
    assert_eq!(r.data["head"]["wrote"]["hash"], records[5].hash.as_str());
    assert_eq!(r.data["last_seq"], 6);
}

/// The crash in the middle of writing a line: its first half is on disk. It was never
/// acknowledged (its fsync had not returned), so it is cut off; its length and sha256 are
/// kept in the `audit_recovered` record.
#[test]
fn a_torn_last_line_is_cut_off_and_audited() {
    let (_d, log) = write_log(5);
    let complete = bytes(&log);
    let head5 = head(&log).unwrap();
    AuditLog::open(&log)
        .unwrap()
        .append("step", &json!({"i": "torn"}))
        .unwrap();
    let full = bytes(&log);
    let torn = &full[complete.len()..complete.len() + (full.len() - complete.len()) / 2];
    let mut cut = complete.clone();
    cut.extend_from_slice(torn);
    std::fs::write(&log, &cut).unwrap();
    std::fs::write(head_path(&log), &head5).unwrap();

    let mut l = AuditLog::open(&log).expect("a torn last line is recovered");
    assert_eq!(l.append("more", &json!({})).unwrap(), 7);
    assert_eq!(audit::verify(&log), Ok(7));
    assert!(bytes(&log).starts_with(&complete));
    let records = audit::read_records(&log).unwrap();
    let r = &records[5];
    assert_eq!(r.kind, "audit_recovered");
    assert_eq!(r.data["last_seq"], 5);
    assert_eq!(r.data["partial_line"]["offset"], complete.len());
    assert_eq!(r.data["partial_line"]["bytes"], torn.len());
    assert_eq!(
        r.data["partial_line"]["sha256"],
        Value::from(sha256_hex(torn))
    );
    assert!(r.data["head"].is_null(), "the head was right: {}", r.data);
}

/// A crash during the very first append: the first line torn, or the first line whole
/// and no head yet.
#[test]
fn a_torn_first_write_is_recovered() {
    let (_d, log) = write_log(0);
    append_without_head(&log);
    assert!(!head_path(&log).exists());
    let mut l = AuditLog::open(&log).expect("one record and no head: a torn first write");
    assert_eq!(l.append("more", &json!({})).unwrap(), 3);
    assert_eq!(kinds(&log), ["step", "audit_recovered", "more"]);
    assert_eq!(audit::verify(&log), Ok(3));

    let (_d, log) = write_log(0);
    std::fs::write(&log, br#"{"seq":1,"ts":"2026-"#).unwrap();
    let mut l = AuditLog::open(&log).expect("a torn first line");
    assert_eq!(l.append("more", &json!({})).unwrap(), 2);
    assert_eq!(kinds(&log), ["audit_recovered", "more"]);
}

/// A record whose line write succeeded but whose head write failed must not have its
/// sequence number given out again: the log is latched as failed and refuses every later
/// append; the next open finds the head one behind and recovers.
#[test]
fn a_failed_head_write_never_lets_a_sequence_number_repeat() {
    let (_d, log) = write_log(3);
    let mut tmp = head_path(&log).into_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut l = AuditLog::open(&log).unwrap();
    // The head's temporary file cannot be created.
    std::fs::create_dir(&tmp).unwrap();
    assert!(l.append("step", &json!({"i": 3})).is_err());
    std::fs::remove_dir(&tmp).unwrap();
    // Even with the file system fine again, this writer takes no more records.
    assert!(
        l.append("step", &json!({"i": 4})).is_err(),
        "a writer whose head write failed appended again"
    );
    drop(l);

    let mut l = AuditLog::open(&log).expect("the next start recovers the head");
    assert_eq!(l.append("more", &json!({})).unwrap(), 6);
    let seqs: Vec<u64> = audit::read_records(&log)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
    assert_eq!(kinds(&log)[3..], ["step", "audit_recovered", "more"]);
    assert_eq!(audit::verify(&log), Ok(6));
}

/// Opening verifies the whole chain, not just the last line.
#[test]
fn an_edited_middle_record_is_refused_at_open() {
    let (_d, log) = write_log(5);
    let edited = String::from_utf8(bytes(&log))
        .unwrap()
        .replacen("\"i\":2", "\"i\":9", 1);
    std::fs::write(&log, &edited).unwrap();
    let head_before = head(&log);

    let e = AuditLog::open(&log)
        .expect_err("appended to a log with an edited record")
        .to_string();
    assert!(e.contains("line 3"), "{e}");
    assert!(e.contains("edited"), "{e}");
    assert!(e.contains("homeostat audit seal"), "{e}");
    assert_eq!(bytes(&log), edited.as_bytes(), "the log was not touched");
    assert_eq!(head(&log), head_before);
}

/// Whole records cut off the end and the head deleted: nothing can tell that from a log
/// that ended there, so only a one-record log without a head is taken for a torn first
/// write; anything longer is refused.
#[test]
fn a_cut_tail_with_its_head_deleted_is_refused() {
    let (_d, log) = write_log(5);
    let text = String::from_utf8(bytes(&log)).unwrap();
    let cut: String = text.split_inclusive('\n').take(3).collect();
    std::fs::write(&log, &cut).unwrap();
    std::fs::remove_file(head_path(&log)).unwrap();

    let e = AuditLog::open(&log)
        .expect_err("appended to a log whose tail may be cut")
        .to_string();
    assert!(e.contains("head"), "{e}");
    assert_eq!(bytes(&log), cut.as_bytes());
    assert!(!head_path(&log).exists(), "no fresh head was written");
    assert!(audit::verify(&log).is_err());
}

/// The states no crash of the writer leaves are refused too, and left as they were.
#[test]
fn states_no_crash_leaves_are_refused() {
    // Whole records cut off, head intact: the head is ahead.
    let (_d, log) = write_log(5);
    let text = String::from_utf8(bytes(&log)).unwrap();
    let cut: String = text.split_inclusive('\n').take(3).collect();
    std::fs::write(&log, &cut).unwrap();
    assert!(AuditLog::open(&log).is_err());
    assert_eq!(bytes(&log), cut.as_bytes());

    // The head two behind.
    let (_d, log) = write_log(3);
    let head3 = head(&log).unwrap();
    let mut l = AuditLog::open(&log).unwrap();
    l.append("step", &json!({})).unwrap();
    l.append("step", &json!({})).unwrap();
    drop(l);
    std::fs::write(head_path(&log), &head3).unwrap();
    assert!(AuditLog::open(&log).is_err());

    // The last record's newline gone while the head names it: cutting it off as a torn
    // line would lose an acknowledged record.
    let (_d, log) = write_log(3);
    let mut b = bytes(&log);
    b.pop();
    std::fs::write(&log, &b).unwrap();
    assert!(AuditLog::open(&log).is_err());
    assert_eq!(bytes(&log), b);

    // An empty log with a head: the whole log is gone.
    let (_d, log) = write_log(2);
    std::fs::write(&log, "").unwrap();
    assert!(AuditLog::open(&log).is_err());
}

/// `audit list` shows what records say, but no record can add a row to the table or
/// send the terminal an escape sequence.
#[test]
fn audit_list_escapes_control_characters() {
    let (_d, log) = write_log(0);
    let mut l = AuditLog::open(&log).unwrap();
    let fake_row =
        "\n    9  2026-01-01T00:00:00.000Z  action_outcome    an-1 step 1: k8s.drain -> done";
    l.append(
        "anomaly_opened",
        &json!({"id": "an-1", "signal": "cpu", "labels": {"pod": format!("cart{fake_row}")},
            "value": 1.0, "expected": 1.0, "lower": 0.0, "upper": 2.0, "score": 1.0}),
    )
    .unwrap();
    l.append(
        "playbook_failed",
        &json!({"anomaly_id": "an-1", "playbook": "p", "error": "\u{1b}[2J\u{1b}[31mred\r\u{202e}txt"}),
    )
    .unwrap();
    l.append("odd\nkind", &json!({"note": "tab\there"}))
        .unwrap();
    drop(l);

    let out = Command::new(env!("CARGO_BIN_EXE_homeostat"))
        .args(["audit", "list", "--width", "500", "--log"])
        .arg(&log)
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 4, "a header and 3 rows:\n{stdout}");
    assert!(
        !stdout
            .chars()
            .any(|c| (c.is_control() && c != '\n') || c == '\u{202e}'),
        "{stdout:?}"
    );
    assert!(stdout.contains(r"pod=cart\n    9  2026"), "{stdout}");
    assert!(
        stdout.contains(r"\x1b[2J\x1b[31mred\r\u{202e}txt"),
        "{stdout}"
    );
    assert!(stdout.contains(r"odd\nkind"), "{stdout}");
    assert!(stdout.contains(r"note=tab\there"), "{stdout}");
}

/// Not a test of its own: the writer that `kill -9` kills, when run as a child process
/// by the test below (it returns at once otherwise).
#[test]
fn appender_child() {
    let Some(log) = std::env::var_os("HOMEOSTAT_AUDIT_APPENDER") else {
        return;
    };
    let mut l = AuditLog::open(Path::new(&log)).expect("the child opens the log");
    for i in 0u64.. {
        l.append(
            "step",
            &json!({"i": i, "pad": "x".repeat((i % 7 * 300) as usize)}),
        )
        .expect("the child appends");
    }
}

/// The hostile tester's run: a process appending as fast as it can is killed with
/// SIGKILL at random moments, 30 times; every next start must open the log, and the log
/// must verify after it.
#[test]
fn kill_9_at_random_moments_never_stops_the_next_start() {
    let (_d, log) = write_log(1);
    // A small LCG: random enough for kill times, and no dependency.
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    for round in 0..30 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "appender_child", "--test-threads=1"])
            .env("HOMEOSTAT_AUDIT_APPENDER", &log)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::thread::sleep(std::time::Duration::from_millis(30 + (seed >> 33) % 70));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let opened = AuditLog::open(&log);
        assert!(
            opened.is_ok(),
            "round {round}: the next start refused: {}",
            opened.unwrap_err()
        );
        drop(opened);
        assert!(
            audit::verify(&log).is_ok(),
            "round {round}: {:?}",
            audit::verify(&log)
        );
    }
    let records = audit::read_records(&log).unwrap();
    let recovered = records
        .iter()
        .filter(|r| r.kind == "audit_recovered")
        .count();
    eprintln!(
        "{} records, {recovered} recoveries after 30 kills",
        records.len()
    );
    assert!(records.len() > 30, "the child wrote records");
}
