//! The anomaly event: what detection hands to playbooks and the audit log.

use serde::{Deserialize, Serialize};

use crate::labels::Labels;

/// An open anomaly on one series, as a playbook sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
    /// Stable id, shared by every audit record about this anomaly.
    pub id: String,
    /// The signal's name.
    pub signal: String,
    /// The series' labels.
    pub labels: Labels,
    /// The latest value.
    pub value: f64,
    /// The value the baseline expected.
    pub expected: f64,
    /// Lower edge of the expected band.
    pub lower: f64,
    /// Upper edge of the expected band.
    pub upper: f64,
    /// The latest score.
    pub score: f64,
    /// The highest score since the anomaly opened.
    pub peak_score: f64,
    /// `up` when the value is above the band, `down` when below.
    pub direction: String,
    /// RFC 3339 time the anomaly opened.
    pub started_at: String,
    /// Unix seconds the anomaly opened.
    pub started_unix: f64,
    /// Seconds the anomaly has been open.
    pub duration_secs: f64,
    /// `homeostat` for an anomaly it detected, `alertmanager` for a firing alert.
    #[serde(default = "homeostat_source")]
    pub source: String,
    /// An alert's annotations (empty for homeostat's own anomalies).
    #[serde(default)]
    pub annotations: std::collections::BTreeMap<String, String>,
}

fn homeostat_source() -> String {
    "homeostat".to_string()
}

/// A short id for an anomaly: hex of a hash over signal, labels and start time.
pub fn anomaly_id(signal: &str, labels: &Labels, started_unix: f64) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{signal}{labels}{started_unix}").as_bytes());
    format!("an-{}", &hex::encode(digest)[..12])
}
