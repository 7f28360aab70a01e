//! What the offline commands print (`check`, `playbook list`/`test`, `audit list`/`verify`,
//! `fit`), one `Display` type each, and the offline playbook test runs behind them: the
//! binary only picks stdout or stderr and the exit code.
//!
//! A report that may print several lines ends each with a newline (`print!` it); a
//! one-line report, and an error, has none (`println!` it).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::agent::FitReport;
use crate::anomaly::Anomaly;
use crate::audit::{self, AuditError, AuditRecord, VerifyError};
use crate::config::{Config, ConfigError};
use crate::playbook::{testing, Limits, Mode, Plan, Playbook, PlaybookError, RecordedWorld, World};

/// `s` for a count other than one.
fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// A file's problems: how many, then one indented line each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems {
    file: PathBuf,
    problems: Vec<String>,
    /// Whether each line is prefixed with the file (a config's own problems already are).
    prefixed: bool,
}

impl Problems {
    /// A config file's own problems (each already names the file).
    pub fn config(file: &Path, error: ConfigError) -> Problems {
        Problems {
            file: file.to_path_buf(),
            problems: error.problems,
            prefixed: false,
        }
    }

    /// The problems of the playbooks a config file names.
    pub fn playbooks(file: &Path, problems: Vec<String>) -> Problems {
        Problems {
            file: file.to_path_buf(),
            problems,
            prefixed: true,
        }
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // An error: no newline after the last line.
        let file = self.file.display();
        let n = self.problems.len();
        write!(f, "{file}: {n} problem{}:", plural(n))?;
        for p in &self.problems {
            if self.prefixed {
                write!(f, "\n  {file}: {p}")?;
            } else {
                write!(f, "\n  {p}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// Reads and validates a config file; its problems are the error.
pub fn load_config(file: &Path) -> Result<Config, Problems> {
    Config::load(file).map_err(|e| Problems::config(file, e))
}

/// `check`: loads the playbooks a valid config names; any problem with them fails it.
pub fn check(file: &Path, config: &Config) -> Result<CheckReport, Problems> {
    let (playbooks, problems) = crate::load_playbooks(config, &Limits::default());
    if !problems.is_empty() {
        return Err(Problems::playbooks(file, problems));
    }
    Ok(CheckReport {
        file: file.to_path_buf(),
        signals: config.signals.iter().map(|s| s.name.clone()).collect(),
        playbooks,
        mode: config.agent.mode,
    })
}

/// A config that passed `check`: its signals and playbooks, and a note when a playbook
/// asks for more than `agent.mode` allows (no surprises: the cap wins).
#[derive(Debug, Clone)]
pub struct CheckReport {
    /// The config file.
    pub file: PathBuf,
    /// Its signals' names.
    pub signals: Vec<String>,
    /// The playbooks it loads.
    pub playbooks: Vec<Playbook>,
    /// `agent.mode`, which caps every playbook's.
    pub mode: Mode,
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let playbooks: Vec<String> = self
            .playbooks
            .iter()
            .map(|p| {
                let n = p.triggers.len();
                format!("{} ({n} trigger{})", p.name, plural(n))
            })
            .collect();
        writeln!(
            f,
            "{}: ok: {} signal{} ({}), {} playbook{} ({})",
            self.file.display(),
            self.signals.len(),
            plural(self.signals.len()),
            self.signals.join(", "),
            self.playbooks.len(),
            plural(self.playbooks.len()),
            playbooks.join(", "),
        )?;
        let acting: Vec<&str> = self
            .playbooks
            .iter()
            .filter(|p| crate::act::effective_mode(p.mode, self.mode) != p.mode)
            .map(|p| p.name.as_str())
            .collect();
        if !acting.is_empty() {
            writeln!(
                f,
                "note: agent.mode is {}: plans of {} run as {} (raise agent.mode to let them act)",
                self.mode.as_str(),
                acting.join(", "),
                self.mode.as_str()
            )?;
        }
        Ok(())
    }
}

/// `playbook list`: each playbook with its mode, file, triggers and scope.
#[derive(Debug, Clone, Copy)]
pub struct PlaybookListing<'a>(pub &'a [Playbook]);

impl fmt::Display for PlaybookListing<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for pb in self.0 {
            writeln!(
                f,
                "{}  ({}, {})",
                pb.name,
                pb.mode.as_str(),
                pb.path.display()
            )?;
            if !pb.description.is_empty() {
                writeln!(f, "  {}", pb.description)?;
            }
            for t in &pb.triggers {
                writeln!(f, "  trigger: {}", t.describe())?;
            }
            writeln!(f, "  allowed: {}", pb.scope.kinds.join(", "))?;
            if !pb.scope.targets.is_empty() {
                let t: Vec<String> = pb
                    .scope
                    .targets
                    .iter()
                    .map(|(k, m)| format!("{k}{}", m.spec()))
                    .collect();
                writeln!(f, "  targets: {}", t.join(", "))?;
            }
            if !pb.group_by.is_empty() {
                writeln!(
                    f,
                    "  group by: {} (cooldown {})",
                    pb.group_by.join(","),
                    humantime::format_duration(pb.cooldown)
                )?;
            }
        }
        Ok(())
    }
}

/// The playbooks a config names that did not load, one `rejected:` line each.
#[derive(Debug, Clone, Copy)]
pub struct Rejected<'a>(pub &'a [String]);

