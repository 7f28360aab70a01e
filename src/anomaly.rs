//! The anomaly event: what detection hands to playbooks and the audit log.

use serde::{Deserialize, Serialize};

use crate::labels::Labels;

/// An open anomaly on one series (or a firing alert), as a playbook sees it. Missing
/// fields read as defaults and `null` numbers as NaN, so recorded events read back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Anomaly {
    /// Stable id, shared by every audit record about this anomaly.
    pub id: String,
    /// The signal's name.
    pub signal: String,
    /// The signal's PromQL (empty for alerts), so a playbook can build verifications.
    pub query: String,
    /// The series' labels.
    pub labels: Labels,
    /// The latest value.
    #[serde(deserialize_with = "nan_if_null")]
    pub value: f64,
    /// The value the baseline expected.
    #[serde(deserialize_with = "nan_if_null")]
    pub expected: f64,
    /// Lower edge of the expected band.
    #[serde(deserialize_with = "nan_if_null")]
    pub lower: f64,
    /// Upper edge of the expected band.
    #[serde(deserialize_with = "nan_if_null")]
    pub upper: f64,
    /// The latest score.
    pub score: f64,
    /// The highest score since the anomaly opened.
    pub peak_score: f64,
    /// `up` when the value is above the band, `down` when below.
    pub direction: String,
    /// What made the series unusual when the anomaly opened: `level` (far from the
    /// expected value), `jump` (from the previous point), `shift` (the recent level
    /// moved), `drift` (small deviations added up), `shape` (an unusual path) or `record`
    /// (beyond its range). Empty for alerts.
    pub evidence: String,
    /// Whether it was judged against the series' daily profile rather than its level.
    pub seasonal: bool,
    /// RFC 3339 time the anomaly opened.
    pub started_at: String,
    /// Unix seconds the anomaly opened.
    pub started_unix: f64,
    /// Seconds the anomaly has been open.
    pub duration_secs: f64,
    /// `homeostat` for an anomaly it detected, `alertmanager` for a firing alert.
    pub source: String,
    /// An alert's annotations (empty for homeostat's own anomalies).
    #[serde(default)]
    pub annotations: std::collections::BTreeMap<String, String>,
    /// The incident it belongs to: the id of the first of the anomalies and alerts that
    /// came close together (`agent.incident_window`), each sharing an instance, node, pod,
    /// deployment or server with one before it; its own id when it came first or alone.
    /// Empty in records written before incidents existed (and then not written).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub incident: String,
}

impl Default for Anomaly {
    fn default() -> Self {
        Anomaly {
            id: "an-test".into(),
            signal: String::new(),
            query: String::new(),
            labels: Labels::default(),
            value: f64::NAN,
            expected: f64::NAN,
            lower: f64::NAN,
            upper: f64::NAN,
            score: 0.0,
            peak_score: 0.0,
            direction: "up".into(),
            evidence: String::new(),
            seasonal: false,
            started_at: String::new(),
            started_unix: 0.0,
            duration_secs: 0.0,
            source: "homeostat".into(),
            annotations: Default::default(),
            incident: String::new(),
        }
    }
}

/// JSON has no NaN: serde_json writes it as `null`, so read `null` back as NaN.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// A short id for an anomaly: hex of a hash over signal, labels and start time.
pub fn anomaly_id(signal: &str, labels: &Labels, started_unix: f64) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{signal}{labels}{started_unix}").as_bytes());
    format!("an-{}", &hex::encode(digest)[..12])
}

/// Alertmanager's webhook payload (version 4), the fields homeostat uses.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertmanagerWebhook {
    /// Payload version; homeostat reads version 4.
    pub version: String,
    /// `firing` or `resolved` for the group.
    pub status: String,
    /// The alerts of the group.
    pub alerts: Vec<AlertmanagerAlert>,
}

/// One alert of a webhook payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertmanagerAlert {
    /// `firing` or `resolved`.
    pub status: String,
    /// The alert's labels (`alertname` among them).
    pub labels: std::collections::BTreeMap<String, String>,
    /// Its annotations.
    #[serde(default)]
    pub annotations: std::collections::BTreeMap<String, String>,
    /// RFC 3339 time it started firing.
    pub starts_at: String,
    /// Alertmanager's fingerprint of its label set.
    #[serde(default)]
    pub fingerprint: String,
}

impl Anomaly {
    /// The event a playbook sees for a firing alert; `now` is unix seconds.
    pub fn from_alert(alert: &AlertmanagerAlert, now: f64) -> Anomaly {
        let labels = Labels(alert.labels.clone());
        let started_unix = humantime::parse_rfc3339_weak(
            alert
                .starts_at
                .trim_end_matches('Z')
                .split('.')
                .next()
                .unwrap_or(""),
        )
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(now, |d| d.as_secs_f64());
        let fingerprint = if alert.fingerprint.is_empty() {
            anomaly_id("alert", &labels, started_unix)
        } else {
            format!("am-{}", alert.fingerprint)
        };
        // An alert has no value, band or score: those stay NaN and 0.
        Anomaly {
            id: fingerprint,
            signal: alert.labels.get("alertname").cloned().unwrap_or_default(),
            labels,
            started_at: alert.starts_at.clone(),
            started_unix,
            duration_secs: (now - started_unix).max(0.0),
            source: "alertmanager".into(),
            annotations: alert.annotations.clone(),
            ..Anomaly::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_firing_alert_becomes_an_event() {
        let hook: AlertmanagerWebhook = serde_json::from_str(
            r#"{"version":"4","groupKey":"{}:{}","truncatedAlerts":0,"status":"firing","receiver":"homeostat",
                "groupLabels":{},"commonLabels":{},"commonAnnotations":{},"externalURL":"http://am",
                "alerts":[{"status":"firing","labels":{"alertname":"KubeNodeNotReady","node":"n1"},
                "annotations":{"summary":"n1 not ready"},"startsAt":"2026-11-24T10:00:00.123Z",
                "endsAt":"0001-01-01T00:00:00Z","generatorURL":"http://prom","fingerprint":"abc123"}]}"#,
        )
        .unwrap();
        let a = Anomaly::from_alert(&hook.alerts[0], 1_795_514_460.0);
        assert_eq!(a.id, "am-abc123");
        assert_eq!(a.signal, "KubeNodeNotReady");
        assert_eq!(a.source, "alertmanager");
        assert_eq!(a.started_unix, 1_795_514_400.0);
        assert_eq!(a.duration_secs, 60.0);
        assert_eq!(a.annotations["summary"], "n1 not ready");
    }
}
