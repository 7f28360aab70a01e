//! The thin binary: parse the CLI, start tracing, call the library, map errors to exit codes
//! (0 ok, 1 failure, 2 usage or config error).

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use homeostat::anomaly::Anomaly;
use homeostat::audit;
use homeostat::cli::{AuditCommand, Cli, Command, PlaybookCommand};
use homeostat::config::Config;
use homeostat::playbook::{testing, Limits, Playbook, RecordedWorld, World};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes are noise in files and journald.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Check { config } => Ok(check(&config)),
        Command::Run { config } => run(&config),
        Command::Playbook {
            command: PlaybookCommand::List { config },
        } => Ok(playbook_list(&config)),
        Command::Playbook {
            command:
                PlaybookCommand::Test {
                    path,
                    anomaly,
                    world,
                    results,
                    json,
                },
        } => {
            if path.is_dir() {
                playbook_test_dir(&path)
            } else {
                playbook_test(
                    &path,
                    anomaly.as_deref(),
                    world.as_deref(),
                    results.as_deref(),
                    json,
                )
            }
        }
        Command::Fit { config } => fit(&config),
        Command::Backtest {
            data,
            labels,
            out,
            config,
            signal,
            details,
            plot,
        } => backtest(
            &data,
            labels.as_deref(),
            out.as_deref(),
            config.as_deref(),
            signal.as_deref(),
            details,
            plot.as_deref(),
        ),
        Command::Bench {
            data,
            config,
            series,
        } => bench(&data, config.as_deref(), series),
        Command::Audit {
            command: AuditCommand::Verify { log },
        } => Ok(verify(&log)),
        Command::Audit {
            command: AuditCommand::List { log, kind, width },
        } => list(&log, kind.as_deref(), width),
    }
}

fn load_config(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!(
            "{}: {} problem{}:",
            path.display(),
            e.problems.len(),
            if e.problems.len() == 1 { "" } else { "s" }
        );
        for p in &e.problems {
            eprintln!("  {p}");
        }
        ExitCode::from(2)
    })
}

fn check(path: &Path) -> ExitCode {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let (playbooks, problems) = homeostat::load_playbooks(&config, &Limits::default());
    if !problems.is_empty() {
        eprintln!(
            "{}: {} problem{}:",
            path.display(),
            problems.len(),
            if problems.len() == 1 { "" } else { "s" }
        );
        for p in &problems {
            eprintln!("  {}: {p}", path.display());
        }
        return ExitCode::from(2);
    }
    println!(
        "{}: ok: {} signal{} ({}), {} playbook{} ({})",
        path.display(),
        config.signals.len(),
        if config.signals.len() == 1 { "" } else { "s" },
        config
            .signals
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        playbooks.len(),
        if playbooks.len() == 1 { "" } else { "s" },
        playbooks
            .iter()
            .map(|p| format!(
                "{} ({} trigger{})",
                p.name,
                p.triggers.len(),
                if p.triggers.len() == 1 { "" } else { "s" }
            ))
            .collect::<Vec<_>>()
            .join(", "),
    );
    // No surprises: a playbook that says `auto` must not look as if it will act.
    let acting: Vec<&str> = playbooks
        .iter()
        .filter(|p| p.mode != homeostat::playbook::Mode::DryRun)
        .map(|p| p.name.as_str())
        .collect();
    if !acting.is_empty() {
        println!(
            "note: this build has no effectors; plans of {} run in dry-run",
            acting.join(", ")
        );
    }
    ExitCode::SUCCESS
}