impl fmt::Display for Rejected<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in self.0 {
            writeln!(f, "rejected: {p}")?;
        }
        Ok(())
    }
}

/// `audit list`: the records a filter keeps, as a table, details cut to `width`.
#[derive(Debug, Clone)]
pub struct AuditTable {
    /// The records kept, in log order, each with its file.
    pub records: Vec<(PathBuf, AuditRecord)>,
    /// Width of the details column.
    pub width: usize,
}

impl AuditTable {
    /// Reads the records of `files` (a log, or its chain oldest first) that `filter`
    /// keeps, without verifying them.
    pub fn read(
        files: &[PathBuf],
        filter: &audit::Filter,
        width: usize,
    ) -> Result<Self, AuditError> {
        let mut records = Vec::new();
        for file in files {
            for r in audit::records(file)? {
                let (_, rec) = r?;
                if filter.matches(&rec) {
                    records.push((file.clone(), rec));
                }
            }
        }
        Ok(AuditTable { records, width })
    }
}

/// The table: a header, then one row per record; when they come from several files,
/// each file's rows under its name (after a seal, sequence numbers start again at 1).
fn audit_rows(
    f: &mut fmt::Formatter<'_>,
    records: &[(PathBuf, AuditRecord)],
    width: usize,
) -> fmt::Result {
    writeln!(f, "{:>5}  {:<24}  {:<16}  DETAILS", "SEQ", "TIME", "KIND")?;
    let several = records.windows(2).any(|w| w[0].0 != w[1].0);
    let mut current: Option<&Path> = None;
    for (file, r) in records {
        if several && current != Some(file.as_path()) {
            writeln!(f, "  -- {}", file_name(file))?;
            current = Some(file);
        }
        // The time and kind are the record's text too: escaped like the details.
        writeln!(
            f,
            "{:>5}  {:<24}  {:<16}  {}",
            r.seq,
            audit::escape(&r.ts),
            audit::escape(&r.kind),
            audit::summarize(&r.kind, &r.data, width)
        )?;
    }
    Ok(())
}

impl fmt::Display for AuditTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        audit_rows(f, &self.records, self.width)
    }
}

/// `audit show`: one incident's records, oldest first, across the log and the sealed
/// segments before it, grouped by file.
#[derive(Debug, Clone)]
pub struct AuditIncident<'a> {
    /// The incident's id.
    pub id: &'a str,
    /// Its records, each with its file.
    pub records: Vec<(PathBuf, AuditRecord)>,
    /// Width of the details column.
    pub width: usize,
}

impl<'a> AuditIncident<'a> {
    /// Finds incident `id` in `log` and the segments before it; fails naming the id if
    /// it has no record.
    pub fn read(log: &Path, id: &'a str, width: usize) -> Result<Self, AuditError> {
        Ok(AuditIncident {
            id,
            records: audit::incident(log, id)?,
            width,
        })
    }
}

/// A file's name for a heading, escaped (a name is text from outside too).
fn file_name(p: &Path) -> String {
    let name = p.file_name().unwrap_or(p.as_os_str()).to_string_lossy();
    audit::escape(&name).into_owned()
}

