//! One-line summaries of records for `homeostat audit list`, and the escaping that
//! keeps what a record says from acting on the terminal that shows it.

use std::borrow::Cow;
use std::fmt::Write as _;

use serde_json::Value;

use super::event::{Event, PlaybookRejected};
use crate::labels::Labels;
use crate::playbook::Action;

/// A one-line summary of a record for tables: the fields that matter for its kind, in
/// reading order; `key=value` pairs for a kind it does not know or a record that does not
/// read as its kind. Escaped (see [`escape`]): a record cannot start a new row or send
/// the terminal an escape sequence.
pub fn summarize(kind: &str, data: &Value, width: usize) -> String {
    let out = match Event::from_parts(kind, data) {
        Ok(event) => event.summary(),
        Err(_) => generic(data),
    };
    truncate(escape(&out).into_owned(), width)
}

/// Text from a record made safe to print in a line: a backslash doubled, and control
/// characters (`\n`, `\r`, `\t`, `\x1b`, …), Unicode line separators and invisible
/// formatting characters (bidirectional overrides, zero-width spaces) written as escapes,
/// so that what is shown is one line and reads back as exactly what the record holds.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c == '\\' || needs_escape(c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) && (c as u32) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Control characters, and the format characters that move or hide text on screen.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{00ad}' | '\u{061c}' | '\u{180e}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{206f}'
            | '\u{feff}'
            | '\u{fff9}'..='\u{fffb}')
}

