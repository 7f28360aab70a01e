//! What a previous run left behind, read back from the audit log at start: anomalies
//! it stopped with open (resumed under the same id, with the playbooks it already ran),
//! and recent plans whose cooldowns still run (see [`PlanAges`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, UNIX_EPOCH};

use super::watch::{OpenAnomaly, SignalWatch};
use crate::audit::{ActionIntent, ActionReconciled, AnomalyClosed, AnomalyResumed, Event};
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
    /// Its incident (empty in a record written before incidents existed).
    pub incident: String,
}

/// Folds one audit event, in log order, into the anomalies open so far (by id).
pub fn track_open(open: &mut BTreeMap<String, Unclosed>, event: &Event) {
    match event {
        // One without its series cannot be resumed.
        Event::AnomalyOpened(a) if !a.id.is_empty() && !a.signal.is_empty() => {
            open.insert(
                a.id.clone(),
                Unclosed {
                    id: a.id.clone(),
                    signal: a.signal.clone(),
                    labels: a.labels.clone(),
                    started_unix: a.started_unix,
                    peak_score: a.peak_score,
                    // Empty in a record written before evidence was recorded.
                    evidence: a.evidence.clone(),
                    seasonal: a.seasonal,
                    handled: BTreeSet::new(),
                    incident: a.incident.clone(),
                },
            );
        }
        Event::AnomalyClosed(c) => {
            open.remove(&c.id);
        }
        Event::PlaybookMatched(m) => note_handled(open, &m.anomaly_id, &m.playbook),
        Event::PlaybookSuppressed(s) => note_handled(open, &s.anomaly_id, &s.playbook),
        _ => {}
    }
}

/// An action's place in its incident: anomaly, playbook, round, step.
pub type StepKey = (String, String, usize, usize);

/// Tracks intents without an outcome: an intent opens its step, an outcome or a
/// reconciliation closes it. What is left at the end was cut off by a stop.
pub fn track_intent(open: &mut BTreeMap<StepKey, (u64, ActionIntent)>, seq: u64, event: &Event) {
    match event {
        Event::ActionIntent(i) => {
            let key = (i.anomaly_id.clone(), i.playbook.clone(), i.round, i.step);
            open.insert(key, (seq, i.clone()));
        }
        Event::ActionOutcome(o) => {
            open.remove(&(o.anomaly_id.clone(), o.playbook.clone(), o.round, o.step));
        }
        Event::ActionReconciled(r) => {
            open.remove(&(r.anomaly_id.clone(), r.playbook.clone(), r.round, r.step));
        }
        _ => {}
    }
}

/// The record that closes an intent a stop left open: its target as read now.
pub fn reconciled(
    intent_seq: u64,
    i: &ActionIntent,
    observed: Result<serde_json::Value, String>,
) -> Event {
    let (observed, error) = match observed {
        Ok(v) => (Some(v), None),
        Err(e) => (None, Some(e)),
    };
    Event::ActionReconciled(ActionReconciled {
        anomaly_id: i.anomaly_id.clone(),
        playbook: i.playbook.clone(),
        round: i.round,
        step: i.step,
        intent_seq,
        kind: i.action.kind.clone(),
        target: i.action.target.clone(),
        observed,
        error,
    })
}