impl fmt::Display for AuditIncident<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut files: Vec<&Path> = Vec::new();
        for (file, _) in &self.records {
            if files.last() != Some(&file.as_path()) {
                files.push(file);
            }
        }
        writeln!(
            f,
            "incident {}: {} record{} in {}",
            audit::escape(self.id),
            self.records.len(),
            plural(self.records.len()),
            files
                .iter()
                .map(|p| file_name(p))
                .collect::<Vec<_>>()
                .join(", ")
        )?;
        let mut members: Vec<&str> = Vec::new();
        for (_, rec) in &self.records {
            if let Some(m) = audit::member_of(rec, self.id) {
                if !members.contains(&m) {
                    members.push(m);
                }
            }
        }
        if members.len() > 1 {
            let names: Vec<_> = members.iter().map(|m| audit::escape(m)).collect();
            writeln!(
                f,
                "{} members (anomalies and alerts): {}",
                members.len(),
                names.join(", ")
            )?;
        }
        audit_rows(f, &self.records, self.width)
    }
}

/// `audit verify`: a log's chain and head checked, and how many records it holds or
/// where it first breaks; then each link back to a segment sealed before it (each
/// segment's chain re-read), how many segments and records the whole chain holds, and,
/// with a public key, its signed checkpoints.
#[derive(Debug, Clone)]
pub struct AuditVerdict<'a> {
    /// The log.
    pub log: &'a Path,
    /// Records in the intact log, or the first bad one.
    pub result: Result<u64, VerifyError>,
    /// The links back through sealed segments (none for a log `seal` did not start).
    pub links: Vec<audit::Link>,
    /// The checkpoints checked against the public key given, if one was.
    pub signed: Option<Result<audit::Signed, String>>,
    /// The record the last checkpoint must sign, at least (0: any).
    pub min_signed: u64,
}

impl<'a> AuditVerdict<'a> {
    /// Verifies a log and the links from it; with `key`, also every checkpoint in it
    /// and its segments.
    /// `min_signed`: the record an auditor saw signed before (0: none).
    pub fn of(log: &'a Path, key: Option<&ed25519_dalek::VerifyingKey>, min_signed: u64) -> Self {
        let mut verdict = AuditVerdict {
            log,
            result: audit::verify(log),
            links: audit::links(log),
            signed: None,
            min_signed,
        };
        if let Some(key) = key {
            let files: Vec<PathBuf> = verdict.files().into_iter().map(|(p, _)| p).collect();
            verdict.signed =
                Some(audit::verify_checkpoints(&files, key).map_err(|e| e.to_string()));
        }
        verdict
    }

    /// The files of the chain whose links hold, oldest first, with the records each
    /// verifies to.
    fn files(&self) -> Vec<(PathBuf, u64)> {
        let mut files: Vec<(PathBuf, u64)> = self
            .links
            .iter()
            .take_while(|l| l.check.is_ok())
            .filter_map(|l| Some((l.segment.clone()?, *l.check.as_ref().ok()?)))
            .collect();
        files.reverse();
        files.push((self.log.to_path_buf(), *self.result.as_ref().unwrap_or(&0)));
        files
    }

    /// Whether the chain and the head are intact, every sealed segment linked is there
    /// with the bytes it was sealed with, and, with a key, every checkpoint holds.
    pub fn intact(&self) -> bool {
        self.result.is_ok()
            && self.links.iter().all(|l| l.check.is_ok())
            && self
                .signed
                .as_ref()
                .is_none_or(|s| s.as_ref().is_ok_and(|s| s.holds(self.min_signed)))
    }
}

