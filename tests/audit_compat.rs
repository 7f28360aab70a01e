//! Typed audit events against the log format already on disk: a log written by the
//! untyped writers (`tests/fixtures/audit-0.1.0.jsonl`, every record kind) reads back
//! as events that write the same data again, and new records keep the line layout.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use homeostat::act::{Outcome, StepResult};
use homeostat::anomaly::Anomaly;
use homeostat::audit::{self, AuditLog, Event, PlanChosen};
use homeostat::labels::Labels;
use homeostat::playbook::{Action, OnFailure};
use serde_json::json;

const KINDS: [&str; 17] = [
    "agent_started",
    "agent_stopped",
    "playbook_rejected",
    "playbook_reloaded",
    "alert_received",
    "anomaly_opened",
    "anomaly_closed",
    "anomaly_resumed",
    "playbook_matched",
    "playbook_suppressed",
    "plan",
    "playbook_failed",
    "action_intent",
    "action_outcome",
    "verification",
    "incident_done",
    "escalation_limit",
];

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/audit-0.1.0.jsonl")
}

#[test]
fn a_log_written_before_typed_events_verifies_and_reads_back_exactly() {
    let log = fixture();
    assert_eq!(audit::verify(&log), Ok(62));
    let records = audit::read_records(&log).unwrap();
    let kinds: BTreeSet<&str> = records.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(
        kinds,
        KINDS.into_iter().collect(),
        "the fixture covers every kind"
    );
    for r in &records {
        let event = r
            .event()
            .unwrap_or_else(|e| panic!("record {} ({}) does not read: {e}", r.seq, r.kind));
        let (kind, data) = event.to_parts();
        assert_eq!(kind, r.kind, "record {}", r.seq);
        assert_eq!(
            data, r.data,
            "record {} ({}) writes back otherwise",
            r.seq, r.kind
        );
    }
}

#[test]
fn audit_list_shows_the_old_log_as_the_untyped_version_did() {
    // `audit-0.1.0.list` is what `audit list --width 2000` printed for the fixture before
    // records were typed.
    let out = Command::new(env!("CARGO_BIN_EXE_homeostat"))
        .args(["audit", "list", "--width", "2000", "--log"])
        .arg(fixture())
        .output()
        .unwrap();
    assert!(out.status.success());
    let expected = std::fs::read_to_string(fixture().with_extension("list")).unwrap();
    let got = String::from_utf8(out.stdout).unwrap();
    for (n, (g, e)) in got.lines().zip(expected.lines()).enumerate() {
        assert_eq!(g, e, "line {}", n + 1);
    }
    assert_eq!(got.lines().count(), expected.lines().count());
}

/// The log's only line, its `ts` emptied and its `hash` cut off (both checked apart).
fn only_line(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap();
    assert_eq!(text.lines().count(), 1);
    let line = text.lines().next().unwrap();
    let ts_at = line.find(",\"ts\":\"").unwrap() + 7;
    let ts_end = ts_at + line[ts_at..].find('"').unwrap();
    let hash_at = line.rfind(",\"hash\":\"").unwrap();
    assert_eq!(
        line.len() - hash_at,
        9 + 64 + 2,
        "a 64-digit hash closes the line"
    );
    format!("{}{}", &line[..ts_at], &line[ts_end..hash_at])
}

fn write_one(event: &Event) -> String {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    AuditLog::open(&log).unwrap().record(event).unwrap();
    assert_eq!(audit::verify(&log), Ok(1));
    only_line(&log)
}

