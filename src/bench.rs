//! `homeostat bench` as a library call: the engine's throughput on one core over CSV
//! files, and the resident memory one series costs in steady state.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::backtest::{self, BacktestError, Row};
use crate::config::{DetectionConfig, Engine};
use crate::detect::{Detector, Transition};

/// Wall-clock time the throughput measurement runs at least.
const MIN_SECONDS: f64 = 2.0;
/// Passes over the corpus the throughput measurement makes at least.
const MIN_RUNS: u32 = 3;
/// Points each detector of the memory measurement is fed.
const WARM_POINTS: usize = 1_000;

/// What can go wrong benchmarking.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The data could not be read.
    #[error(transparent)]
    Read(#[from] BacktestError),
    /// The data directory holds no point to measure with.
    #[error("{dir}: no data")]
    NoData {
        /// The data directory.
        dir: PathBuf,
    },
}

/// What a benchmark measured; `Display` is the text `homeostat bench` prints before its
/// JSON line ([`BenchReport::summary`]).
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    /// The engine measured.
    pub engine: Engine,
    /// Files read.
    pub files: usize,
    /// Points in them (missing values left out).
    pub points: usize,
    /// Passes over all the points.
    pub runs: u32,
    /// Wall-clock seconds of those passes.
    pub seconds: f64,
    /// Anomalies opened over all passes (a check that the engine did work).
    pub opened: usize,
    /// Points per second on one core.
    pub points_per_sec: f64,
    /// Series created for the memory measurement.
    pub series: usize,
    /// Resident-set growth per series in steady state, in bytes; `None` where this
    /// system does not say its resident set.
    pub bytes_per_series: Option<f64>,
}

/// Measures the engine with `detection` over the `*.csv` files below `data`, then the
/// memory of `series` detectors in steady state.
pub fn measure(
    data: &Path,
    detection: &DetectionConfig,
    series: usize,
) -> Result<BenchReport, BenchError> {
    let files: Vec<Vec<Row>> = backtest::csv_files(data)?
        .iter()
        .map(|(_, p)| {
            // Missing values would only measure how fast they are skipped.
            backtest::read_series(p)
                .map(|s| s.rows.into_iter().filter(|r| r.value.is_finite()).collect())
        })
        .collect::<Result<_, _>>()?;
    let points: usize = files.iter().map(Vec::len).sum();
    if points == 0 {
        return Err(BenchError::NoData {
            dir: data.to_path_buf(),
        });
    }

    // Throughput: the whole corpus, one fresh detector per file, on this thread only,
    // repeated until enough time has passed.
    let started = std::time::Instant::now();
    let mut runs = 0u32;
    let mut opened = 0usize;
    while runs < MIN_RUNS || started.elapsed().as_secs_f64() < MIN_SECONDS {
        for rows in &files {
            let mut d = Detector::new(detection);
            for r in rows {
                opened += usize::from(d.step(r.t, r.value).transition == Transition::Opened);
            }
        }
        runs += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    let points_per_sec = points as f64 * f64::from(runs) / seconds;

    // Memory: many detectors in steady state, resident growth per series.
    let sample: Vec<&Row> = files.iter().flatten().take(WARM_POINTS).collect();
    let before = resident_bytes();
    let mut detectors: Vec<Detector> = (0..series).map(|_| Detector::new(detection)).collect();
    for d in detectors.iter_mut() {
        for r in &sample {
            d.step(r.t, r.value);
        }
    }
    let after = resident_bytes();
    let bytes_per_series = match (before, after) {
        (Some(b), Some(a)) if series > 0 => Some(a.saturating_sub(b) as f64 / series as f64),
        _ => None,
    };
    drop(detectors);

    Ok(BenchReport {
        engine: detection.engine,
        files: files.len(),
        points,
        runs,
        seconds,
        opened,
        points_per_sec,
        series,
        bytes_per_series,
    })
}

/// Resident memory of this process in bytes: `VmRSS` of `/proc/self/status` (Linux),
/// which states it in kB whatever the page size.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    vm_rss_bytes(&status)
}

/// The `VmRSS:   1234 kB` line of a `/proc/<pid>/status` text, in bytes.
fn vm_rss_bytes(status: &str) -> Option<u64> {
    let rest = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim();
    let kb: u64 = rest.strip_suffix("kB")?.trim().parse().ok()?;
    Some(kb * 1024)
}

impl BenchReport {
    /// The machine-readable summary: the last line `homeostat bench` prints.
    pub fn summary(&self) -> BenchSummary {
        BenchSummary {
            bytes_per_series: self.bytes_per_series,
            engine: self.engine,
            points: self.points,
            points_per_sec: self.points_per_sec,
            runs: self.runs,
        }
    }
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "engine: {:?}, {} files, {} points, {} runs in {:.2}s ({} anomalies opened)",
            self.engine, self.files, self.points, self.runs, self.seconds, self.opened
        )?;
        writeln!(
            f,
            "throughput: {:.2} M points/s on one core",
            self.points_per_sec / 1e6
        )?;
        match self.bytes_per_series {
            Some(b) => writeln!(
                f,
                "memory: {b:.0} bytes per series in steady state ({} series, resident-set growth)",
                self.series
            ),
            None => writeln!(f, "memory: unavailable (no VmRSS in /proc/self/status)"),
        }
    }
}

/// The benchmark's JSON line. Fields are in the line's key order, which has always been
/// alphabetical.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BenchSummary {
    /// Resident-set growth per series in steady state, in bytes (`null` if unknown).
    pub bytes_per_series: Option<f64>,
    /// The engine measured (`ensemble`, `robust`).
    pub engine: Engine,
    /// Points in the corpus.
    pub points: usize,
    /// Points per second on one core.
    pub points_per_sec: f64,
    /// Passes over the corpus.
    pub runs: u32,
}

impl fmt::Display for BenchSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Numbers and names only: serialising cannot fail.
        f.write_str(&serde_json::to_string(self).map_err(|_| fmt::Error)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_memory_is_read_in_kilobytes() {
        let status = "Name:\thomeostat\nVmHWM:\t    9000 kB\nVmRSS:\t    8192 kB\nThreads:\t1\n";
        assert_eq!(vm_rss_bytes(status), Some(8192 * 1024));
        assert_eq!(vm_rss_bytes("Name:\tkthreadd\n"), None);
    }

    #[test]
    fn this_process_has_a_resident_set() {
        if cfg!(target_os = "linux") {
            assert!(resident_bytes().is_some_and(|b| b > 0));
        }
    }

    #[test]
    fn the_summary_line_keeps_its_keys_and_their_order() {
        let report = BenchReport {
            engine: Engine::Ensemble,
            files: 1,
            points: 10,
            runs: 3,
            seconds: 2.0,
            opened: 0,
            points_per_sec: 15.0,
            series: 0,
            bytes_per_series: None,
        };
        assert_eq!(
            report.summary().to_string(),
            r#"{"bytes_per_series":null,"engine":"ensemble","points":10,"points_per_sec":15.0,"runs":3}"#
        );
        assert!(report
            .to_string()
            .ends_with("memory: unavailable (no VmRSS in /proc/self/status)\n"));
    }
}
