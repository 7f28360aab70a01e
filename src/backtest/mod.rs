//! Backtests: the exact per-series engine `run` uses ([`Detector`]), driven point by
//! point over CSV files (`timestamp,value`, NAB's `<category>/<file>.csv` layout), and
//! scored the way the Numenta Anomaly Benchmark scores (see [`nab`]).
//!
//! A row is a *detection* when an anomaly opens at it: exactly the event that makes
//! the live agent act. Its `anomaly_score` is 1.0; other rows get `0.5 · min(score /
//! threshold, 1)`, below [`DETECTION_THRESHOLD`], so the column still shows how close
//! they came. Streaming: each row is scored before the detector learns from it, and no
//! detector ever sees a file's min, max or future.

pub mod cv;
pub mod incidents;
pub mod nab;
pub mod plot;
pub mod report;

pub use report::{
    settings, Backtest, BacktestReport, BacktestSummary, DataSet, Event, FileDone, SettingsError,
};

use std::collections::BTreeMap;
use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};

use crate::config::DetectionConfig;
use crate::detect::{Detector, Evidence, Transition};

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
    /// The data directory holds no `*.csv` file.
    #[error("{dir}: no *.csv files")]
    NoFiles {
        /// The data directory.
        dir: PathBuf,
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
    /// The value (NaN where the file has none, or one that is not a number: missing data).
    pub value: f64,
}

/// A file's rows, and what was wrong with the lines that were skipped or taken as
/// missing (`line N: ...`).
#[derive(Debug, Clone, Default)]
pub struct Series {
    /// The rows, in file order.
    pub rows: Vec<Row>,
    /// One entry per line that was not taken as written.
    pub problems: Vec<String>,
    /// Rows skipped because their time is before an earlier row's.
    pub out_of_order: usize,
    /// Rows kept although their time equals the previous row's.
    pub duplicates: usize,
}

impl Series {
    /// The one warning about the file's time order, if there is anything to say.
    pub fn time_order(&self) -> Option<String> {
        let rows = |n: usize| format!("{n} row{}", if n == 1 { "" } else { "s" });
        let skipped = (self.out_of_order > 0)
            .then(|| format!("{} out of time order, skipped", rows(self.out_of_order)));
        let kept = (self.duplicates > 0).then(|| {
            format!(
                "{} at the same time as the row before, kept",
                rows(self.duplicates)
            )
        });
        match (skipped, kept) {
            (Some(a), Some(b)) => Some(format!("{a}; {b}")),
            (a, b) => a.or(b),
        }
    }
}

/// The longest line a data file may have. NAB's are under 40 bytes; a longer one means
/// the file is not a `timestamp,value` CSV (a binary file, a JSON export...), and
/// reading it as lines would hold all of it in memory at once.
pub const MAX_LINE: usize = 4096;

/// Reads a `timestamp,value` CSV (a header line first, if any; timestamps like
/// `2014-04-01 00:00:00`, or Unix seconds), a line at a time. A bad line does not lose
/// the file: a value that is empty or not a finite number is kept as missing (NaN:
/// never an anomaly), and a line without a readable timestamp is skipped; each is
/// listed in `problems`. Time never goes backwards, as in the live agent: a row before
/// an earlier one is skipped, one at the same time as the row before is kept (NAB's
/// own files have a few, and NAB scores every row); both are counted. A file that is
/// not text (not UTF-8, a NUL byte, a line over [`MAX_LINE`] bytes) is an error, as
/// is one that cannot be read: the caller skips it.
pub fn read_series(path: &Path) -> Result<Series, BacktestError> {
    // Opening a named pipe would wait for a writer; a device may never end.
    if !std::fs::metadata(path).map_err(io(path))?.is_file() {
        return Err(BacktestError::Format {
            path: path.to_path_buf(),
            reason: "not a regular file".into(),
        });
    }
    let file = std::fs::File::open(path).map_err(io(path))?;
    read_lines(std::io::BufReader::new(file), path)
}