impl fmt::Display for AuditVerdict<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let log = self.log.display();
        match &self.result {
            Ok(n) => write!(f, "{log}: ok: {n} records, chain and head intact")?,
            Err(e) => write!(f, "{log}: BROKEN at {}", audit::escape(&e.to_string()))?,
        }
        // What a link says comes from a record: escaped.
        for link in &self.links {
            let s = &link.sealed;
            write!(
                f,
                "\n{}: sealed after {}: ",
                link.log.display(),
                audit::escape(&s.previous)
            )?;
            let verified = match &link.check {
                Ok(n) => {
                    write!(f, "sha256 matches")?;
                    *n
                }
                Err(e) => {
                    write!(f, "BROKEN: {}", audit::escape(e))?;
                    s.last_seq
                }
            };
            write!(f, "; {verified} records verified")?;
            if let (Some(line), Some(problem)) = (s.first_bad_line, &s.problem) {
                write!(f, ", then line {line}: {}", audit::escape(problem))?;
            }
            write!(f, "; reason: {}", audit::escape(&s.reason))?;
        }
        let files = self.files();
        if self.result.is_ok() && self.links.iter().all(|l| l.check.is_ok()) {
            let records: u64 = files.iter().map(|(_, n)| n).sum();
            write!(
                f,
                "\n{log}: one chain: {} segment{}, {records} records",
                files.len(),
                plural(files.len())
            )?;
        }
        match &self.signed {
            None => {}
            Some(Err(e)) => write!(f, "\n{log}: checkpoints: cannot read: {e}")?,
            Some(Ok(s)) => {
                if let Some((file, seq, why)) = &s.bad {
                    write!(
                        f,
                        "\n{log}: checkpoint BROKEN: record {seq} of {}: {why}",
                        file_name(file)
                    )?;
                } else if let Some((_, seq)) =
                    s.last.as_ref().filter(|(_, seq)| *seq < self.min_signed)
                {
                    write!(
                        f,
                        "\n{log}: checkpoint BROKEN: the last checkpoint signs record {seq}, but record {} was signed before (checkpoints removed with the records after them)",
                        self.min_signed
                    )?;
                } else if let Some((file, seq)) = &s.last {
                    write!(
                        f,
                        "\n{log}: signed: {} checkpoint{} hold; the last signs record {seq} of {}; {} record{} after it (the checkpoint's own included) rest on the chain alone",
                        s.valid,
                        plural(s.valid as usize),
                        file_name(file),
                        s.after,
                        plural(s.after as usize),
                    )?;
                } else {
                    write!(
                        f,
                        "\n{log}: checkpoint BROKEN: no checkpoint signed by this key"
                    )?;
                }
            }
        }
        Ok(())
    }
}

/// `audit rotate`: whether the log was rotated, and into which segment.
#[derive(Debug, Clone)]
pub struct AuditRotate<'a> {
    /// The log.
    pub log: &'a Path,
    /// What was done; `None`: not due.
    pub sealed: Option<audit::Sealed>,
}

impl fmt::Display for AuditRotate<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.sealed {
            None => write!(
                f,
                "{}: not rotated: smaller than --max-bytes",
                self.log.display()
            ),
            Some(s) => write!(
                f,
                "{}: rotated: {} records sealed as {} ({} bytes, sha256 {}); new log started, linked to it",
                self.log.display(),
                s.link.last_seq,
                s.segment.display(),
                s.link.previous_bytes,
                s.link.previous_sha256
            ),
        }
    }
}

/// `audit seal`: the log set aside and the new log started.
#[derive(Debug, Clone)]
pub struct AuditSeal<'a> {
    /// The log (now the new one).
    pub log: &'a Path,
    /// What was done.
    pub sealed: audit::Sealed,
}

impl<'a> AuditSeal<'a> {
    /// Seals the log at `log` for `reason`.
    pub fn run(log: &'a Path, reason: &str) -> Result<Self, AuditError> {
        Ok(AuditSeal {
            log,
            sealed: audit::seal(log, reason)?,
        })
    }
}

impl fmt::Display for AuditSeal<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.sealed.link;
        write!(
            f,
            "{}: {}sealed as {} ({} bytes, sha256 {}): {} records verify",
            self.log.display(),
            if self.sealed.resumed {
                "finished an interrupted seal: "
            } else {
                ""
            },
            self.sealed.segment.display(),
            s.previous_bytes,
            s.previous_sha256,
            s.last_seq,
        )?;
        if let (Some(line), Some(problem)) = (s.first_bad_line, &s.problem) {
            write!(f, ", then line {line}: {}", audit::escape(problem))?;
        }
        write!(
            f,
            "\n{}: new log started; its first record (audit_sealed) links to it",
            self.log.display()
        )
    }
}

/// What can go wrong testing one playbook against a recorded anomaly.
#[derive(Debug, thiserror::Error)]
pub enum TrialError {
    /// No anomaly to plan for was given.
    #[error("playbook test {}: --anomaly FILE is required for a playbook (or give a directory of *.test.json cases)", .playbook.display())]
    NoAnomaly {
        /// The playbook.
        playbook: PathBuf,
    },
    /// The playbook does not load.
    #[error(transparent)]
    Load(PlaybookError),
    /// An input file could not be read.
    #[error("cannot read the {what} file {}", .path.display())]
    Read {
        /// What the file holds (`anomaly`, `world`, `results`).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// An input file is not what it should hold.
    #[error("{}: not a valid {what}", .path.display())]
    Parse {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// The script failed, or returned something that is not a plan.
    #[error(transparent)]
    Plan(PlaybookError),
}

/// Something worth saying while a playbook is tried, though it goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrialNote {
    /// No trigger of the playbook matches the anomaly.
    NoTriggerMatches {
        /// The playbook's name.
        playbook: String,
    },
    /// `on_result` returned no follow-up plan.
    NothingOnResult,
}

impl fmt::Display for TrialNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrialNote::NoTriggerMatches { playbook } => write!(
                f,
                "note: no trigger of {playbook} matches this anomaly; planning anyway"
            ),
            TrialNote::NothingOnResult => f.write_str("on_result: nothing to do"),
        }
    }
}