#[test]
fn new_records_keep_the_line_layout_byte_for_byte() {
    let zeros = "0".repeat(64);
    let anomaly = Anomaly {
        id: "an-1".into(),
        signal: "latency".into(),
        query: "max by (pod) (lat)".into(),
        labels: Labels::from_pairs([("pod", "cart-1")]),
        value: 500.0,
        expected: 100.0,
        lower: 95.5,
        upper: 104.5,
        score: 1.0,
        peak_score: 1.0,
        direction: "up".into(),
        evidence: "level".into(),
        seasonal: false,
        started_at: "2026-12-07T14:11:40.123Z".into(),
        started_unix: 1796652700.123,
        duration_secs: 0.0,
        source: "homeostat".into(),
        annotations: Default::default(),
        incident: "an-1".into(),
    };
    assert_eq!(
        write_one(&Event::AnomalyOpened(anomaly)),
        format!(
            r#"{{"seq":1,"ts":"","kind":"anomaly_opened","prev":"{zeros}","data":{{"annotations":{{}},"direction":"up","duration_secs":0.0,"evidence":"level","expected":100.0,"id":"an-1","incident":"an-1","labels":{{"pod":"cart-1"}},"lower":95.5,"peak_score":1.0,"query":"max by (pod) (lat)","score":1.0,"seasonal":false,"signal":"latency","source":"homeostat","started_at":"2026-12-07T14:11:40.123Z","started_unix":1796652700.123,"upper":104.5,"value":500.0}}"#
        )
    );

    let restart = Action {
        kind: "k8s.rollout_restart".into(),
        target: [
            ("deployment".to_string(), "cart".to_string()),
            ("namespace".to_string(), "test".to_string()),
        ]
        .into(),
        params: serde_json::from_value(json!({"note": "again", "n": 2})).unwrap(),
        verify: None,
        on_failure: OnFailure::Escalate,
    };
    let plan = PlanChosen {
        anomaly_id: "an-1".into(),
        playbook: "fix".into(),
        mode: "dry-run".into(),
        round: 1,
        after: Some(vec![StepResult {
            step: 1,
            kind: "k8s.rollout_restart".into(),
            target: restart.target.clone(),
            params: Default::default(),
            outcome: Outcome::DryRun,
            detail: serde_json::Value::Null,
            verified: Some(false),
            failed: true,
            escalated: true,
            refused_by: None,
        }]),
        actions: vec![restart],
    };
    assert_eq!(
        write_one(&Event::Plan(plan.clone())),
        format!(
            r#"{{"seq":1,"ts":"","kind":"plan","prev":"{zeros}","data":{{"actions":[{{"kind":"k8s.rollout_restart","on_failure":"escalate","params":{{"n":2,"note":"again"}},"target":{{"deployment":"cart","namespace":"test"}}}}],"after":[{{"escalated":true,"failed":true,"kind":"k8s.rollout_restart","outcome":"dry_run","params":{{}},"step":1,"target":{{"deployment":"cart","namespace":"test"}},"verified":false}}],"anomaly_id":"an-1","mode":"dry-run","playbook":"fix","round":1}}"#
        )
    );
    // Round 0 has no `after` at all, as before.
    let first = PlanChosen {
        round: 0,
        after: None,
        ..plan
    };
    assert!(!write_one(&Event::Plan(first)).contains("\"after\""));
}

#[test]
fn records_of_older_versions_read_with_defaults() {
    // Written before rounds, grouping, stages and the evidence on anomalies existed.
    let old = [
        (
            "plan",
            json!({"anomaly_id": "an-1", "playbook": "p", "mode": "dry-run", "actions": []}),
        ),
        (
            "playbook_matched",
            json!({"anomaly_id": "an-1", "playbook": "p", "sha256": "ab", "anomaly": {"id": "an-1", "signal": "cpu", "labels": {}, "value": null}}),
        ),
        (
            "playbook_failed",
            json!({"anomaly_id": "an-1", "playbook": "p", "error": "boom"}),
        ),
        ("agent_stopped", json!({"reason": "signal"})),
        (
            "action_outcome",
            json!({"anomaly_id": "an-1", "playbook": "p", "step": 1, "kind": "k8s.cordon", "outcome": "dry_run"}),
        ),
    ];
    for (kind, data) in &old {
        let event = Event::from_parts(kind, data).unwrap_or_else(|e| panic!("{kind}: {e}"));
        match event {
            Event::Plan(p) => assert_eq!((p.round, p.after), (0, None)),
            Event::PlaybookMatched(m) => {
                assert_eq!(m.group, "");
                assert!(m.anomaly.value.is_nan());
                assert_eq!(m.anomaly.evidence, "");
            }
            Event::PlaybookFailed(f) => assert_eq!(f.stage, ""),
            Event::AgentStopped(s) => assert_eq!(s.incidents_interrupted, 0),
            Event::ActionOutcome(o) => assert_eq!((o.round, o.outcome), (0, Outcome::DryRun)),
            other => panic!("{kind} read as {other:?}"),
        }
    }
    // A kind this version does not know, or a key of the wrong type, is not an event.
    assert!(Event::from_parts("time_travelled", &json!({})).is_err());
    assert!(Event::from_parts("verification", &json!({"passed": "yes"})).is_err());
}
