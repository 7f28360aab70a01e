//! What grouping anomalies into incidents ([`crate::detect::group`]) does to a labelled
//! backtest: series named `<machine>_<metric>` (ops-dev's SMD and ASD) are taken to carry
//! the label `server=<machine>`, and anomalies opening close together on one machine's
//! metrics count once. False alarms are counted as NAB counts them (after probation,
//! outside every window); an incident is false when none of its anomalies opened in a
//! window.

use std::collections::BTreeMap;
use std::fmt;

use super::{nab, FileResult};
use crate::detect::group::{incidents, Opening, IDENTIFYING};
use crate::labels::Labels;

/// Anomalies and incidents of one group of files.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IncidentCount {
    /// The group ([`FileResult::group`]).
    pub name: String,
    /// Anomalies opened after probation.
    pub anomalies: usize,
    /// Of them, outside every window.
    pub false_alarms: usize,
    /// Incidents they make.
    pub incidents: usize,
    /// Incidents with no anomaly in a window.
    pub false_incidents: usize,
}

/// The labels a file's name gives its series: `server=<machine>` for `<machine>_<metric>`,
/// else `server=<name>` (a series of its own).
pub fn labels_of(file: &FileResult) -> Labels {
    let stem = file
        .name
        .rsplit('/')
        .next()
        .unwrap_or("")
        .trim_end_matches(".csv");
    let machine = stem.rsplit_once('_').map_or(stem, |(m, _)| m);
    Labels::from_pairs([("server", format!("{}/{machine}", file.group()))])
}

/// Per group of labelled files and in total, the anomalies and the incidents they make
/// when those opening at most `within` seconds apart on one machine are grouped.
pub fn count(results: &[FileResult], within: f64) -> Vec<IncidentCount> {
    let mut groups: BTreeMap<String, Vec<&FileResult>> = BTreeMap::new();
    for r in results.iter().filter(|r| r.labelled) {
        groups.entry(r.group()).or_default().push(r);
    }
    let mut table = Vec::new();
    let mut total = IncidentCount {
        name: "total".into(),
        ..IncidentCount::default()
    };
    for (name, files) in groups {
        let labels: Vec<Labels> = files.iter().map(|f| labels_of(f)).collect();
        // (time, file, in a window) of each anomaly after probation.
        let mut opened = Vec::new();
        for (k, f) in files.iter().enumerate() {
            let skip = nab::probation(f.rows);
            let rows = f.detections.iter().enumerate().filter(|(_, d)| **d);
            for ((row, _), &t) in rows.zip(&f.opened_at) {
                if row >= skip {
                    let inside = f.windows.iter().any(|&(l, r)| l <= row && row <= r);
                    opened.push((t, k, inside));
                }
            }
        }
        let openings: Vec<Opening> = opened
            .iter()
            .map(|&(t, k, _)| Opening {
                t,
                labels: &labels[k],
            })
            .collect();
        let incident = incidents(&openings, within, &IDENTIFYING);
        let n = incident.iter().max().map_or(0, |m| m + 1);
        let mut true_incident = vec![false; n];
        for (&i, &(_, _, inside)) in incident.iter().zip(&opened) {
            true_incident[i] |= inside;
        }
        let c = IncidentCount {
            name,
            anomalies: opened.len(),
            false_alarms: opened.iter().filter(|o| !o.2).count(),
            incidents: n,
            false_incidents: true_incident.iter().filter(|t| !**t).count(),
        };
        total.anomalies += c.anomalies;
        total.false_alarms += c.false_alarms;
        total.incidents += c.incidents;
        total.false_incidents += c.false_incidents;
        table.push(c);
    }
    table.push(total);
    table
}

/// The incident table `backtest --incidents` prints.
pub struct IncidentTable<'a> {
    /// The grouping window, in seconds.
    pub within: f64,
    /// The rows, `total` last.
    pub rows: &'a [IncidentCount],
}

impl fmt::Display for IncidentTable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "incidents: anomalies opening within {} s on one machine's series grouped",
            self.within
        )?;
        writeln!(
            f,
            "{:<32} {:>9} {:>12} {:>9} {:>15}",
            "category", "anomalies", "false alarms", "incidents", "false incidents"
        )?;
        for r in self.rows {
            writeln!(
                f,
                "{:<32} {:>9} {:>12} {:>9} {:>15}",
                r.name, r.anomalies, r.false_alarms, r.incidents, r.false_incidents
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, hits: &[usize], windows: Vec<(usize, usize)>) -> FileResult {
        FileResult {
            set: String::new(),
            name: name.into(),
            rows: 100,
            scored_days: 1.0,
            windows,
            labelled: true,
            detections: (0..100).map(|i| hits.contains(&i)).collect(),
            opened_at: hits.iter().map(|&i| 60.0 * i as f64).collect(),
            evidence: Vec::new(),
        }
    }

    #[test]
    fn one_machines_metrics_alarming_together_are_one_incident() {
        // Probation 15 rows. Machine m1: metric a at rows 20 and 80, metric b at row 22
        // (two minutes after a's first); machine m2's metric at row 21. Row 80 of a is in
        // a window. Within five minutes: incidents {a20, b22}, {m2 21}, {a80}; the first
        // two are false, the last true. Row 5 is in probation: not counted.
        let files = [
            file("smd/m1_a.csv", &[5, 20, 80], vec![(75, 85)]),
            file("smd/m1_b.csv", &[22], vec![(75, 85)]),
            file("smd/m2_a.csv", &[21], vec![]),
        ];
        let t = count(&files, 300.0);
        assert_eq!(
            t[0],
            IncidentCount {
                name: "smd".into(),
                anomalies: 4,
                false_alarms: 3,
                incidents: 3,
                false_incidents: 2,
            }
        );
        assert_eq!(t[1].name, "total");
        assert_eq!(labels_of(&files[0]).get("server"), Some("smd/m1"));
    }
}