fn run(path: &Path) -> anyhow::Result<ExitCode> {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let limits = Limits {
        timeout: config.agent.playbook_timeout,
        ..Limits::default()
    };
    let (playbooks, rejected) = homeostat::load_playbooks(&config, &limits);
    // A bad playbook is rejected alone; the others run.
    for p in &rejected {
        tracing::error!("playbook rejected: {p}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        homeostat::agent::start(config, playbooks, rejected, shutdown_signal())
            .await
            .context("homeostat run")
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("can install a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}

fn verify(log: &Path) -> ExitCode {
    match audit::verify(log) {
        Ok(n) => {
            println!("{}: ok: {n} records, chain and head intact", log.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: BROKEN at {e}", log.display());
            ExitCode::from(1)
        }
    }
}

fn list(log: &Path, kind: Option<&str>, width: usize) -> anyhow::Result<ExitCode> {
    let records = audit::read_records(log)?;
    println!("{:>5}  {:<24}  {:<16}  DETAILS", "SEQ", "TIME", "KIND");
    for r in records.iter().filter(|r| kind.is_none_or(|k| r.kind == k)) {
        println!(
            "{:>5}  {:<24}  {:<16}  {}",
            r.seq,
            r.ts,
            r.kind,
            audit::summarize(&r.kind, &r.data, width)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn playbook_list(path: &Path) -> ExitCode {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let (playbooks, problems) = homeostat::load_playbooks(&config, &Limits::default());
    for pb in &playbooks {
        println!("{}  ({}, {})", pb.name, pb.mode.as_str(), pb.path.display());
        if !pb.description.is_empty() {
            println!("  {}", pb.description);
        }
        for t in &pb.triggers {
            println!("  trigger: {}", t.describe());
        }
        println!("  allowed: {}", pb.scope.kinds.join(", "));
        if !pb.scope.targets.is_empty() {
            let t: Vec<String> = pb
                .scope
                .targets
                .iter()
                .map(|(k, m)| format!("{k}{}", m.spec()))
                .collect();
            println!("  targets: {}", t.join(", "));
        }
        if !pb.group_by.is_empty() {
            println!(
                "  group by: {} (cooldown {})",
                pb.group_by.join(","),
                humantime::format_duration(pb.cooldown)
            );
        }
    }
    for p in &problems {
        eprintln!("rejected: {p}");
    }
    if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the {what} file {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a valid {what}", path.display()))
}

fn playbook_test(
    path: &Path,
    anomaly: Option<&Path>,
    world: Option<&Path>,
    results: Option<&Path>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let Some(anomaly) = anomaly else {
        eprintln!("playbook test {}: --anomaly FILE is required for a playbook (or give a directory of *.test.json cases)", path.display());
        return Ok(ExitCode::from(2));
    };
    let limits = Limits::default();
    let pb = match Playbook::load(path, &limits) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(2));
        }
    };
    let anomaly: Anomaly = read_json(anomaly, "anomaly")?;
    let world: Arc<dyn World> = Arc::new(match world {
        Some(w) => read_json::<RecordedWorld>(w, "world")?,
        None => RecordedWorld::default(),
    });
    if !pb.matches(&anomaly) {
        eprintln!(
            "note: no trigger of {} matches this anomaly; planning anyway",
            pb.name
        );
    }
    let now = testing::event_time(&anomaly);
    let mut plans = vec![pb.plan(&anomaly, &limits, world.clone(), now)?];
    if let Some(r) = results {
        let results: serde_json::Value = read_json(r, "results")?;
        if let Some(follow) = pb.on_result(&anomaly, &results, &limits, world, now)? {
            plans.push(follow);
        } else {
            eprintln!("on_result: nothing to do");
        }
    }
    for plan in plans {
        if json {
            println!("{}", serde_json::to_string_pretty(&plan)?);
        } else {
            println!("{}", plan.render());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn playbook_test_dir(dir: &Path) -> anyhow::Result<ExitCode> {
    let files =
        testing::case_files(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    if files.is_empty() {
        eprintln!("{}: no *.test.json cases", dir.display());
        return Ok(ExitCode::from(2));
    }
    println!(
        "running {} playbook test{} from {}",
        files.len(),
        if files.len() == 1 { "" } else { "s" },
        dir.display()
    );
    let (mut passed, mut failed) = (0, 0);
    for f in &files {
        let name = f
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("?")
            .trim_end_matches(".test.json");
        match testing::run_case(f, &Limits::default()) {
            Ok(()) => {
                passed += 1;
                println!("PASS {name}");
            }
            Err(e) => {
                failed += 1;
                println!("FAIL {name}: {e}");
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The detection settings a backtest or benchmark runs with: the built-in defaults, a
/// config's `[detection]`, or one of its signals' resolved settings.
fn detection_settings(
    config: Option<&Path>,
    signal: Option<&str>,
) -> Result<homeostat::config::DetectionConfig, ExitCode> {
    let Some(path) = config else {
        return Ok(homeostat::config::DetectionConfig::default());
    };
    let cfg = load_config(path)?;
    let Some(name) = signal else {
        return Ok(cfg.detection);
    };
    match cfg.signals.into_iter().find(|s| s.name == name) {
        Some(s) => Ok(s.detection),
        None => {
            eprintln!("{}: no signal named {name:?}", path.display());
            Err(ExitCode::from(2))
        }
    }
}

fn backtest(
    data: &Path,
    labels: Option<&Path>,
    out: Option<&Path>,
    config: Option<&Path>,
    signal: Option<&str>,
    details: bool,
    plot: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    use homeostat::backtest::{self as bt, nab};
    let detection = match detection_settings(config, signal) {
        Ok(d) => d,
        Err(code) => return Ok(code),
    };
    let labels = labels.map(bt::read_labels).transpose()?;
    let files = bt::csv_files(data)?;
    if files.is_empty() {
        eprintln!("{}: no *.csv files", data.display());
        return Ok(ExitCode::from(2));
    }
    let started = std::time::Instant::now();
    let progress = std::io::stderr().is_terminal();
    let mut results = Vec::with_capacity(files.len());
    let mut total_rows = 0;
    for (n, (name, path)) in files.iter().enumerate() {
        let bt::Series { rows, problems } = bt::read_series(path)?;
        report_problems(path, &problems, progress);
        let (windows, labelled) = match labels.as_ref().and_then(|l| l.get(name)) {
            Some(w) => (bt::window_rows(&rows, w, path)?, true),
            None => (Vec::new(), false),
        };
        let scored = bt::run_series(&rows, &detection);
        if let Some(out) = out {
            bt::write_results(&out.join(name), &rows, &scored, &windows)?;
        }
        if let Some(plot) = plot {
            let png = plot.join(name).with_extension("png");
            bt::plot::write_png(&png, &rows, &scored, &windows)?;
        }
        total_rows += rows.len();
        let line = format!("{name}: {} rows", rows.len());
        if progress {
            eprint!("\r\x1b[2K{} {line}", bar(n + 1, files.len()));
        } else {
            eprintln!("[{}/{}] {line}", n + 1, files.len());
        }
        let detections = scored
            .anomaly_score
            .iter()
            .map(|s| *s >= bt::DETECTION_THRESHOLD)
            .collect();
        results.push(bt::FileResult {
            name: name.clone(),
            rows: rows.len(),
            windows,
            labelled,
            detections,
            evidence: scored.evidence,
        });
    }
    if progress {
        eprintln!();
    }
    let seconds = started.elapsed().as_secs_f64();
    let detections: usize = results
        .iter()
        .map(|r| r.detections.iter().filter(|d| **d).count())
        .sum();
    println!(
        "{} files, {total_rows} rows, {detections} detections, {seconds:.2}s",
        results.len()
    );
    let Some(_) = labels else {
        println!(
            "{}",
            serde_json::json!({"threshold": bt::DETECTION_THRESHOLD, "rows": total_rows, "detections": detections, "seconds": seconds})
        );
        return Ok(ExitCode::SUCCESS);
    };
    if details {
        for line in bt::details(&results) {
            println!("{line}");
        }
    }
    let table = bt::score_table(&results);
    println!(
        "{:<24} {:>5} {:>7} {:>10} {:>9} {:>19} {:>19}",
        "category",
        "files",
        "windows",
        "detections",
        nab::PROFILES[0].name,
        nab::PROFILES[1].name,
        nab::PROFILES[2].name
    );
    for (name, files, windows, s) in &table {
        let hits: usize = results
            .iter()
            .filter(|r| r.labelled && (name == "total" || r.category() == name))
            .map(|r| r.detections.iter().filter(|d| **d).count())
            .sum();
        // A category without windows has no normalised score (NaN): its false alarms count in the total.
        let show = |v: f64| {
            if v.is_nan() {
                "n/a".to_string()
            } else {
                format!("{v:.2}")
            }
        };
        println!(
            "{name:<24} {files:>5} {windows:>7} {hits:>10} {:>9} {:>19} {:>19}",
            show(s[0]),
            show(s[1]),
            show(s[2])
        );
    }
    let total = table.last().expect("the total row is always there").3;
    println!(
        "{}",
        serde_json::json!({
            "threshold": bt::DETECTION_THRESHOLD,
            "standard": total[0],
            "reward_low_FP_rate": total[1],
            "reward_low_FN_rate": total[2],
            "rows": total_rows,
            "detections": detections,
            "seconds": seconds,
        })
    );
    Ok(ExitCode::SUCCESS)
}

/// Resident memory of this process, from /proc (Linux), in bytes.
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Says on stderr what was wrong with a backtest file's lines: the first few, then how
/// many more (a broken export should not flood the terminal).
fn report_problems(path: &Path, problems: &[String], progress: bool) {
    const SHOWN: usize = 3;
    if problems.is_empty() {
        return;
    }
    if progress {
        // Off the progress bar's line.
        eprintln!();
    }
    for p in problems.iter().take(SHOWN) {
        eprintln!("warning: {}: {p}", path.display());
    }
    match problems.len().saturating_sub(SHOWN) {
        0 => {}
        1 => eprintln!("warning: {}: 1 more line like these", path.display()),
        n => eprintln!("warning: {}: {n} more lines like these", path.display()),
    }
}

fn bench(data: &Path, config: Option<&Path>, series: usize) -> anyhow::Result<ExitCode> {
    use homeostat::backtest as bt;
    use homeostat::detect::Detector;
    let detection = match detection_settings(config, None) {
        Ok(d) => d,
        Err(code) => return Ok(code),
    };
    let files: Vec<Vec<bt::Row>> = bt::csv_files(data)?
        .iter()
        .map(|(_, p)| {
            // Missing values would only measure how fast they are skipped.
            bt::read_series(p).map(|s| s.rows.into_iter().filter(|r| r.value.is_finite()).collect())
        })
        .collect::<Result<_, _>>()?;
    let points: usize = files.iter().map(Vec::len).sum();
    anyhow::ensure!(points > 0, "{}: no data", data.display());

    // Throughput: the whole corpus, one fresh detector per file, on this thread only,
    // repeated until at least two seconds have passed.
    let started = std::time::Instant::now();
    let mut runs = 0u32;
    let mut opened = 0usize;
    while runs < 3 || started.elapsed().as_secs_f64() < 2.0 {
        for rows in &files {
            let mut d = Detector::new(&detection);
            for r in rows {
                opened += usize::from(
                    d.step(r.t, r.value).transition == homeostat::detect::Transition::Opened,
                );
            }
        }
        runs += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    let rate = points as f64 * runs as f64 / secs;

    // Memory: many detectors in steady state (each fed 1,000 points), resident growth per series.
    let sample: Vec<&bt::Row> = files.iter().flatten().take(1_000).collect();
    let before = rss_bytes();
    let mut detectors: Vec<Detector> = (0..series).map(|_| Detector::new(&detection)).collect();
    for d in detectors.iter_mut() {
        for r in &sample {
            d.step(r.t, r.value);
        }
    }
    let after = rss_bytes();
    let per_series = match (before, after) {
        (Some(b), Some(a)) if series > 0 => Some(a.saturating_sub(b) as f64 / series as f64),
        _ => None,
    };
    drop(detectors);

    println!("engine: {:?}, {} files, {points} points, {runs} runs in {secs:.2}s ({opened} anomalies opened)", detection.engine, files.len());
    println!("throughput: {:.2} M points/s on one core", rate / 1e6);
    match per_series {
        Some(b) => println!("memory: {b:.0} bytes per series in steady state ({series} series, resident-set growth)"),
        None => println!("memory: unavailable (no /proc/self/statm)"),
    }
    println!(
        "{}",
        serde_json::json!({"engine": format!("{:?}", detection.engine).to_lowercase(), "points_per_sec": rate, "bytes_per_series": per_series, "points": points, "runs": runs})
    );
    Ok(ExitCode::SUCCESS)
}

fn fit(path: &Path) -> anyhow::Result<ExitCode> {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let total = config.signals.len();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // On a terminal one bar redrawn in place (failures stay on their own lines); in a log,
    // one line per signal.
    let tty = std::io::stderr().is_terminal();
    let reports = runtime.block_on(homeostat::agent::fit_and_save(&config, |i, r| {
        let line = match &r.outcome {
            Ok((series, points)) => format!("{}: {series} series, {points} points", r.signal),
            Err(e) => format!("{}: FAILED: {e}", r.signal),
        };
        if !tty {
            eprintln!("[{}/{total}] {line}", i + 1);
        } else if r.outcome.is_err() {
            eprintln!("\r\x1b[2K{line}");
        } else {
            eprint!("\r\x1b[2K{} {line}", bar(i + 1, total));
        }
    }))?;
    if tty {
        eprintln!();
    }
    let failed = reports.iter().filter(|r| r.outcome.is_err()).count();
    println!(
        "fitted {} of {total} signals into {}",
        total - failed,
        config.agent.models_dir.display()
    );
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// A progress bar for a terminal line: `[#####-----] 5/10`.
fn bar(done: usize, total: usize) -> String {
    const WIDTH: usize = 24;
    let filled = (done * WIDTH)
        .checked_div(total)
        .unwrap_or(WIDTH)
        .min(WIDTH);
    format!(
        "[{}{}] {done}/{total}",
        "#".repeat(filled),
        "-".repeat(WIDTH - filled)
    )
}
