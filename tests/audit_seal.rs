//! `homeostat audit seal`: a log (damaged or not) set aside under a new name, never
//! rewritten, and a new log whose first record links to it; `audit verify` following
//! the links back. Through the built binary: output and exit codes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use homeostat::audit::{self, head_path, segment_path, AuditLog, AuditSealed, Event};
use serde_json::json;
use sha2::{Digest, Sha256};

fn homeostat(args: &[&str], log: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_homeostat"))
        .args(args)
        .arg("--log")
        .arg(log)
        .output()
        .expect("runs the binary")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn seal(log: &Path, reason: &str) -> Output {
    homeostat(&["audit", "seal", "--reason", reason], log)
}

fn verify(log: &Path) -> Output {
    homeostat(&["audit", "verify"], log)
}

fn write_log(n: usize) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let mut log = AuditLog::open(&path).unwrap();
    for i in 0..n {
        log.append("step", &json!({"i": i})).unwrap();
    }
    (dir, path)
}

/// The one `audit_sealed` record a freshly sealed log holds.
fn link(log: &Path) -> AuditSealed {
    let records = audit::read_records(log).unwrap();
    assert_eq!(records.len(), 1);
    match records[0].event().unwrap() {
        Event::AuditSealed(s) => s,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_damaged_log_is_sealed_aside_and_the_new_log_links_to_it() {
    let (_d, log) = write_log(5);
    let edited = std::fs::read_to_string(&log)
        .unwrap()
        .replacen("\"i\":2", "\"i\":9", 1);
    std::fs::write(&log, &edited).unwrap();
    let old_head = std::fs::read(head_path(&log)).unwrap();
    let hash2 = audit::read_records(&log).unwrap()[1].hash.clone();
    assert!(AuditLog::open(&log).is_err());

    let out = seal(&log, "record 3 edited by hand; disk checked");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("audit.jsonl.1.sealed"),
        "{}",
        text(&out)
    );

    // History is kept byte for byte, with its head.
    let segment = segment_path(&log, 1);
    assert_eq!(std::fs::read_to_string(&segment).unwrap(), edited);
    assert_eq!(std::fs::read(head_path(&segment)).unwrap(), old_head);

    let l = link(&log);
    assert_eq!(l.previous, "audit.jsonl.1.sealed");
    assert_eq!(
        l.previous_sha256,
        hex::encode(Sha256::digest(edited.as_bytes()))
    );
    assert_eq!(l.previous_bytes, edited.len() as u64);
    assert_eq!((l.last_seq, l.last_hash.as_str()), (2, hash2.as_str()));
    assert_eq!(l.first_bad_line, Some(3));
    assert!(l.problem.unwrap().contains("edited"));
    assert_eq!(l.reason, "record 3 edited by hand; disk checked");

    // The new log verifies, says where it came from, and takes records.
    let out = verify(&log);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("ok: 1 records"), "{said}");
    assert!(
        said.contains("sealed after audit.jsonl.1.sealed: sha256 matches; 2 records verified, then line 3: content does not match its hash (edited); reason: record 3 edited"),
        "{said}"
    );
    let mut l = AuditLog::open(&log).unwrap();
    assert_eq!(l.append("step", &json!({})).unwrap(), 2);
    assert_eq!(audit::verify(&log), Ok(2));
}

#[test]
fn verify_fails_when_a_sealed_segment_changed_or_went_missing() {
    let (_d, log) = write_log(3);
    assert!(seal(&log, "rotate").status.success());
    assert!(seal(&log, "rotate again").status.success());
    let out = verify(&log);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // Both links, newest first.
    let said = text(&out);
    let first = said.find("sealed after audit.jsonl.2.sealed").expect(&said);
    let second = said.find("sealed after audit.jsonl.1.sealed").expect(&said);
    assert!(first < second, "{said}");

    // The oldest segment edited: the chain of links breaks there.
    let oldest = segment_path(&log, 1);
    let mut b = std::fs::read(&oldest).unwrap();
    b.extend_from_slice(b"{}\n");
    std::fs::write(&oldest, b).unwrap();
    let out = verify(&log);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out)
            .contains("sealed after audit.jsonl.1.sealed: BROKEN: changed since it was sealed"),
        "{}",
        text(&out)
    );

    std::fs::remove_file(segment_path(&log, 2)).unwrap();
    let out = verify(&log);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("BROKEN: cannot open"), "{}", text(&out));
}

#[test]
fn a_crashed_log_sealed_says_where_it_stopped() {
    // A torn last line, and a log whose head was deleted.
    let (_d, log) = write_log(4);
    let mut b = std::fs::read(&log).unwrap();
    b.extend_from_slice(br#"{"seq":5,"ts""#);
    std::fs::write(&log, &b).unwrap();
    assert!(seal(&log, "torn").status.success());
    let l = link(&log);
    assert_eq!((l.last_seq, l.first_bad_line), (4, Some(5)));
    assert!(l.problem.unwrap().contains("incomplete record"));

    let (_d, log) = write_log(4);
    std::fs::remove_file(head_path(&log)).unwrap();
    assert!(seal(&log, "head lost").status.success());
    let l = link(&log);
    assert_eq!((l.last_seq, l.first_bad_line), (4, Some(5)));
    assert!(l.problem.unwrap().contains("head file is missing"));
    assert!(!head_path(&segment_path(&log, 1)).exists());
}

#[test]
fn an_interrupted_seal_is_finished_by_running_it_again() {
    // Stopped after the old log got its second name (and its head was removed).
    let (_d, log) = write_log(3);
    let old = std::fs::read(&log).unwrap();
    std::fs::hard_link(&log, segment_path(&log, 1)).unwrap();
    std::fs::hard_link(head_path(&log), head_path(&segment_path(&log, 1))).unwrap();
    std::fs::remove_file(head_path(&log)).unwrap();
    let out = seal(&log, "again");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("finished an interrupted seal"),
        "{}",
        text(&out)
    );
    assert!(!segment_path(&log, 2).exists());
    assert_eq!(std::fs::read(segment_path(&log, 1)).unwrap(), old);
    let l = link(&log);
    assert_eq!((l.last_seq, l.first_bad_line), (3, None), "{l:?}");
    assert!(verify(&log).status.success());

    // Stopped after the new log was in place, before its head.
    std::fs::remove_file(head_path(&log)).unwrap();
    let out = seal(&log, "again");
    assert!(
        text(&out).contains("finished an interrupted seal"),
        "{}",
        text(&out)
    );
    assert!(!segment_path(&log, 2).exists());
    assert!(verify(&log).status.success());
}

#[test]
fn a_link_cannot_send_verify_outside_the_log_directory() {
    let (dir, log) = write_log(0);
    std::fs::write(dir.path().join("secret"), "x").unwrap();
    let mut l = AuditLog::open(&log).unwrap();
    l.record(&Event::AuditSealed(AuditSealed {
        previous: "../secret".into(),
        reason: "forged".into(),
        ..AuditSealed::default()
    }))
    .unwrap();
    let out = verify(&log);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("does not name a file beside the log"),
        "{}",
        text(&out)
    );
}

#[test]
fn seal_exit_codes() {
    let (_d, log) = write_log(1);
    assert_eq!(seal(&log, "").status.code(), Some(2), "an empty reason");
    let out = homeostat(&["audit", "seal"], &log);
    assert_eq!(out.status.code(), Some(2), "no reason");
    let missing = log.with_file_name("nothing.jsonl");
    let out = seal(&missing, "x");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(!missing.exists());
}