/// Notes that a playbook has been run (or held back) for an open anomaly.
fn note_handled(open: &mut BTreeMap<String, Unclosed>, anomaly_id: &str, playbook: &str) {
    if let Some(u) = open.get_mut(anomaly_id) {
        u.handled.insert(playbook.to_string());
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
                // A time no clock can hold (a damaged record) reads as the epoch.
                let started = Duration::try_from_secs_f64(u.started_unix.max(0.0))
                    .ok()
                    .and_then(|d| UNIX_EPOCH.checked_add(d))
                    .unwrap_or(UNIX_EPOCH);
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

impl Restored {
    /// The audit event that records it.
    pub fn event(&self) -> Event {
        match self {
            Restored::Resumed {
                anomaly: u,
                started_at,
            } => Event::AnomalyResumed(AnomalyResumed {
                id: u.id.clone(),
                signal: u.signal.clone(),
                labels: u.labels.clone(),
                started_at: started_at.clone(),
                handled: u.handled.clone(),
            }),
            Restored::Closed { anomaly: u, reason } => Event::AnomalyClosed(AnomalyClosed {
                id: u.id.clone(),
                signal: u.signal.clone(),
                labels: u.labels.clone(),
                duration_secs: None,
                peak_score: u.peak_score,
                reason: (*reason).into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::anomaly::Anomaly;
    use crate::audit::{PlaybookMatched, PlaybookSuppressed};

    #[test]
    fn the_log_tells_which_anomalies_a_previous_run_left_open() {
        let opened = |id: &str, pod: &str| {
            Event::AnomalyOpened(Anomaly {
                id: id.into(),
                signal: "latency".into(),
                labels: Labels::from_pairs([("pod", pod)]),
                started_unix: 100.0,
                peak_score: 0.9995,
                evidence: "jump".into(),
                seasonal: true,
                ..Anomaly::default()
            })
        };
        let matched = |id: &str, playbook: &str| {
            Event::PlaybookMatched(PlaybookMatched {
                anomaly_id: id.into(),
                playbook: playbook.into(),
                ..PlaybookMatched::default()
            })
        };
        let log = [
            opened("an-1", "a"),
            opened("an-2", "b"),
            matched("an-2", "restart"),
            Event::PlaybookSuppressed(PlaybookSuppressed {
                anomaly_id: "an-2".into(),
                playbook: "scale".into(),
                ..PlaybookSuppressed::default()
            }),
            // An alert's plan: no anomaly of homeostat's own.
            matched("al-9", "restart"),
            Event::AnomalyClosed(AnomalyClosed {
                id: "an-1".into(),
                ..AnomalyClosed::default()
            }),
            // Without its series: skipped, not fatal.
            Event::AnomalyOpened(Anomaly {
                id: "an-3".into(),
                ..Anomaly::default()
            }),
        ];
        let mut open = BTreeMap::new();
        for event in &log {
            track_open(&mut open, event);
        }
        let left: Vec<&Unclosed> = open.values().collect();
        assert_eq!(
            left,
            [&Unclosed {
                id: "an-2".into(),
                signal: "latency".into(),
                labels: Labels::from_pairs([("pod", "b")]),
                started_unix: 100.0,
                peak_score: 0.9995,
                evidence: "jump".into(),
                seasonal: true,
                handled: ["restart".to_string(), "scale".to_string()].into(),
                incident: String::new(),
            }]
        );
    }

    #[test]
    fn an_unclosed_anomaly_with_an_impossible_start_resumes_without_a_panic() {
        let cfg: crate::config::SignalConfig = crate::config::Config::parse(
            "[prometheus]\nurl = \"http://127.0.0.1:9\"\n[[signals]]\nname = \"latency\"\nquery = 'q'\n",
            std::path::Path::new("."),
        )
        .unwrap()
        .signals
        .remove(0);
        let now = tokio::time::Instant::now();
        let mut w = SignalWatch::new(cfg, 10, now);
        let labels = Labels::from_pairs([("pod", "a")]);
        let history = crate::source::History {
            labels: labels.clone(),
            samples: (0..100).map(|i| (f64::from(i) * 300.0, 1.0)).collect(),
        };
        w.fit_history(vec![history], &mut 10, now);
        let u = Unclosed {
            id: "an-1".into(),
            signal: "latency".into(),
            labels,
            started_unix: 1e300,
            peak_score: 1.0,
            evidence: String::new(),
            seasonal: false,
            handled: BTreeSet::new(),
            incident: String::new(),
        };
        let restored = resume(
            std::slice::from_mut(&mut w),
            [("an-1".to_string(), u)].into(),
        );
        assert!(
            matches!(&restored[..], [Restored::Resumed { started_at, .. }] if started_at.starts_with("1970")),
            "{restored:?}"
        );
    }
}