impl Event {
    /// The record in one line, as [`summarize`] shows it (not truncated).
    pub fn summary(&self) -> String {
        match self {
            Event::AnomalyOpened(a) => format!(
                "{} {}{} value={} expected={} band=[{}, {}] score={}{}{}",
                a.id,
                a.signal,
                labels(&a.labels),
                num(a.value),
                num(a.expected),
                num(a.lower),
                num(a.upper),
                num(a.score),
                // Empty in records written before the evidence was kept.
                match (a.evidence.as_str(), a.seasonal) {
                    ("", _) => String::new(),
                    (e, true) => format!(" evidence={e} (daily profile)"),
                    (e, false) => format!(" evidence={e}"),
                },
                // Shown for the members that joined another's incident.
                if a.incident.is_empty() || a.incident == a.id {
                    String::new()
                } else {
                    format!(" incident={}", a.incident)
                }
            ),
            Event::AnomalyClosed(c) => format!(
                "{} {}{} after {}s ({})",
                c.id,
                c.signal,
                labels(&c.labels),
                c.duration_secs.map_or_else(|| "-".into(), num),
                c.reason
            ),
            Event::AnomalyResumed(r) => format!(
                "{} {}{} open since {}",
                r.id,
                r.signal,
                labels(&r.labels),
                r.started_at
            ),
            Event::PlaybookMatched(m) => format!("{} -> playbook {}", m.anomaly_id, m.playbook),
            Event::Plan(p) => {
                let steps: Vec<String> = p.actions.iter().map(action).collect();
                format!(
                    "{} by {} ({}): {}",
                    p.anomaly_id,
                    p.playbook,
                    p.mode,
                    if steps.is_empty() {
                        "nothing to do".into()
                    } else {
                        steps.join("; ")
                    }
                )
            }
            Event::ActionIntent(i) => format!(
                "{} step {}: {} ({})",
                i.anomaly_id,
                i.step,
                action(&i.action),
                i.mode
            ),
            Event::ActionOutcome(o) => {
                let mut line = format!(
                    "{} step {}: {} -> {}",
                    o.anomaly_id,
                    o.step,
                    o.kind,
                    o.outcome.as_str()
                );
                if let Some(m) = o.detail.as_ref().and_then(|d| d["message"].as_str()) {
                    line.push_str(&format!(" ({m})"));
                }
                line
            }
            Event::GuardrailRefused(g) => format!(
                "{} step {}: {} refused by {}: {}",
                g.anomaly_id,
                g.step,
                if g.kind.is_empty() {
                    "incident"
                } else {
                    g.kind.as_str()
                },
                g.rule,
                g.message
            ),
            Event::BreakerTripped(b) => format!(
                "{}: circuit breaker open after {} failed incidents",
                b.playbook, b.failures
            ),
            Event::BreakerReset(b) => {
                format!("{}: breaker reset by {}: {}", b.playbook, b.by, b.reason)
            }
            Event::ApprovalRequested(a) => format!(
                "{} {}: plan {} waits for approval until {} (plan {})",
                a.anomaly_id,
                a.playbook,
                a.id,
                a.expires_at,
                &a.plan_hash[..a.plan_hash.len().min(12)]
            ),
            Event::ApprovalGranted(a) | Event::ApprovalRejected(a) | Event::ApprovalExpired(a) => {
                format!(
                    "{} {}: plan {} by {}{}",
                    a.anomaly_id,
                    a.playbook,
                    a.id,
                    a.by,
                    if a.reason.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", a.reason)
                    }
                )
            }
            Event::Paused(p) => format!("paused by {}: {}", p.by, p.reason),
            Event::Resumed(r) => format!("resumed by {}", r.by),
            Event::ActionReconciled(r) => format!(
                "{} step {}: {} left without outcome by a stop (intent #{}): {}",
                r.anomaly_id,
                r.step,
                r.kind,
                r.intent_seq,
                match (&r.observed, &r.error) {
                    (Some(o), _) => format!("now {o}"),
                    (None, Some(e)) => format!("could not read it: {e}"),
                    (None, None) => "not read".into(),
                }
            ),
            Event::Verification(v) => format!(
                "{} step {}: {} after {}s: {}",
                v.anomaly_id,
                v.step,
                if v.passed { "passed" } else { "FAILED" },
                num(v.elapsed_secs),
                v.query
            ),
            Event::IncidentDone(d) => {
                let steps: Vec<String> = d
                    .results
                    .iter()
                    .map(|r| {
                        format!(
                            "{}:{}{}",
                            r.kind,
                            r.outcome.as_str(),
                            if r.failed { "(failed)" } else { "" }
                        )
                    })
                    .collect();
                format!(
                    "{} by {} after round {}: {}",
                    d.anomaly_id,
                    d.playbook,
                    d.round,
                    steps.join(", ")
                )
            }
            Event::PlaybookSuppressed(s) => format!(
                "{} playbook {} {} {}: {} (last plan {}s ago)",
                s.anomaly_id,
                s.playbook,
                if s.reason == "incident" {
                    "incident"
                } else {
                    "group"
                },
                s.group,
                s.reason,
                num(s.last_plan_secs_ago)
            ),
            Event::PlaybookReloaded(r) => format!(
                "{} {} -> {}",
                r.path.display(),
                short(r.old_sha256.as_deref().unwrap_or_default()),
                short(&r.new_sha256)
            ),
            Event::PlaybookRejected(r) => {
                let (path, new, error) = match r {
                    PlaybookRejected::Changed {
                        path,
                        new_sha256,
                        error,
                        ..
                    } => (path.display().to_string(), new_sha256.as_str(), error),
                    PlaybookRejected::Unreadable { path, error, .. } => {
                        (path.display().to_string(), "", error)
                    }
                    PlaybookRejected::AtStart { error, .. } => (String::new(), "", error),
                };
                format!("{path} {}: {error}", short(new))
            }
            Event::AlertReceived(a) => format!("{} {} {}", a.id, a.status, labels(&a.labels)),
            Event::AgentStarted(s) => format!(
                "version {} signals [{}] playbooks [{}]",
                s.version,
                s.signals.join(", "),
                s.playbooks
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Event::PlaybookFailed(f) => {
                format!("{} playbook {}: {}", f.anomaly_id, f.playbook, f.error)
            }
            Event::AuditRecovered(r) => r.describe(),
            Event::AuditSealed(s) => format!(
                "after {} (sha256 {}, {} bytes): {} records verify{}; reason: {}",
                s.previous,
                short(&s.previous_sha256),
                s.previous_bytes,
                s.last_seq,
                match (s.first_bad_line, &s.problem) {
                    (Some(line), Some(p)) => format!(", line {line}: {p}"),
                    _ => String::new(),
                },
                s.reason
            ),
            Event::ModelsRefused(m) => format!("{}: {}", m.signal, m.reason),
            Event::Checkpoint(c) => format!(
                "signs record {} (hash {}) with key {}",
                c.seq,
                short(&c.hash),
                short(&c.public_key)
            ),
            Event::AgentStopped(_) | Event::EscalationLimit(_) => generic(&self.to_parts().1),
        }
    }
}

