//! `homeostat backtest` as a library call: every file of a data directory through a
//! fresh engine, optionally written out (`--out`) and drawn (`--plot`), then scored
//! per NAB category; and the report it prints.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{nab, BacktestError, FileResult, GroupScore, DETECTION_THRESHOLD};
use crate::config::DetectionConfig;
use crate::progress::Progress;
use crate::report::{self, Problems};

/// Why the detection settings of a backtest or benchmark cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The config file is not valid.
    #[error(transparent)]
    Config(#[from] Problems),
    /// The config has no signal of that name.
    #[error("{}: no signal named {name:?}", .config.display())]
    NoSignal {
        /// The config file.
        config: PathBuf,
        /// The name asked for.
        name: String,
    },
}

/// The detection settings a backtest or benchmark runs with: the built-in defaults, a
/// config's `[detection]`, or one of its signals' resolved settings.
pub fn settings(
    config: Option<&Path>,
    signal: Option<&str>,
) -> Result<DetectionConfig, SettingsError> {
    let Some(path) = config else {
        return Ok(DetectionConfig::default());
    };
    let cfg = report::load_config(path)?;
    let Some(name) = signal else {
        return Ok(cfg.detection);
    };
    match cfg.signals.into_iter().find(|s| s.name == name) {
        Some(s) => Ok(s.detection),
        None => Err(SettingsError::NoSignal {
            config: path.to_path_buf(),
            name: name.to_string(),
        }),
    }
}

/// One data set: a directory of files and, optionally, their labels.
#[derive(Debug, Clone, Copy)]
pub struct DataSet<'a> {
    /// Directory of `<category>/<file>.csv` files (`timestamp,value`).
    pub data: &'a Path,
    /// NAB `combined_windows.json`: score the run for the three NAB profiles.
    pub labels: Option<&'a Path>,
}

impl DataSet<'_> {
    /// What the set is called in a backtest of several: its directory's name, or its
    /// parent's when that is `data` (NAB's layout: `nab-dev/data`).
    pub fn name(&self) -> String {
        let last = |p: &Path| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        match last(self.data).as_str() {
            "data" => self.data.parent().map(last).unwrap_or_default(),
            name => name.to_string(),
        }
    }
}

/// One backtest: where the data is and what to do with it.
#[derive(Debug, Clone, Copy)]
pub struct Backtest<'a> {
    /// The data sets, run one after the other and scored together (grouped by set and
    /// category when there are several).
    pub sets: &'a [DataSet<'a>],
    /// Write NAB-format results here, at each file's relative path.
    pub out: Option<&'a Path>,
    /// Write one PNG per file here.
    pub plot: Option<&'a Path>,
    /// The detection settings every file runs with.
    pub detection: &'a DetectionConfig,
    /// With labels, report where each window was detected and the false alarms.
    pub details: bool,
}

/// What a running backtest tells its caller, as it goes.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// A line about a file's lines that were not taken as written.
    Warning(&'a str),
    /// A file is done.
    FileDone(FileDone<'a>),
}

/// A file is done: the `done`-th of `total`.
#[derive(Debug, Clone, Copy)]
pub struct FileDone<'a> {
    /// Files done so far, this one included.
    pub done: usize,
    /// Files in the run.
    pub total: usize,
    /// The file's name relative to the data directory.
    pub name: &'a str,
    /// Rows it had.
    pub rows: usize,
}

impl Event<'_> {
    /// Shows the event on `progress`: a warning above the bar, a file done as a step.
    pub fn show(self, progress: &Progress) {
        match self {
            Event::Warning(line) => progress.note(line),
            Event::FileDone(file) => progress.step(file.done, file.total, file),
        }
    }
}

impl fmt::Display for FileDone<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} rows", self.name, self.rows)
    }
}

