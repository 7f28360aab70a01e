//! Backtests: the exact per-series engine `run` uses ([`Detector`]), driven point by
//! point over CSV files (`timestamp,value`, NAB's `<category>/<file>.csv` layout), and
//! scored the way the Numenta Anomaly Benchmark scores (see [`nab`]).
//!
//! A row is a *detection* when an anomaly opens at it: exactly the event that makes
//! the live agent act. Its `anomaly_score` is 1.0; other rows get `0.5 · min(score /
//! threshold, 1)`, below [`DETECTION_THRESHOLD`], so the column still shows how close
//! they came. Streaming: each row is scored before the detector learns from it, and no
//! detector ever sees a file's min, max or future.

pub mod nab;
pub mod plot;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::config::DetectionConfig;
use crate::detect::{Detector, Transition};

/// The `anomaly_score` at or above which a row is a detection.
pub const DETECTION_THRESHOLD: f64 = 0.5;

/// What can go wrong reading backtest input.
#[derive(Debug, thiserror::Error)]
pub enum BacktestError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file's content is not what it should be.
    #[error("{path}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line where it helps.
        reason: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BacktestError + '_ {
    move |source| BacktestError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One CSV row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The timestamp as written.
    pub timestamp: String,
    /// Unix seconds.
    pub t: f64,
    /// The value.
    pub value: f64,
}

/// Reads a `timestamp,value` CSV (header first; timestamps like `2014-04-01 00:00:00`).
pub fn read_series(path: &Path) -> Result<Vec<Row>, BacktestError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let bad = |line: usize, reason: String| BacktestError::Format {
        path: path.to_path_buf(),
        reason: format!("line {line}: {reason}"),
    };
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let (ts, v) = line
            .split_once(',')
            .ok_or_else(|| bad(i + 1, "expected `timestamp,value`".into()))?;
        let t = parse_time(ts).ok_or_else(|| bad(i + 1, format!("bad timestamp {ts:?}")))?;
        let value: f64 = v
            .trim()
            .parse()
            .map_err(|e| bad(i + 1, format!("bad value {v:?}: {e}")))?;
        rows.push(Row {
            timestamp: ts.trim().to_string(),
            t,
            value,
        });
    }
    Ok(rows)
}

/// Unix seconds of `YYYY-MM-DD HH:MM:SS[.ffffff]` (UTC).
pub fn parse_time(ts: &str) -> Option<f64> {
    let ts = ts.trim();
    let (whole, frac) = ts.split_once('.').unwrap_or((ts, ""));
    let t = humantime::parse_rfc3339_weak(whole).ok()?;
    let secs = t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs_f64();
    let frac: f64 = if frac.is_empty() {
        0.0
    } else {
        format!("0.{frac}").parse().ok()?
    };
    Some(secs + frac)
}

/// NAB's `combined_windows.json`: file → windows as `[start, end]` timestamps.
pub type Labels = BTreeMap<String, Vec<(String, String)>>;

