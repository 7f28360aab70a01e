//! Command-line definitions of every subcommand. No I/O here.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// homeostat: anomaly detection and audited self-healing for Prometheus-monitored clouds.
#[derive(Debug, Parser)]
#[command(name = "homeostat", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a config file and the playbooks it names; list every problem.
    Check {
        /// The config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the daemon: watch signals, flag anomalies, plan remediations, audit everything.
    Run {
        /// The config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// List, and test offline, the playbooks.
    Playbook {
        /// What to do.
        #[command(subcommand)]
        command: PlaybookCommand,
    },
    /// Fit every signal's baselines from Prometheus history and save them under the models directory.
    Fit {
        /// The config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the live detection engine over CSV files (NAB layout) and score it.
    Backtest {
        /// Directory of `<category>/<file>.csv` files (`timestamp,value`); repeat it
        /// (each with its `--labels`, in the same order) to score several data sets together.
        #[arg(long, required = true)]
        data: Vec<PathBuf>,
        /// NAB `combined_windows.json`: score the run for the three NAB profiles; one per
        /// `--data`, in the same order.
        #[arg(long)]
        labels: Vec<PathBuf>,
        /// Leave each category of each data set out in turn: score it alone, and with
        /// several `--config`s, with the one that scores best on the other categories.
        #[arg(long, requires = "labels", conflicts_with_all = ["out", "plot", "details", "incidents"])]
        folds: bool,
        /// With `--labels`, also count the incidents the anomalies make when those opening
        /// within this many seconds on one machine's series (files `<machine>_<metric>`)
        /// are grouped.
        #[arg(long, requires = "labels")]
        incidents: Option<f64>,
        /// Write NAB-format results (`timestamp,value,anomaly_score,label`) here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Use this config's `[detection]` defaults instead of the built-in ones; with
        /// `--folds`, repeat it: the candidates to choose among.
        #[arg(long, short)]
        config: Vec<PathBuf>,
        /// With `--config`, use this signal's settings (its overrides of `[detection]`).
        #[arg(long, requires = "config")]
        signal: Option<String>,
        /// With `--labels`, print per file where each window was detected and the false alarms.
        #[arg(long)]
        details: bool,
        /// Write one PNG per file here: series, expected band, score, detections, label windows.
        #[arg(long)]
        plot: Option<PathBuf>,
    },
    /// Measure the engine: points per second on one core over CSV files, and the
    /// steady-state memory of one series.
    Bench {
        /// Directory of `<category>/<file>.csv` files (`timestamp,value`).
        #[arg(long)]
        data: PathBuf,
        /// Use this config's `[detection]` defaults instead of the built-in ones.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Series created for the memory measurement.
        #[arg(long, default_value_t = 20_000)]
        series: usize,
    },
    /// Inspect an audit log, or seal it and start a new one.
    Audit {
        /// What to do with it.
        #[command(subcommand)]
        command: AuditCommand,
    },
}

/// Playbook subcommands.
#[derive(Debug, Subcommand)]
pub enum PlaybookCommand {
    /// Show the playbooks a config loads, with their triggers, mode and scope.
    List {
        /// The config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run a playbook against a recorded anomaly and print its plan; or, given a
    /// directory, run every `*.test.json` case in it and report pass/fail.
    Test {
        /// A playbook file (`.rhai`), or a directory of `*.test.json` cases.
        path: PathBuf,
        /// The anomaly (JSON, as in the audit log's `anomaly_opened` records).
        #[arg(long)]
        anomaly: Option<PathBuf>,
        /// Recorded answers to the script's read-only lookups (JSON).
        #[arg(long)]
        world: Option<PathBuf>,
        /// Step results (JSON array) to pass to `on_result` after `plan`.
        #[arg(long)]
        results: Option<PathBuf>,
        /// Print the plan as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Audit log subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain and the head, and the links to sealed segments before it;
    /// exit 1 naming the first bad record.
    Verify {
        /// The audit log (JSON lines).
        #[arg(long)]
        log: PathBuf,
    },
    /// Print the records as a readable table.
    List {
        /// The audit log (JSON lines).
        #[arg(long)]
        log: PathBuf,
        /// Only records of this kind (e.g. `plan`, `anomaly_opened`).
        #[arg(long)]
        kind: Option<String>,
        /// Width of the details column.
        #[arg(long, default_value_t = 110)]
        width: usize,
    },
    /// Close a log, damaged or not, without rewriting it: rename it (and its head) aside
    /// to `<log>.<n>.sealed` and start a new log whose first record links to it.
    /// Stop the agent first.
    Seal {
        /// The audit log (JSON lines).
        #[arg(long)]
        log: PathBuf,
        /// Why it is sealed (recorded in the new log's first record).
        #[arg(long, value_parser = clap::builder::NonEmptyStringValueParser::new())]
        reason: String,
    },
}