/// [`read_series`] over any input; `path` is used in errors.
pub fn read_lines(mut input: impl std::io::BufRead, path: &Path) -> Result<Series, BacktestError> {
    let not_text = |n: usize, why: String| BacktestError::Format {
        path: path.to_path_buf(),
        reason: format!("line {n}: {why}: not a timestamp,value CSV"),
    };
    let mut series = Series::default();
    let mut first = true;
    let mut last_t = f64::NEG_INFINITY;
    let mut bytes = Vec::with_capacity(64);
    for n in 1.. {
        bytes.clear();
        // A line may have MAX_LINE bytes and "\r\n": one more byte says it is too long.
        let read = std::io::Read::take(&mut input, MAX_LINE as u64 + 3)
            .read_until(b'\n', &mut bytes)
            .map_err(io(path))?;
        if read == 0 {
            break;
        }
        // As `str::lines`: "\n" or "\r\n" ends a line, the last one may have neither.
        let line = match bytes.strip_suffix(b"\n") {
            Some(l) => l.strip_suffix(b"\r").unwrap_or(l),
            None => &bytes[..],
        };
        if line.len() > MAX_LINE {
            return Err(not_text(n, format!("longer than {MAX_LINE} bytes")));
        }
        if line.contains(&0) {
            return Err(not_text(n, "a NUL byte".into()));
        }
        let line = std::str::from_utf8(line)
            .map_err(|e| not_text(n, format!("not UTF-8 at byte {}", e.valid_up_to() + 1)))?;
        // A byte-order mark (spreadsheet exports) is not part of the first field.
        let line = match n {
            1 => line.strip_prefix('\u{feff}').unwrap_or(line),
            _ => line,
        };
        if line.trim().is_empty() {
            continue;
        }
        let header_may_be_here = std::mem::replace(&mut first, false);
        let parsed = match line.split_once(',') {
            None => Err(format!("line {n}: expected `timestamp,value`, skipped")),
            Some((ts, v)) => parse_time(ts)
                .map(|t| (ts, t, v))
                .ok_or_else(|| format!("line {n}: bad timestamp {ts:?}, skipped")),
        };
        let (ts, t, v) = match parsed {
            Ok(row) => row,
            Err(problem) => {
                // The first line is a header unless it reads as data.
                if !header_may_be_here {
                    series.problems.push(problem);
                }
                continue;
            }
        };
        if t < last_t {
            series.out_of_order += 1;
            continue;
        }
        if t == last_t {
            series.duplicates += 1;
        }
        last_t = t;
        let value = match v.trim().parse::<f64>() {
            Ok(x) if x.is_finite() => x,
            _ => {
                let problem = format!("line {n}: {v:?} is not a finite number, taken as missing");
                series.problems.push(problem);
                f64::NAN
            }
        };
        series.rows.push(Row {
            timestamp: ts.trim().to_string(),
            t,
            value,
        });
    }
    Ok(series)
}

/// Unix seconds of `YYYY-MM-DD HH:MM:SS[.ffffff]` (UTC; a `T` and a `Z` may be written)
/// or of a plain number: Unix seconds, or milliseconds when it is too large for seconds.
pub fn parse_time(ts: &str) -> Option<f64> {
    /// Seconds beyond the year 5000: surely milliseconds.
    const MILLIS_FROM: f64 = 1e11;
    let ts = ts.trim();
    if let Ok(n) = ts.parse::<f64>() {
        let secs = if n.abs() >= MILLIS_FROM { n / 1e3 } else { n };
        return secs.is_finite().then_some(secs);
    }
    let t = humantime::parse_rfc3339_weak(ts).ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs_f64())
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