/// A number for tables; `-` for a missing one (NaN: JSON's `null`).
fn num(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else {
        format!("{v:.4}")
    }
}

/// `{k=v,…}`, unquoted: easier to read in a table than PromQL's form.
fn labels(l: &Labels) -> String {
    let parts: Vec<String> = l.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{{{}}}", parts.join(","))
}

/// The kind and target of an action (its parameters would not fit).
fn action(a: &Action) -> String {
    let mut t = a.kind.clone();
    for (k, v) in &a.target {
        let _ = write!(t, " {k}={v}");
    }
    t
}

/// The first 12 hex digits of a hash, enough to tell versions apart in a table.
fn short(h: &str) -> &str {
    h.get(..12).unwrap_or(h)
}

fn truncate(out: String, width: usize) -> String {
    if out.chars().count() > width {
        out.chars()
            .take(width.saturating_sub(1))
            .collect::<String>()
            + "…"
    } else {
        out
    }
}

/// `key=value` pairs of a record's data.
fn generic(data: &Value) -> String {
    let mut out = String::new();
    if let Value::Object(map) = data {
        for (k, v) in map {
            if !out.is_empty() {
                out.push(' ');
            }
            match v {
                Value::String(s) => out.push_str(&format!("{k}={s}")),
                other => out.push_str(&format!("{k}={other}")),
            }
        }
    } else {
        out = data.to_string();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn summarize_by_kind_and_truncate() {
        let s = summarize("other", &json!({"a": "x", "b": [1, 2]}), 100);
        assert_eq!(s, "a=x b=[1,2]");
        assert_eq!(
            summarize("other", &json!({"a": "xxxxxxxx"}), 5)
                .chars()
                .count(),
            5
        );
        let plan = json!({"anomaly_id": "an-1", "playbook": "p", "mode": "dry-run",
            "actions": [{"kind": "k8s.cordon", "target": {"node": "n1"}}]});
        assert_eq!(
            summarize("plan", &plan, 200),
            "an-1 by p (dry-run): k8s.cordon node=n1"
        );
        let opened = json!({"id": "an-2", "signal": "cpu", "labels": {"pod": "a"},
            "value": 9.0, "expected": 1.0, "lower": 0.0, "upper": 2.0, "score": 0.9995,
            "evidence": "jump", "seasonal": true});
        assert!(
            summarize("anomaly_opened", &opened, 200)
                .ends_with("score=0.9995 evidence=jump (daily profile)"),
            "{}",
            summarize("anomaly_opened", &opened, 200)
        );
        // What a record says cannot add a row or reach the terminal raw.
        assert_eq!(
            summarize(
                "other",
                &json!({"a": "x\n  9  fake\u{1b}[2J\\n\u{202e}"}),
                100
            ),
            r"a=x\n  9  fake\x1b[2J\\n\u{202e}"
        );
        assert_eq!(escape("plain {pod=cart-1} é"), "plain {pod=cart-1} é");
        assert_eq!(escape("\u{7f}\u{85}\u{2028}"), r"\x7f\u{85}\u{2028}");
        // A record that does not read as its kind still shows what it holds.
        assert_eq!(
            summarize("verification", &json!({"passed": "maybe"}), 100),
            "passed=maybe"
        );
    }
}