/// Reads a JSON input of a trial.
fn read_json<T: serde::de::DeserializeOwned>(
    path: &Path,
    what: &'static str,
) -> Result<T, TrialError> {
    let text = std::fs::read_to_string(path).map_err(|source| TrialError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| TrialError::Parse {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// `playbook test FILE`: the plan a playbook makes for a recorded anomaly (with
/// recorded answers to its lookups, if given) and, given step results, the follow-up
/// plan of its `on_result`. Planned even if no trigger matches (`note` hears of it).
pub fn trial(
    playbook: &Path,
    anomaly: Option<&Path>,
    world: Option<&Path>,
    results: Option<&Path>,
    mut note: impl FnMut(TrialNote),
) -> Result<Vec<Plan>, TrialError> {
    let Some(anomaly) = anomaly else {
        return Err(TrialError::NoAnomaly {
            playbook: playbook.to_path_buf(),
        });
    };
    let limits = Limits::default();
    let pb = Playbook::load(playbook, &limits).map_err(TrialError::Load)?;
    let anomaly: Anomaly = read_json(anomaly, "anomaly")?;
    let world: Arc<dyn World> = Arc::new(match world {
        Some(w) => read_json::<RecordedWorld>(w, "world")?,
        None => RecordedWorld::default(),
    });
    if !pb.matches(&anomaly) {
        note(TrialNote::NoTriggerMatches {
            playbook: pb.name.clone(),
        });
    }
    let now = testing::event_time(&anomaly);
    let plan = pb
        .plan(&anomaly, &limits, world.clone(), now)
        .map_err(TrialError::Plan)?;
    let mut plans = vec![plan];
    if let Some(r) = results {
        let results: serde_json::Value = read_json(r, "results")?;
        match pb
            .on_result(&anomaly, &results, &limits, world, now)
            .map_err(TrialError::Plan)?
        {
            Some(follow) => plans.push(follow),
            None => note(TrialNote::NothingOnResult),
        }
    }
    Ok(plans)
}

/// Plans as `playbook test` prints them: readable text, or pretty JSON.
#[derive(Debug, Clone, Copy)]
pub struct Plans<'a> {
    /// The plans, in order.
    pub plans: &'a [Plan],
    /// JSON instead of text.
    pub json: bool,
}

impl<'a> Plans<'a> {
    /// The plans, as JSON or as text.
    pub fn new(plans: &'a [Plan], json: bool) -> Self {
        Plans { plans, json }
    }
}

impl fmt::Display for Plans<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for plan in self.plans {
            if self.json {
                // Strings, string-keyed maps and numbers only: serialising cannot fail.
                let text = serde_json::to_string_pretty(plan).map_err(|_| fmt::Error)?;
                writeln!(f, "{text}")?;
            } else {
                writeln!(f, "{}", plan.render())?;
            }
        }
        Ok(())
    }
}

/// Why a directory of playbook test cases cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum CasesError {
    /// The directory could not be listed.
    #[error("cannot list {}", .dir.display())]
    List {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It holds no case.
    #[error("{}: no *.test.json cases", .dir.display())]
    Empty {
        /// The directory.
        dir: PathBuf,
    },
}

/// `playbook test DIR`: the `*.test.json` cases in a directory. `Display` is the line
/// announcing the run.
#[derive(Debug, Clone)]
pub struct Cases {
    dir: PathBuf,
    files: Vec<PathBuf>,
}

/// One case's result.
#[derive(Debug, Clone)]
pub struct CaseOutcome<'a> {
    /// The case's file name without `.test.json`.
    pub name: &'a str,
    /// Passed, or why not.
    pub result: Result<(), String>,
}

/// How many cases passed and failed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Cases that passed.
    pub passed: usize,
    /// Cases that failed.
    pub failed: usize,
}

impl Cases {
    /// The cases in `dir`, in name order; none is [`CasesError::Empty`].
    pub fn find(dir: &Path) -> Result<Cases, CasesError> {
        let files = testing::case_files(dir).map_err(|source| CasesError::List {
            dir: dir.to_path_buf(),
            source,
        })?;
        if files.is_empty() {
            return Err(CasesError::Empty {
                dir: dir.to_path_buf(),
            });
        }
        Ok(Cases {
            dir: dir.to_path_buf(),
            files,
        })
    }