impl Backtest<'_> {
    /// Runs every file, telling `on` of warnings and each file done; a directory without
    /// `*.csv` files is [`BacktestError::NoFiles`].
    pub fn run(&self, mut on: impl FnMut(Event<'_>)) -> Result<BacktestReport, BacktestError> {
        let mut listed = Vec::with_capacity(self.sets.len());
        for set in self.sets {
            let labels = set.labels.map(super::read_labels).transpose()?;
            let files = super::csv_files(set.data)?;
            if files.is_empty() {
                return Err(BacktestError::NoFiles {
                    dir: set.data.to_path_buf(),
                });
            }
            let name = match self.sets.len() {
                1 => String::new(),
                _ => set.name(),
            };
            listed.push((name, labels, files));
        }
        let total = listed.iter().map(|(_, _, files)| files.len()).sum();
        let started = std::time::Instant::now();
        let mut results = Vec::with_capacity(total);
        let mut total_rows = 0;
        let mut skipped = 0;
        let mut done = 0;
        for (set, labels, files) in &listed {
            for (name, path) in files {
                done += 1;
                // A file that cannot be read as data, or whose labels do not fit it, is
                // skipped alone: the others are scored all the same.
                let read = super::read_series(path).and_then(|series| {
                    let windows = match labels.as_ref().and_then(|l| l.get(name)) {
                        Some(w) => Some(super::window_rows(&series.rows, w, path)?),
                        None => None,
                    };
                    Ok((series, windows))
                });
                let (series, windows) = match read {
                    Ok(read) => read,
                    Err(e) => {
                        skipped += 1;
                        on(Event::Warning(&format!("warning: {e}: file skipped")));
                        continue;
                    }
                };
                for line in warnings(path, &series.problems) {
                    on(Event::Warning(&line));
                }
                if let Some(order) = series.time_order() {
                    on(Event::Warning(&format!(
                        "warning: {}: {order}",
                        path.display()
                    )));
                }
                let rows = series.rows;
                let labelled = windows.is_some();
                let windows = windows.unwrap_or_default();
                let scored = super::run_series(&rows, self.detection);
                if let Some(out) = self.out {
                    let at = out.join(set).join(name);
                    super::write_results(&at, &rows, &scored, &windows)?;
                }
                if let Some(plot) = self.plot {
                    let png = plot.join(set).join(name).with_extension("png");
                    super::plot::write_png(&png, &rows, &scored, &windows)?;
                }
                total_rows += rows.len();
                on(Event::FileDone(FileDone {
                    done,
                    total,
                    name,
                    rows: rows.len(),
                }));
                let detections: Vec<bool> = scored
                    .anomaly_score
                    .iter()
                    .map(|s| *s >= DETECTION_THRESHOLD)
                    .collect();
                let opened_at = rows
                    .iter()
                    .zip(&detections)
                    .filter(|(_, d)| **d)
                    .map(|(r, _)| r.t)
                    .collect();
                let scored_days = match (rows.get(nab::probation(rows.len())), rows.last()) {
                    (Some(first), Some(last)) => (last.t - first.t) / 86_400.0,
                    _ => 0.0,
                };
                results.push(FileResult {
                    set: set.clone(),
                    name: name.clone(),
                    rows: rows.len(),
                    scored_days,
                    windows,
                    labelled,
                    detections,
                    opened_at,
                    evidence: scored.evidence,
                });
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        let detections = results.iter().map(FileResult::detection_count).sum();
        let labelled = listed.iter().any(|(_, labels, _)| labels.is_some());
        let scores = labelled.then(|| super::score_table(&results));
        Ok(BacktestReport {
            files: results,
            skipped,
            rows: total_rows,
            detections,
            seconds,
            scores,
            details: self.details,
        })
    }
}

/// The warning lines for a file's problems: the first few, then how many more (a broken
/// export should not flood the terminal).
fn warnings(path: &Path, problems: &[String]) -> Vec<String> {
    const SHOWN: usize = 3;
    let mut lines: Vec<String> = problems
        .iter()
        .take(SHOWN)
        .map(|p| format!("warning: {}: {p}", path.display()))
        .collect();
    match problems.len().saturating_sub(SHOWN) {
        0 => {}
        1 => lines.push(format!(
            "warning: {}: 1 more line like these",
            path.display()
        )),
        n => lines.push(format!(
            "warning: {}: {n} more lines like these",
            path.display()
        )),
    }
    lines
}

/// What a backtest found; `Display` is the text `homeostat backtest` prints before its
/// JSON line ([`BacktestReport::summary`]).
#[derive(Debug, Clone)]
pub struct BacktestReport {
    /// Each file's outcome, in name order.
    pub files: Vec<FileResult>,
    /// Files skipped: not data, or their labels do not fit them (each was warned of).
    pub skipped: usize,
    /// Rows over all files.
    pub rows: usize,
    /// Detections over all files.
    pub detections: usize,
    /// Wall-clock seconds of the run (reading, scoring, writing).
    pub seconds: f64,
    /// With labels, the score table, the `total` line last.
    pub scores: Option<Vec<GroupScore>>,
    /// Whether the text lists where each window was detected (`--details`).
    pub details: bool,
}

impl BacktestReport {
    /// The machine-readable summary: the last line `homeostat backtest` prints.
    pub fn summary(&self) -> BacktestSummary {
        let line = self
            .scores
            .as_ref()
            .map(|t| t.last().expect("the total line is always there"));
        let total = line.map(|l| l.scores);
        let nan_null = |v: f64| (!v.is_nan()).then_some(v);
        BacktestSummary {
            detections: self.detections,
            false_alarms: line.map(|l| l.false_alarms),
            false_alarms_per_1000_points: line.and_then(|l| nan_null(l.false_alarms_per_1000())),
            false_alarms_per_series_day: line.and_then(|l| nan_null(l.false_alarms_per_day())),
            reward_low_fn_rate: total.map(|s| s[2]),
            reward_low_fp_rate: total.map(|s| s[1]),
            rows: self.rows,
            seconds: self.seconds,
            standard: total.map(|s| s[0]),
            threshold: DETECTION_THRESHOLD,
        }
    }
}

impl fmt::Display for BacktestReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let skipped = match self.skipped {
            0 => String::new(),
            n => format!(" ({n} skipped)"),
        };
        writeln!(
            f,
            "{} files{skipped}, {} rows, {} detections, {:.2}s",
            self.files.len(),
            self.rows,
            self.detections,
            self.seconds
        )?;
        let Some(table) = &self.scores else {
            return Ok(());
        };
        if self.details {
            for line in super::details(&self.files) {
                writeln!(f, "{line}")?;
            }
        }
        writeln!(
            f,
            "{:<32} {:>5} {:>7} {:>10} {:>9} {:>19} {:>19} {:>12} {:>9} {:>8}",
            "category",
            "files",
            "windows",
            "detections",
            nab::PROFILES[0].name,
            nab::PROFILES[1].name,
            nab::PROFILES[2].name,
            "false alarms",
            "per 1k pts",
            "per day"
        )?;
        // A category without windows has no normalised score (NaN): its false alarms count in the total.
        for c in table {
            writeln!(
                f,
                "{:<32} {:>5} {:>7} {:>10} {:>9} {:>19} {:>19} {:>12} {:>9} {:>8}",
                c.name,
                c.files,
                c.windows,
                c.detections,
                show(c.scores[0], 2),
                show(c.scores[1], 2),
                show(c.scores[2], 2),
                c.false_alarms,
                show(c.false_alarms_per_1000(), 3),
                show(c.false_alarms_per_day(), 3),
            )?;
        }
        Ok(())
    }
}

