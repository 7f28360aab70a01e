//! What a previous run left behind, read back from the audit log at start: anomalies
//! it stopped with open (resumed under the same id, with the playbooks it already ran),
//! and recent plans whose cooldowns still run (see [`PlanAges`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, UNIX_EPOCH};

use serde_json::json;

use super::watch::{OpenAnomaly, SignalWatch};
use crate::audit::AuditRecord;
use crate::labels::Labels;

/// An anomaly the audit log shows opened and never closed: the agent stopped (or
/// crashed) while it was open.
#[derive(Debug, Clone, PartialEq)]
pub struct Unclosed {
    /// The anomaly's id.
    pub id: String,
    /// Its signal.
    pub signal: String,
    /// Its series.
    pub labels: Labels,
    /// Unix seconds it opened.
    pub started_unix: f64,
    /// Its highest score so far.
    pub peak_score: f64,
    /// Why it opened.
    pub evidence: String,
    /// Whether against the daily profile.
    pub seasonal: bool,
    /// Playbooks already matched (or suppressed) for it.
    pub handled: BTreeSet<String>,
}

/// Folds one audit record, in log order, into the anomalies open so far (by id).
pub fn track_open(open: &mut BTreeMap<String, Unclosed>, r: &AuditRecord) {
    let text = |k: &str| r.data[k].as_str().map(str::to_string);
    match r.kind.as_str() {
        "anomaly_opened" => {
            let (Some(id), Some(signal)) = (text("id"), text("signal")) else {
                return;
            };
            let Ok(labels) = serde_json::from_value(r.data["labels"].clone()) else {
                return;
            };
            let number = |k: &str| r.data[k].as_f64().unwrap_or(0.0);
            open.insert(
                id.clone(),
                Unclosed {
                    id,
                    signal,
                    labels,
                    started_unix: number("started_unix"),
                    peak_score: number("peak_score"),
                    // Empty in a record written before evidence was recorded.
                    evidence: text("evidence").unwrap_or_default(),
                    seasonal: r.data["seasonal"].as_bool().unwrap_or(false),
                    handled: BTreeSet::new(),
                },
            );
        }
        "anomaly_closed" => {
            if let Some(id) = text("id") {
                open.remove(&id);
            }
        }
        "playbook_matched" | "playbook_suppressed" => {
            if let (Some(id), Some(playbook)) = (text("anomaly_id"), text("playbook")) {
                if let Some(u) = open.get_mut(&id) {
                    u.handled.insert(playbook);
                }
            }
        }
        _ => {}
    }
}

/// What became of an anomaly a previous run left open.
#[derive(Debug, Clone, PartialEq)]
pub enum Restored {
    /// Its series is known again: it stays open under the same id.
    Resumed {
        /// What the audit log knew of it.
        anomaly: Unclosed,
        /// RFC 3339 time it opened.
        started_at: String,
    },
    /// Its series is gone (or its signal no longer configured): it is closed.
    Closed {
        /// What the audit log knew of it.
        anomaly: Unclosed,
        /// Why.
        reason: &'static str,
    },
}

/// Goes on with the anomalies a previous run stopped with open, under the same id and
/// with the playbooks it already ran, so a restart neither opens the incident again nor
/// leaves it open in the log forever. One whose series is not known after fitting (gone
/// from the history, or its signal no longer configured) is closed.
pub fn resume(watches: &mut [SignalWatch], unclosed: BTreeMap<String, Unclosed>) -> Vec<Restored> {
    let mut out = Vec::with_capacity(unclosed.len());
    for u in unclosed.into_values() {
        let watch = watches.iter_mut().find(|w| w.cfg.name == u.signal);
        let known = watch.is_some();
        match watch.and_then(|w| w.series.get_mut(&u.labels)) {
            Some(series) => {
                let started = UNIX_EPOCH + Duration::from_secs_f64(u.started_unix.max(0.0));
                series.detector.resume_open();
                series.open = Some(OpenAnomaly {
                    id: u.id.clone(),
                    started,
                    peak_score: u.peak_score,
                    evidence: u.evidence.clone(),
                    seasonal: u.seasonal,
                    handled: u.handled.clone(),
                });
                out.push(Restored::Resumed {
                    started_at: humantime::format_rfc3339_millis(started).to_string(),
                    anomaly: u,
                });
            }
            None => out.push(Restored::Closed {
                reason: if known {
                    "series not in the history at restart"
                } else {
                    "signal no longer configured"
                },
                anomaly: u,
            }),
        }
    }
    out
}

/// The `data` of the audit record for a restored anomaly.
pub fn record_of(r: &Restored) -> (&'static str, serde_json::Value) {
    match r {
        Restored::Resumed {
            anomaly: u,
            started_at,
        } => (
            "anomaly_resumed",
            json!({"id": u.id, "signal": u.signal, "labels": u.labels, "started_at": started_at, "handled": u.handled}),
        ),
        Restored::Closed { anomaly: u, reason } => (
            "anomaly_closed",
            json!({"id": u.id, "signal": u.signal, "labels": u.labels, "peak_score": u.peak_score, "reason": reason}),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(kind: &str, data: serde_json::Value) -> AuditRecord {
        AuditRecord {
            seq: 0,
            ts: String::new(),
            kind: kind.into(),
            prev: String::new(),
            data,
            hash: String::new(),
        }
    }

    #[test]
    fn the_log_tells_which_anomalies_a_previous_run_left_open() {
        let opened = |id: &str, pod: &str| {
            rec(
                "anomaly_opened",
                json!({"id": id, "signal": "latency", "labels": {"pod": pod}, "started_unix": 100.0, "peak_score": 0.9995, "evidence": "jump", "seasonal": true}),
            )
        };
        let log = [
            opened("an-1", "a"),
            opened("an-2", "b"),
            rec(
                "playbook_matched",
                json!({"anomaly_id": "an-2", "playbook": "restart"}),
            ),
            rec(
                "playbook_suppressed",
                json!({"anomaly_id": "an-2", "playbook": "scale"}),
            ),
            // An alert's plan: no anomaly of homeostat's own.
            rec(
                "playbook_matched",
                json!({"anomaly_id": "al-9", "playbook": "restart"}),
            ),
            rec("anomaly_closed", json!({"id": "an-1"})),
            // Unreadable: skipped, not fatal.
            rec("anomaly_opened", json!({"id": "an-3"})),
        ];
        let mut open = BTreeMap::new();
        for r in &log {
            track_open(&mut open, r);
        }
        let left: Vec<&Unclosed> = open.values().collect();
        assert_eq!(
            left,
            [&Unclosed {
                id: "an-2".into(),
                signal: "latency".into(),
                labels: serde_json::from_value(json!({"pod": "b"})).unwrap(),
                started_unix: 100.0,
                peak_score: 0.9995,
                evidence: "jump".into(),
                seasonal: true,
                handled: ["restart".to_string(), "scale".to_string()].into(),
            }]
        );
    }
}