/// Reads a labels file.
pub fn read_labels(path: &Path) -> Result<Labels, BacktestError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    serde_json::from_str(&text).map_err(|e| BacktestError::Format {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Turns timestamp windows into inclusive row ranges (timestamps must be row timestamps).
pub fn window_rows(
    rows: &[Row],
    windows: &[(String, String)],
    file: &Path,
) -> Result<Vec<(usize, usize)>, BacktestError> {
    let index = |ts: &str| {
        let t = parse_time(ts)?;
        rows.iter().position(|r| (r.t - t).abs() < 1e-3)
    };
    windows
        .iter()
        .map(|(a, b)| match (index(a), index(b)) {
            (Some(l), Some(r)) if l <= r => Ok((l, r)),
            _ => Err(BacktestError::Format {
                path: file.to_path_buf(),
                reason: format!("window [{a}, {b}] does not match row timestamps"),
            }),
        })
        .collect()
}

/// What the engine said about each row of one file.
#[derive(Debug, Clone, Default)]
pub struct Scored {
    /// NAB's `anomaly_score` per row.
    pub anomaly_score: Vec<f64>,
    /// Expected band per row (`NaN` while warming up).
    pub band: Vec<(f64, f64)>,
    /// The engine's own score per row (a likelihood in [0, 1] for the ensemble).
    pub score: Vec<f64>,
    /// The detector's threshold on [`Scored::score`].
    pub threshold: f64,
}

/// Runs a fresh engine over a series, point by point.
pub fn run_series(rows: &[Row], cfg: &DetectionConfig) -> Scored {
    let mut detector = Detector::new(cfg);
    let mut out = Scored {
        anomaly_score: Vec::with_capacity(rows.len()),
        band: Vec::with_capacity(rows.len()),
        score: Vec::with_capacity(rows.len()),
        threshold: cfg.threshold,
    };
    for r in rows {
        let step = detector.step(r.t, r.value);
        let s = if step.transition == Transition::Opened {
            1.0
        } else {
            DETECTION_THRESHOLD * (step.assessment.score / cfg.threshold).clamp(0.0, 0.999)
        };
        out.anomaly_score.push(s);
        out.band
            .push((step.assessment.lower, step.assessment.upper));
        out.score.push(step.assessment.score);
    }
    out
}

/// One file's outcome.
#[derive(Debug, Clone)]
pub struct FileResult {
    /// Path relative to the data directory, with `/` separators.
    pub name: String,
    /// Rows in the file.
    pub rows: usize,
    /// Labelled windows as row ranges (empty without labels).
    pub windows: Vec<(usize, usize)>,
    /// Whether the file has labels at all.
    pub labelled: bool,
    /// Detection per row.
    pub detections: Vec<bool>,
}

impl FileResult {
    /// NAB's category: the first path component.
    pub fn category(&self) -> &str {
        self.name.split('/').next().unwrap_or("")
    }
}

/// Every `*.csv` below `dir`, sorted, as (relative name, path).
pub fn csv_files(dir: &Path) -> Result<Vec<(String, PathBuf)>, BacktestError> {
    fn walk(
        dir: &Path,
        base: &Path,
        out: &mut Vec<(String, PathBuf)>,
    ) -> Result<(), BacktestError> {
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let path = entry.map_err(io(dir))?.path();
            if path.is_dir() {
                walk(&path, base, out)?;
            } else if path.extension().is_some_and(|e| e == "csv") {
                let rel = path.strip_prefix(base).unwrap_or(&path);
                let name = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                out.push((name, path));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort();
    Ok(out)
}

/// Writes NAB's result format: `timestamp,value,anomaly_score,label`.
pub fn write_results(
    path: &Path,
    rows: &[Row],
    scored: &Scored,
    windows: &[(usize, usize)],
) -> Result<(), BacktestError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(io(path))?);
    let mut body = String::from("timestamp,value,anomaly_score,label\n");
    for (i, r) in rows.iter().enumerate() {
        let label = u8::from(windows.iter().any(|&(l, h)| l <= i && i <= h));
        body.push_str(&format!(
            "{},{},{},{label}\n",
            r.timestamp, r.value, scored.anomaly_score[i]
        ));
    }
    f.write_all(body.as_bytes()).map_err(io(path))?;
    f.flush().map_err(io(path))
}

/// Scores per category and in total: `(name, files, windows, [score per profile])`.
pub fn score_table(results: &[FileResult]) -> Vec<(String, usize, usize, [f64; 3])> {
    let mut groups: BTreeMap<String, Vec<&FileResult>> = BTreeMap::new();
    for r in results.iter().filter(|r| r.labelled) {
        groups.entry(r.category().to_string()).or_default().push(r);
    }
    let all: Vec<&FileResult> = results.iter().filter(|r| r.labelled).collect();
    let row = |name: String, files: &[&FileResult]| {
        let windows: usize = files.iter().map(|f| f.windows.len()).sum();
        let mut scores = [0.0; 3];
        for (k, p) in nab::PROFILES.iter().enumerate() {
            let raw: f64 = files
                .iter()
                .map(|f| nab::score_file(&f.detections, &f.windows, p))
                .sum();
            scores[k] = nab::normalise(raw, windows, p);
        }
        (name, files.len(), windows, scores)
    };
    let mut table: Vec<_> = groups
        .iter()
        .map(|(c, files)| row(c.clone(), files))
        .collect();
    table.push(row("total".to_string(), &all));
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_with_and_without_fractions() {
        assert_eq!(parse_time("1970-01-01 00:01:00"), Some(60.0));
        assert_eq!(parse_time("1970-01-01 00:01:00.500000"), Some(60.5));
        assert_eq!(parse_time("yesterday"), None);
    }

    #[test]
    fn windows_map_to_rows() {
        let rows: Vec<Row> = (0..5)
            .map(|i| Row {
                timestamp: String::new(),
                t: 60.0 * i as f64,
                value: 0.0,
            })
            .collect();
        let w = vec![(
            "1970-01-01 00:01:00.000000".to_string(),
            "1970-01-01 00:03:00.000000".to_string(),
        )];
        assert_eq!(
            window_rows(&rows, &w, Path::new("x")).unwrap(),
            vec![(1, 3)]
        );
        let off = vec![(
            "1970-01-01 00:01:30".to_string(),
            "1970-01-01 00:03:00".to_string(),
        )];
        assert!(window_rows(&rows, &off, Path::new("x")).is_err());
    }

    #[test]
    fn a_spike_is_one_detection_at_the_row_it_opens() {
        let cfg = DetectionConfig {
            open_after: 1,
            ..DetectionConfig::default()
        };
        // The ensemble judges once its tail model has seen enough peaks: ~600 points (of
        // five minutes: its memories are in time).
        let rows: Vec<Row> = (0..1000)
            .map(|i| Row {
                timestamp: String::new(),
                t: i as f64 * 300.0,
                value: if (800..810).contains(&i) {
                    50.0
                } else {
                    10.0 + ((i * 7) % 5) as f64 * 0.1
                },
            })
            .collect();
        let s = run_series(&rows, &cfg);
        let detections: Vec<usize> = (0..1000)
            .filter(|&i| s.anomaly_score[i] >= DETECTION_THRESHOLD)
            .collect();
        assert_eq!(detections, vec![800]);
    }
}