/// `v` with `decimals`, or `n/a` for NaN (a figure without anything to count over).
pub(super) fn show(v: f64, decimals: usize) -> String {
    if v.is_nan() {
        "n/a".to_string()
    } else {
        format!("{v:.decimals$}")
    }
}

/// The backtest's JSON line. Fields are in the line's key order, which has always been
/// alphabetical; the scores are there only with labels (`null` where NaN).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BacktestSummary {
    /// Detections over all files.
    pub detections: usize,
    /// With labels, detections after probation outside every window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub false_alarms: Option<usize>,
    /// With labels, false alarms per 1,000 rows after probation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub false_alarms_per_1000_points: Option<f64>,
    /// With labels, false alarms per series-day after probation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub false_alarms_per_series_day: Option<f64>,
    /// Total score, profile `reward_low_FN_rate`.
    #[serde(rename = "reward_low_FN_rate", skip_serializing_if = "Option::is_none")]
    pub reward_low_fn_rate: Option<f64>,
    /// Total score, profile `reward_low_FP_rate`.
    #[serde(rename = "reward_low_FP_rate", skip_serializing_if = "Option::is_none")]
    pub reward_low_fp_rate: Option<f64>,
    /// Rows over all files.
    pub rows: usize,
    /// Wall-clock seconds of the run.
    pub seconds: f64,
    /// Total score, profile `standard`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub standard: Option<f64>,
    /// The `anomaly_score` at or above which a row is a detection.
    pub threshold: f64,
}

impl fmt::Display for BacktestSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Numbers and names only: serialising cannot fail.
        f.write_str(&serde_json::to_string(self).map_err(|_| fmt::Error)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_show_three_then_count_the_rest() {
        let p = Path::new("d/a.csv");
        let problems: Vec<String> = (1..=5).map(|i| format!("line {i}: bad")).collect();
        assert_eq!(
            warnings(p, &problems[..1]),
            ["warning: d/a.csv: line 1: bad"]
        );
        assert_eq!(
            warnings(p, &problems[..4])[3],
            "warning: d/a.csv: 1 more line like these"
        );
        let all = warnings(p, &problems);
        assert_eq!(all.len(), 4);
        assert_eq!(all[3], "warning: d/a.csv: 2 more lines like these");
    }

    #[test]
    fn the_summary_has_scores_only_with_labels() {
        let mut report = BacktestReport {
            files: Vec::new(),
            skipped: 0,
            rows: 10,
            detections: 1,
            seconds: 0.5,
            scores: None,
            details: false,
        };
        assert_eq!(
            report.summary().to_string(),
            r#"{"detections":1,"rows":10,"seconds":0.5,"threshold":0.5}"#
        );
        report.scores = Some(vec![GroupScore {
            name: "total".into(),
            files: 0,
            windows: 0,
            detections: 0,
            scores: [f64::NAN, 1.5, 2.0],
            false_alarms: 3,
            scored_rows: 2000,
            scored_days: 0.0,
        }]);
        assert_eq!(
            report.summary().to_string(),
            r#"{"detections":1,"false_alarms":3,"false_alarms_per_1000_points":1.5,"reward_low_FN_rate":2.0,"reward_low_FP_rate":1.5,"rows":10,"seconds":0.5,"standard":null,"threshold":0.5}"#
        );
        assert!(report.to_string().ends_with(
            "n/a                1.50                2.00            3     1.500      n/a\n"
        ));
    }
}