/// Turns timestamp windows into inclusive row ranges: the rows whose timestamps lie in
/// the window, as NAB labels them (its own windows start and end on rows; others need
/// not). A window that is unreadable, holds no row, or spans rows out of time order is
/// an error.
pub fn window_rows(
    rows: &[Row],
    windows: &[(String, String)],
    file: &Path,
) -> Result<Vec<(usize, usize)>, BacktestError> {
    // A thousandth of a second either way: written timestamps round.
    const SLACK: f64 = 1e-3;
    windows
        .iter()
        .map(|(a, b)| {
            let inside = match (parse_time(a), parse_time(b)) {
                (Some(start), Some(end)) => {
                    let within = |r: &Row| start - SLACK <= r.t && r.t <= end + SLACK;
                    rows.iter()
                        .position(within)
                        .zip(rows.iter().rposition(within))
                }
                _ => None,
            };
            let bad = |why: &str| BacktestError::Format {
                path: file.to_path_buf(),
                reason: format!("window [{a}, {b}] {why}"),
            };
            match inside {
                None => Err(bad("holds no row of the file")),
                // A range of rows is the window only if the rows are in time order.
                Some((l, r)) if !rows[l..=r].windows(2).all(|p| p[0].t <= p[1].t) => {
                    Err(bad("spans rows that are not in time order"))
                }
                Some(range) => Ok(range),
            }
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
    /// Per row, what scored highest and whether against the daily profile.
    pub evidence: Vec<(Evidence, bool)>,
}

/// Runs a fresh engine over a series, point by point.
pub fn run_series(rows: &[Row], cfg: &DetectionConfig) -> Scored {
    let mut detector = Detector::new(cfg);
    let mut out = Scored {
        anomaly_score: Vec::with_capacity(rows.len()),
        band: Vec::with_capacity(rows.len()),
        score: Vec::with_capacity(rows.len()),
        threshold: cfg.threshold,
        evidence: Vec::with_capacity(rows.len()),
    };
    for r in rows {
        // A missing value (NaN) is no evidence either way, as live: `Detector::step`.
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
        out.evidence
            .push((step.assessment.evidence, step.assessment.seasonal));
    }
    out
}

/// One file's outcome.
#[derive(Debug, Clone)]
pub struct FileResult {
    /// The data set it belongs to (empty when the backtest has one).
    pub set: String,
    /// Path relative to the data directory, with `/` separators.
    pub name: String,
    /// Rows in the file.
    pub rows: usize,
    /// Days from the first row after probation to the last row: the series-days its
    /// false alarms are counted over.
    pub scored_days: f64,
    /// Labelled windows as row ranges (empty without labels).
    pub windows: Vec<(usize, usize)>,
    /// Whether the file has labels at all.
    pub labelled: bool,
    /// Detection per row.
    pub detections: Vec<bool>,
    /// The Unix time of each detection, in row order.
    pub opened_at: Vec<f64>,
    /// Per row, what scored highest and whether against the daily profile.
    pub evidence: Vec<(Evidence, bool)>,
}

/// What `--details` prints: per labelled file, each window's first detection as a
/// fraction of the window (0 = its first row, the best) or MISS, and the false alarms,
/// each with what opened it; then both counted by evidence over all files. Which kind of
/// evidence raises the false alarms is where tuning starts.
pub fn details(results: &[FileResult]) -> Vec<String> {
    let why = |r: &FileResult, row: usize| match r.evidence.get(row) {
        Some((e, true)) => format!("daily {e}"),
        Some((e, false)) => e.to_string(),
        None => "?".to_string(),
    };
    let mut found: BTreeMap<String, usize> = BTreeMap::new();
    let mut false_alarms: BTreeMap<String, usize> = BTreeMap::new();
    let mut lines = Vec::new();
    for r in results.iter().filter(|r| r.labelled) {
        let d = nab::file_detail(&r.detections, &r.windows);
        let hits: Vec<String> = d
            .first_hit
            .iter()
            .zip(&r.windows)
            .map(|(hit, &(first, last))| match hit {
                Some(off) => {
                    let e = why(r, first + off);
                    let at = format!("{:.2} {e}", *off as f64 / (last - first + 1) as f64);
                    *found.entry(e).or_default() += 1;
                    at
                }
                None if !nab::scored_window((first, last), r.rows) => "probation".to_string(),
                None => "MISS".to_string(),
            })
            .collect();
        let mut by: BTreeMap<String, usize> = BTreeMap::new();
        for &row in &d.false_positives {
            *by.entry(why(r, row)).or_default() += 1;
        }
        for (e, n) in &by {
            *false_alarms.entry(e.clone()).or_default() += n;
        }
        lines.push(format!(
            "  {:<52} windows [{}] false alarms {}{}",
            if r.set.is_empty() {
                r.name.clone()
            } else {
                format!("{}/{}", r.set, r.name)
            },
            hits.join(", "),
            d.false_positives.len(),
            counted(&by, " (", ")"),
        ));
    }
    lines.push(format!(
        "  windows first detected by {}",
        counted(&found, "", "")
    ));
    lines.push(format!(
        "  false alarms opened by {}",
        counted(&false_alarms, "", "")
    ));
    lines
}

/// `level 3, jump 1`, most first, between `open` and `close`; nothing when empty.
fn counted(by: &BTreeMap<String, usize>, open: &str, close: &str) -> String {
    if by.is_empty() {
        return String::new();
    }
    let mut v: Vec<_> = by.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let parts: Vec<String> = v.iter().map(|(e, n)| format!("{e} {n}")).collect();
    format!("{open}{}{close}", parts.join(", "))
}

impl FileResult {
    /// NAB's category: the first path component.
    pub fn category(&self) -> &str {
        self.name.split('/').next().unwrap_or("")
    }

    /// The category, after its data set's name when the backtest has several
    /// (`ops-dev/smd`): what the score table and cross-validation group by.
    pub fn group(&self) -> String {
        if self.set.is_empty() {
            self.category().to_string()
        } else {
            format!("{}/{}", self.set, self.category())
        }
    }

    /// Rows NAB scores: those after probation.
    pub fn scored_rows(&self) -> usize {
        self.rows - nab::probation(self.rows).min(self.rows)
    }

    /// Detections after probation outside every window, as NAB counts false positives.
    pub fn false_alarms(&self) -> usize {
        nab::file_detail(&self.detections, &self.windows)
            .false_positives
            .len()
    }

    /// Rows detected as anomalous.
    pub fn detection_count(&self) -> usize {
        self.detections.iter().filter(|d| **d).count()
    }

    /// Its windows that NAB scores: those not wholly inside probation.
    pub fn scored_windows(&self) -> usize {
        self.windows
            .iter()
            .filter(|w| nab::scored_window(**w, self.rows))
            .count()
    }
}

/// Every `*.csv` below `dir`, sorted, as (relative name, path). Directories linked
/// more than once (a link to a parent, say) are walked once.
pub fn csv_files(dir: &Path) -> Result<Vec<(String, PathBuf)>, BacktestError> {
    fn walk(
        dir: &Path,
        base: &Path,
        seen: &mut std::collections::HashSet<PathBuf>,
        out: &mut Vec<(String, PathBuf)>,
    ) -> Result<(), BacktestError> {
        if !seen.insert(std::fs::canonicalize(dir).map_err(io(dir))?) {
            return Ok(());
        }
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let path = entry.map_err(io(dir))?.path();
            if path.is_dir() {
                walk(&path, base, seen, out)?;
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
    walk(dir, dir, &mut Default::default(), &mut out)?;
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

/// One group's figures: NAB's scores and the false alarms.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupScore {
    /// The group ([`FileResult::group`]), or `total`.
    pub name: String,
    /// Labelled files in it.
    pub files: usize,
    /// Label windows in them.
    pub windows: usize,
    /// Detections in them.
    pub detections: usize,
    /// Normalised score per profile of [`nab::PROFILES`] (NaN without windows).
    pub scores: [f64; 3],
    /// Detections after probation outside every window.
    pub false_alarms: usize,
    /// Rows after probation.
    pub scored_rows: usize,
    /// Series-days after probation.
    pub scored_days: f64,
}

impl GroupScore {
    /// The figures of labelled `files` scored together.
    pub fn of(name: String, files: &[&FileResult]) -> Self {
        let windows: usize = files.iter().map(|f| f.windows.len()).sum();
        let scored: usize = files.iter().map(|f| f.scored_windows()).sum();
        let mut scores = [0.0; 3];
        for (k, p) in nab::PROFILES.iter().enumerate() {
            let raw: f64 = files
                .iter()
                .map(|f| nab::score_file(&f.detections, &f.windows, p))
                .sum();
            scores[k] = nab::normalise(raw, scored, windows, p);
        }
        GroupScore {
            name,
            files: files.len(),
            windows,
            detections: files.iter().map(|f| f.detection_count()).sum(),
            scores,
            false_alarms: files.iter().map(|f| f.false_alarms()).sum(),
            scored_rows: files.iter().map(|f| f.scored_rows()).sum(),
            scored_days: files.iter().map(|f| f.scored_days).sum(),
        }
    }

    /// False alarms per 1,000 scored rows (NaN without any).
    pub fn false_alarms_per_1000(&self) -> f64 {
        per(self.false_alarms, self.scored_rows as f64 / 1000.0)
    }

    /// False alarms per series-day (NaN without any).
    pub fn false_alarms_per_day(&self) -> f64 {
        per(self.false_alarms, self.scored_days)
    }
}

/// `n` over `of`, NaN when there is nothing to count over.
fn per(n: usize, of: f64) -> f64 {
    if of > 0.0 {
        n as f64 / of
    } else {
        f64::NAN
    }
}

/// The figures per group ([`FileResult::group`]) of labelled files, and the `total`
/// line last.
pub fn score_table(results: &[FileResult]) -> Vec<GroupScore> {
    let mut groups: BTreeMap<String, Vec<&FileResult>> = BTreeMap::new();
    for r in results.iter().filter(|r| r.labelled) {
        groups.entry(r.group()).or_default().push(r);
    }
    let all: Vec<&FileResult> = results.iter().filter(|r| r.labelled).collect();
    let mut table: Vec<_> = groups
        .into_iter()
        .map(|(c, files)| GroupScore::of(c, &files))
        .collect();
    table.push(GroupScore::of("total".to_string(), &all));
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_name_what_opened_each_detection() {
        // 40 rows, probation 6: a window at 20..=29 first detected at row 25 (halfway),
        // a missed one at 32..=35, false alarms at rows 10 and 15 and 38.
        let mut evidence = vec![(Evidence::Level, false); 40];
        evidence[25] = (Evidence::Jump, true);
        evidence[15] = (Evidence::Drift, false);
        let r = FileResult {
            set: String::new(),
            name: "cat/a.csv".into(),
            rows: 40,
            scored_days: 1.0,
            windows: vec![(20, 29), (32, 35)],
            labelled: true,
            detections: (0..40).map(|i| [10, 15, 25, 27, 38].contains(&i)).collect(),
            opened_at: Vec::new(),
            evidence,
        };
        let lines = details(&[r]);
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(
            lines[0].ends_with("windows [0.50 daily jump, MISS] false alarms 3 (level 2, drift 1)"),
            "{lines:?}"
        );
        assert_eq!(lines[1], "  windows first detected by daily jump 1");
        assert_eq!(lines[2], "  false alarms opened by level 2, drift 1");
    }

    #[test]
    fn times_parse_with_and_without_fractions() {
        assert_eq!(parse_time("1970-01-01 00:01:00"), Some(60.0));
        assert_eq!(parse_time("1970-01-01 00:01:00.500000"), Some(60.5));
        assert_eq!(parse_time("1970-01-01T00:01:00.25Z"), Some(60.25));
        assert_eq!(parse_time(" 1396310400 "), Some(1_396_310_400.0));
        assert_eq!(parse_time("1396310400500"), Some(1_396_310_400.5));
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(parse_time("NaN"), None);
    }

    #[test]
    fn a_bad_line_is_reported_and_loses_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.csv");
        let text = "timestamp,value\n\
                    2024-01-01 00:00:00,1\n\
                    2024-01-01 00:05:00,abc\n\
                    2024-01-01 00:10:00,\n\
                    2024-01-01 00:15:00,NaN\n\
                    not-a-time,3\n\
                    no comma here\n\
                    2024-01-01 00:20:00,2.5\n";
        std::fs::write(&path, text).unwrap();
        let s = read_series(&path).unwrap();
        let values: Vec<String> = s.rows.iter().map(|r| r.value.to_string()).collect();
        assert_eq!(values, ["1", "NaN", "NaN", "NaN", "2.5"]);
        assert_eq!(s.rows[4].t - s.rows[0].t, 1200.0);
        let lines: Vec<&str> = s.problems.iter().map(|p| &p[..7]).collect();
        assert_eq!(
            lines,
            ["line 3:", "line 4:", "line 5:", "line 6:", "line 7:"]
        );
        assert!(s.problems[3].contains("skipped"), "{:?}", s.problems);
        // Without a header, the first line is data; a header may come after blank
        // lines and a byte-order mark.
        std::fs::write(&path, "1396310400,4\n1396310700,5\n").unwrap();
        let s = read_series(&path).unwrap();
        assert_eq!((s.rows.len(), s.problems.len()), (2, 0));
        std::fs::write(&path, "\u{feff}\n\ntimestamp,value\n1396310400,4\n").unwrap();
        let s = read_series(&path).unwrap();
        assert_eq!((s.rows.len(), s.problems.len()), (1, 0), "{:?}", s.problems);
        std::fs::write(&path, "\u{feff}1396310400,4\n").unwrap();
        assert_eq!(read_series(&path).unwrap().rows.len(), 1);
    }

    #[test]
    fn time_never_goes_backwards() {
        let text = "timestamp,value\n\
                    1970-01-01 00:00:00,1\n\
                    1970-01-01 00:05:00,2\n\
                    1970-01-01 00:05:00,3\n\
                    1970-01-01 00:01:40,4\n\
                    1970-01-01 00:10:00,5\n\
                    1970-01-01 00:09:10,6\n\
                    1970-01-01 00:15:00,7\n";
        let s = read_lines(text.as_bytes(), Path::new("x")).unwrap();
        let t: Vec<f64> = s.rows.iter().map(|r| r.t).collect();
        assert_eq!(t, [0.0, 300.0, 300.0, 600.0, 900.0]);
        assert_eq!((s.out_of_order, s.duplicates), (2, 1));
        assert_eq!(
            s.time_order().unwrap(),
            "2 rows out of time order, skipped; 1 row at the same time as the row before, kept"
        );
        assert!(s.problems.is_empty(), "{:?}", s.problems);
        let s = read_lines("1,1\n2,2\n".as_bytes(), Path::new("x")).unwrap();
        assert_eq!(s.time_order(), None);
    }

    #[test]
    fn a_file_that_is_not_text_is_an_error_naming_its_line() {
        let reason = |bytes: &[u8]| match read_lines(bytes, Path::new("x")) {
            Err(BacktestError::Format { reason, .. }) => reason,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            reason(b"timestamp,value\n1,1\n2,\0\n"),
            "line 3: a NUL byte: not a timestamp,value CSV"
        );
        assert_eq!(
            reason(b"timestamp,value\n1,caf\xe9\n"),
            "line 2: not UTF-8 at byte 6: not a timestamp,value CSV"
        );
        let long = format!("1,1\n{}", "9".repeat(MAX_LINE + 1));
        assert_eq!(
            reason(long.as_bytes()),
            "line 2: longer than 4096 bytes: not a timestamp,value CSV"
        );
        let long = format!("1,1\n{}\n", "9".repeat(MAX_LINE + 1));
        assert_eq!(
            reason(long.as_bytes()),
            "line 2: longer than 4096 bytes: not a timestamp,value CSV"
        );
        // At the bound, a line is only a bad line; so is a long one ending the file.
        let at_bound = format!(
            "1,1\n{}\n{}\r\n2,2",
            "x".repeat(MAX_LINE),
            "y".repeat(MAX_LINE)
        );
        let s = read_lines(at_bound.as_bytes(), Path::new("x")).unwrap();
        assert_eq!((s.rows.len(), s.problems.len()), (2, 2));
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            read_series(dir.path()),
            Err(BacktestError::Format { reason, .. }) if reason == "not a regular file"
        ));
        assert!(matches!(
            read_series(&dir.path().join("missing.csv")),
            Err(BacktestError::Io { .. })
        ));
    }

    /// What `read_series` did before it streamed: the whole file, then its lines.
    fn read_whole(text: &str) -> (Vec<Row>, Vec<String>) {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let (mut rows, mut problems, mut first) = (Vec::new(), Vec::new(), true);
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let header_may_be_here = std::mem::replace(&mut first, false);
            let n = i + 1;
            let parsed = match line.split_once(',') {
                None => Err(format!("line {n}: expected `timestamp,value`, skipped")),
                Some((ts, v)) => parse_time(ts)
                    .map(|t| (ts, t, v))
                    .ok_or_else(|| format!("line {n}: bad timestamp {ts:?}, skipped")),
            };
            let (ts, t, v) = match parsed {
                Ok(row) => row,
                Err(p) => {
                    if !header_may_be_here {
                        problems.push(p);
                    }
                    continue;
                }
            };
            let value = match v.trim().parse::<f64>() {
                Ok(x) if x.is_finite() => x,
                _ => {
                    problems.push(format!(
                        "line {n}: {v:?} is not a finite number, taken as missing"
                    ));
                    f64::NAN
                }
            };
            rows.push(Row {
                timestamp: ts.trim().to_string(),
                t,
                value,
            });
        }
        (rows, problems)
    }

    /// A line of a CSV as exports write them, well or badly.
    fn csv_line() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let time = prop_oneof![
            (0u32..3000).prop_map(|m| format!("2024-01-01 {:02}:{:02}:00", m / 60 % 24, m % 60)),
            (1_396_310_400u64..1_396_400_000).prop_map(|s| s.to_string()),
            "[ -~]{0,12}",
        ];
        let value = prop_oneof![
            any::<f64>().prop_map(|v| v.to_string()),
            (-100i32..100).prop_map(|v| v.to_string()),
            "[ -~]{0,8}",
        ];
        prop_oneof![
            4 => (time, value).prop_map(|(t, v)| format!("{t},{v}")),
            1 => Just("timestamp,value".to_string()),
            1 => Just(String::new()),
            1 => "\\PC{0,30}",
        ]
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_read_without_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3000)) {
            let _ = read_lines(&bytes[..], Path::new("x"));
        }

        #[test]
        fn text_in_time_order_reads_as_the_whole_file_did(
            lines in proptest::collection::vec(csv_line(), 0..40),
            crlf in proptest::prelude::any::<bool>(),
            bom in proptest::prelude::any::<bool>(),
            final_newline in proptest::prelude::any::<bool>(),
        ) {
            let end = if crlf { "\r\n" } else { "\n" };
            let mut text = format!("{}{}", if bom { "\u{feff}" } else { "" }, lines.join(end));
            if final_newline {
                text.push_str(end);
            }
            let (rows, problems) = read_whole(&text);
            let s = read_lines(text.as_bytes(), Path::new("x")).unwrap();
            if rows.windows(2).all(|w| w[0].t <= w[1].t) {
                proptest::prop_assert_eq!(format!("{:?}", s.rows), format!("{rows:?}"));
                proptest::prop_assert_eq!(s.problems, problems);
            } else {
                proptest::prop_assert!(s.out_of_order > 0);
            }
        }
    }

    #[test]
    fn missing_values_are_never_anomalies() {
        // The spike of `a_spike_is_one_detection_at_the_row_it_opens`, with missing values
        // scattered before it: they are never anomalies, and the spike still is one.
        let rows: Vec<Row> = (0..1000)
            .map(|i| Row {
                timestamp: String::new(),
                t: i as f64 * 300.0,
                value: match i {
                    _ if i % 97 == 5 => f64::NAN,
                    800..810 => 50.0,
                    _ => 10.0 + ((i * 7) % 5) as f64 * 0.1,
                },
            })
            .collect();
        let s = run_series(&rows, &DetectionConfig::default());
        for i in (0..rows.len()).filter(|&i| rows[i].value.is_nan()) {
            assert_eq!((s.anomaly_score[i], s.score[i]), (0.0, 0.0), "row {i}");
            assert!(s.band[i].0.is_nan(), "row {i}");
        }
        let detections: Vec<usize> = (0..1000)
            .filter(|&i| s.anomaly_score[i] >= DETECTION_THRESHOLD)
            .collect();
        assert_eq!(detections, vec![800]);
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
        // Boundaries between rows take the rows inside.
        let off = vec![(
            "1970-01-01 00:01:30".to_string(),
            "1970-01-01 00:03:10".to_string(),
        )];
        assert_eq!(
            window_rows(&rows, &off, Path::new("x")).unwrap(),
            vec![(2, 3)]
        );
        for empty in [
            ("00:01:10", "00:01:50"),
            ("00:09:00", "00:10:00"),
            ("x", "00:01:00"),
        ] {
            let w = vec![(
                format!("1970-01-01 {}", empty.0),
                format!("1970-01-01 {}", empty.1),
            )];
            assert!(window_rows(&rows, &w, Path::new("x")).is_err(), "{empty:?}");
        }
        let mut shuffled = rows.clone();
        shuffled.swap(2, 4);
        assert!(window_rows(&shuffled, &w, Path::new("x")).is_err());
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
