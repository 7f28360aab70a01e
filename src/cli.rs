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

/// `homeostat approvals …`.
#[derive(Debug, Subcommand)]
pub enum ApprovalsCommand {
    /// Plans waiting, oldest first.
    List,
    /// One plan, with its hash.
    Show {
        /// The approval id (`ap-…`).
        id: String,
    },
    /// Run a plan: name the hash you read with `show` (8 or more hex digits).
    Approve {
        /// The approval id.
        id: String,
        /// The plan's hash, or its first 8+ hex digits.
        #[arg(long)]
        hash: String,
        /// Why, for the audit log.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Drop a plan unrun.
    Reject {
        /// The approval id.
        id: String,
        /// Why, for the audit log.
        #[arg(long, default_value = "")]
        reason: String,
    },
}

/// `homeostat breaker …`.
#[derive(Debug, Subcommand)]
pub enum BreakerCommand {
    /// Close a playbook's breaker once the cause of its failures is understood.
    Reset {
        /// The playbook.
        playbook: String,
        /// Who (defaults to $USER).
        #[arg(long)]
        by: Option<String>,
        /// Why, for the audit log.
        #[arg(long, default_value = "")]
        reason: String,
    },
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
    /// The kill switch: stop every action (plans are still made and audited as paused).
    Pause {
        /// The config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Why, for the audit log.
        #[arg(long, default_value = "paused from the command line")]
        reason: String,
        /// Who (defaults to $USER).
        #[arg(long)]
        by: Option<String>,
    },
    /// Release the kill switch.
    Resume {
        /// The config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Who (defaults to $USER).
        #[arg(long)]
        by: Option<String>,
    },
    /// Paused or not, open circuit breakers, plans waiting for approval.
    Status {
        /// The config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Plans waiting for an SRE's approval.
    Approvals {
        /// The config file (TOML).
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// Who decides (defaults to $USER).
        #[arg(long, global = true)]
        by: Option<String>,
        /// What to do.
        #[command(subcommand)]
        command: ApprovalsCommand,
    },
    /// Circuit breakers of playbooks.
    Breaker {
        /// The config file (TOML).
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// What to do.
        #[command(subcommand)]
        command: BreakerCommand,
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
    /// Read, verify, export, seal, rotate or sign an audit log.
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
    /// Check the hash chain and the head, and the links to sealed segments before it
    /// (each segment's chain too); exit 1 naming the first bad record.
    Verify {
        /// The audit log (JSON lines).
        #[arg(long)]
        log: PathBuf,
        /// Also check every signed checkpoint against this public key (`KEY.pub` from
        /// `audit keygen`); fails if one does not hold or there is none.
        #[arg(long)]
        pubkey: Option<PathBuf>,
        /// With `--pubkey`: fail unless the last checkpoint signs this record or a later
        /// one (the last signed record a previous verify reported), so that removing
        /// checkpoints along with the records after them shows.
        #[arg(long, requires = "pubkey", default_value_t = 0)]
        signed_at_least: u64,
    },
    /// Print the records as a readable table.
    List {
        /// The audit log (JSON lines).
        #[arg(long)]
        log: PathBuf,
        /// Which records.
        #[command(flatten)]
        filter: AuditFilter,
        /// Also the sealed segments before the log, oldest first.
        #[arg(long)]
        segments: bool,
        /// Width of the details column.
        #[arg(long, default_value_t = 110)]
        width: usize,
    },
    /// Print every record of one incident (its anomaly or alert id, with the anomalies
    /// that opened as its members), in order, across the log and the sealed segments
    /// before it.
    Show {
        /// The incident's id (`an-…` or `am-…`).
        incident: String,
        /// The audit log (JSON lines).
        #[arg(long)]
        log: PathBuf,
        /// Width of the details column.
        #[arg(long, default_value_t = 110)]
        width: usize,
    },
    /// Write the records as JSON lines, each exactly as the log holds it (hash included).
    Export {
        /// The audit log (JSON lines).
        #[arg(long)]
        log: PathBuf,
        /// Which records.
        #[command(flatten)]
        filter: AuditFilter,
        /// Also the sealed segments before the log, oldest first.
        #[arg(long)]
        segments: bool,
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
    /// Seal an intact log and start a new one linked to it, keeping one chain across
    /// files; only if it holds `--max-bytes` or more. Stop the agent first.
    Rotate {
        /// The audit log (JSON lines).
        #[arg(long)]
        log: PathBuf,
        /// Rotate only a log at least this large (0: any log with a record).
        #[arg(long, default_value_t = 0)]
        max_bytes: u64,
    },
    /// Append a record signing the last record's seq and hash with an Ed25519 key.
    /// Stop the agent first.
    Checkpoint {
        /// The audit log (JSON lines).
        #[arg(long)]
        log: PathBuf,
        /// The private key file (from `audit keygen`).
        #[arg(long)]
        key: PathBuf,
    },
    /// Make an Ed25519 key pair for checkpoints: the private key (mode 0600) and
    /// `<out>.pub`. Never overwrites.
    Keygen {
        /// Where to write the private key.
        #[arg(long)]
        out: PathBuf,
    },
}

/// Which records `audit list` and `audit export` keep; all given must match.
#[derive(Debug, Clone, clap::Args)]
pub struct AuditFilter {
    /// Only records of these kinds (repeat, or separate with commas).
    #[arg(long, value_delimiter = ',')]
    pub kind: Vec<String>,
    /// Only records written since: an RFC 3339 time or a duration back from now (`2h`).
    #[arg(long, value_parser = since_arg)]
    pub since: Option<std::time::SystemTime>,
    /// Only records about this playbook.
    #[arg(long)]
    pub playbook: Option<String>,
    /// Only records whose action target or series labels hold `key=value` (repeat: all).
    #[arg(long, value_parser = crate::audit::parse_target)]
    pub target: Vec<(String, String)>,
}

impl AuditFilter {
    /// As the library's filter.
    pub fn to_filter(&self) -> crate::audit::Filter {
        crate::audit::Filter {
            since: self.since,
            kinds: self.kind.clone(),
            playbook: self.playbook.clone(),
            target: self.target.clone(),
        }
    }
}

/// `--since`, read against the clock now.
fn since_arg(s: &str) -> Result<std::time::SystemTime, String> {
    crate::audit::parse_since(s, std::time::SystemTime::now())
}