    /// Runs every case, telling `each` its outcome as it is known.
    pub fn run(&self, mut each: impl FnMut(&CaseOutcome<'_>)) -> Tally {
        let mut tally = Tally::default();
        for f in &self.files {
            let name = f
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("?")
                .trim_end_matches(".test.json");
            let result = testing::run_case(f, &Limits::default());
            match result {
                Ok(()) => tally.passed += 1,
                Err(_) => tally.failed += 1,
            }
            each(&CaseOutcome { name, result });
        }
        tally
    }
}

impl fmt::Display for Cases {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.files.len();
        write!(
            f,
            "running {n} playbook test{} from {}",
            plural(n),
            self.dir.display()
        )
    }
}

impl fmt::Display for CaseOutcome<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.result {
            Ok(()) => write!(f, "PASS {}", self.name),
            Err(e) => write!(f, "FAIL {}: {e}", self.name),
        }
    }
}

impl Tally {
    /// Whether no case failed.
    pub fn all_passed(&self) -> bool {
        self.failed == 0
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} passed, {} failed", self.passed, self.failed)
    }
}

/// One signal's line of `fit`'s progress: what was fitted, or why not.
#[derive(Debug, Clone, Copy)]
pub struct FitLine<'a>(pub &'a FitReport);

impl fmt::Display for FitLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0.outcome {
            Ok((series, points)) => {
                write!(f, "{}: {series} series, {points} points", self.0.signal)
            }
            Err(e) => write!(f, "{}: FAILED: {e}", self.0.signal),
        }
    }
}

/// `fit`'s summary: how many of the signals were fitted, and where the models went.
#[derive(Debug, Clone, Copy)]
pub struct Fitted<'a> {
    /// One report per signal fitted or tried.
    pub reports: &'a [FitReport],
    /// Signals in the config.
    pub signals: usize,
    /// Where the models were saved.
    pub models_dir: &'a Path,
}

impl<'a> Fitted<'a> {
    /// The summary of `reports` out of `signals` signals, saved under `models_dir`.
    pub fn new(reports: &'a [FitReport], signals: usize, models_dir: &'a Path) -> Self {
        Fitted {
            reports,
            signals,
            models_dir,
        }
    }

    /// Signals that could not be fitted.
    pub fn failed(&self) -> usize {
        self.reports.iter().filter(|r| r.outcome.is_err()).count()
    }
}

impl fmt::Display for Fitted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "fitted {} of {} signals into {}",
            self.signals - self.failed(),
            self.signals,
            self.models_dir.display()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_count_and_indent_each() {
        let problems = vec!["playbooks[0]: a.rhai: cannot read".to_string()];
        assert_eq!(
            Problems::playbooks(Path::new("h.toml"), problems).to_string(),
            "h.toml: 1 problem:\n  h.toml: playbooks[0]: a.rhai: cannot read"
        );
        let error = ConfigError {
            problems: vec!["h.toml: a".into(), "h.toml: b".into()],
        };
        assert_eq!(
            Problems::config(Path::new("h.toml"), error).to_string(),
            "h.toml: 2 problems:\n  h.toml: a\n  h.toml: b"
        );
    }

    #[test]
    fn fit_summary_counts_the_failures() {
        let reports = [
            FitReport {
                signal: "a".into(),
                outcome: Ok((2, 100)),
            },
            FitReport {
                signal: "b".into(),
                outcome: Err("refused".into()),
            },
        ];
        assert_eq!(FitLine(&reports[0]).to_string(), "a: 2 series, 100 points");
        assert_eq!(FitLine(&reports[1]).to_string(), "b: FAILED: refused");
        let fitted = Fitted {
            reports: &reports,
            signals: 2,
            models_dir: Path::new("models"),
        };
        assert_eq!(fitted.failed(), 1);
        assert_eq!(fitted.to_string(), "fitted 1 of 2 signals into models");
    }

    #[test]
    fn a_trial_without_an_anomaly_says_what_is_missing() {
        let e = trial(Path::new("p.rhai"), None, None, None, |_| {}).unwrap_err();
        assert!(matches!(e, TrialError::NoAnomaly { .. }));
        assert!(e
            .to_string()
            .starts_with("playbook test p.rhai: --anomaly FILE"));
    }
}
