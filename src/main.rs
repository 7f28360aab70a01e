//! The thin binary: parse the CLI, start tracing, call the library, map errors to exit codes
//! (0 ok, 1 failure, 2 usage or config error).

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use homeostat::audit;
use homeostat::cli::{AuditCommand, Cli, Command};
use homeostat::config::Config;
use homeostat::playbook::Limits;

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
            .map(|p| format!("{} -> {}", p.name, p.trigger.signal))
            .collect::<Vec<_>>()
            .join(", "),
    );
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
        homeostat::agent::run(config, playbooks, rejected, shutdown_signal())
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
