//! Which records `audit list` and `audit export` keep: by time, kind, playbook, target,
//! and the records of one incident for `audit show`. Pure functions of a record.

use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::AuditRecord;

/// What a record must match to be kept; every field set must match (an empty one
/// matches all).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only records written at or after this time.
    pub since: Option<SystemTime>,
    /// Only records of one of these kinds.
    pub kinds: Vec<String>,
    /// Only records about this playbook (their `playbook` field).
    pub playbook: Option<String>,
    /// Only records whose action targets or series labels hold every `key=value` here.
    pub target: Vec<(String, String)>,
}

impl Filter {
    /// Whether `rec` is kept.
    pub fn matches(&self, rec: &AuditRecord) -> bool {
        self.since
            .is_none_or(|since| rec.time().is_some_and(|t| t >= since))
            && (self.kinds.is_empty() || self.kinds.contains(&rec.kind))
            && self
                .playbook
                .as_ref()
                .is_none_or(|p| rec.data.get("playbook").and_then(Value::as_str) == Some(p))
            && self
                .target
                .iter()
                .all(|(k, v)| mentions_target(&rec.data, k, v))
    }
}

/// Whether an action target or a series' labels anywhere in `data` hold `key=value`:
/// a plan's `actions[].target`, an intent's `action.target`, a reconciled action's
/// `target`, an incident's `results[].target`, an anomaly's or alert's `labels`, a
/// match's `anomaly.labels`; and the same keys in kinds this version does not know
/// (approvals, guardrails). Depth is bounded by the JSON parser's own limit.
fn mentions_target(data: &Value, key: &str, value: &str) -> bool {
    match data {
        Value::Object(map) => map.iter().any(|(k, v)| {
            ((k == "target" || k == "labels") && v.get(key).and_then(Value::as_str) == Some(value))
                || mentions_target(v, key, value)
        }),
        Value::Array(items) => items.iter().any(|v| mentions_target(v, key, value)),
        _ => false,
    }
}

/// Whether `rec` belongs to incident `id`: its `anomaly_id` or `id` is `id`.
pub fn is_about(rec: &AuditRecord, id: &str) -> bool {
    ["anomaly_id", "id"]
        .iter()
        .any(|k| rec.data.get(k).and_then(Value::as_str) == Some(id))
}

/// The anomaly or alert that `rec` shows to be a member of incident `incident` (the
/// first one included): an `anomaly_opened` naming the incident, a `playbook_matched`
/// whose event names it (an alert joins as it arrives, with no record of its own), or a
/// `playbook_suppressed` because the incident was already answered.
pub fn member_of<'r>(rec: &'r AuditRecord, incident: &str) -> Option<&'r str> {
    let d = &rec.data;
    let names = |v: &Value| v.as_str() == Some(incident);
    let member = match rec.kind.as_str() {
        "anomaly_opened" if names(&d["incident"]) => &d["id"],
        "playbook_matched" if names(&d["anomaly"]["incident"]) => &d["anomaly_id"],
        "playbook_suppressed" if d["reason"] == "incident" && names(&d["group"]) => {
            &d["anomaly_id"]
        }
        _ => return None,
    };
    member.as_str()
}

/// `--since`: an RFC 3339 time (`2026-12-07T14:00:00Z`), or a duration back from `now`
/// (`2h`, `30m`, `1day`).
pub fn parse_since(s: &str, now: SystemTime) -> Result<SystemTime, String> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t);
    }
    let back: Duration = humantime::parse_duration(s).map_err(|_| {
        format!("{s:?} is neither an RFC 3339 time (2026-12-07T14:00:00Z) nor a duration (2h)")
    })?;
    now.checked_sub(back)
        .ok_or_else(|| format!("{s:?} reaches back before the clock's epoch"))
}

/// `--target`: `key=value`.
pub fn parse_target(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not key=value")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(kind: &str, ts: &str, data: Value) -> AuditRecord {
        AuditRecord {
            seq: 1,
            ts: ts.into(),
            kind: kind.into(),
            prev: String::new(),
            data,
            hash: String::new(),
        }
    }

    #[test]
    fn filters_combine() {
        let intent = rec(
            "action_intent",
            "2026-12-07T14:00:00.000Z",
            json!({"anomaly_id": "an-1", "playbook": "restart",
                   "action": {"kind": "k8s.rollout_restart", "target": {"deployment": "cart"}}}),
        );
        let opened = rec(
            "anomaly_opened",
            "2026-12-07T13:00:00.000Z",
            json!({"id": "an-1", "labels": {"deployment": "cart", "namespace": "shop"}}),
        );
        let t = |s| parse_since(s, SystemTime::now()).unwrap();
        let f = Filter {
            target: vec![("deployment".into(), "cart".into())],
            ..Filter::default()
        };
        assert!(f.matches(&intent) && f.matches(&opened));
        let f = Filter {
            playbook: Some("restart".into()),
            since: Some(t("2026-12-07T13:30:00Z")),
            kinds: vec!["plan".into(), "action_intent".into()],
            target: vec![("deployment".into(), "cart".into())],
        };
        assert!(f.matches(&intent) && !f.matches(&opened));
        let f = Filter {
            target: vec![("deployment".into(), "web".into())],
            ..Filter::default()
        };
        assert!(!f.matches(&intent));
        // A string that only looks like a target is not one.
        let note = rec("x", "", json!({"note": {"deployment": "cart"}}));
        assert!(!Filter {
            target: vec![("deployment".into(), "cart".into())],
            ..Filter::default()
        }
        .matches(&note));
        // A record whose time does not read is not "since" anything.
        assert!(!Filter {
            since: Some(t("1h")),
            ..Filter::default()
        }
        .matches(&note));
        assert!(is_about(&intent, "an-1") && is_about(&opened, "an-1"));
        assert!(!is_about(&intent, "an-2"));
    }

    #[test]
    fn since_reads_times_and_durations() {
        let now = humantime::parse_rfc3339("2026-12-07T14:00:00Z").unwrap();
        assert_eq!(
            parse_since("2h", now),
            Ok(humantime::parse_rfc3339("2026-12-07T12:00:00Z").unwrap())
        );
        assert_eq!(
            parse_since("2026-12-07T13:00:00Z", now),
            Ok(humantime::parse_rfc3339("2026-12-07T13:00:00Z").unwrap())
        );
        assert!(parse_since("yesterday-ish", now).is_err());
        assert!(parse_since("99999999999999999999999d", now).is_err());
        assert_eq!(parse_target("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_target("=b").is_err() && parse_target("ab").is_err());
    }
}
