//! The thin binary: parse the CLI, start tracing, call the library, map errors to exit codes
//! (0 ok, 1 failure, 2 usage or config error).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use homeostat::backtest::{self, Backtest, BacktestError, DataSet, SettingsError};
use homeostat::bench;
use homeostat::cli::{
    ApprovalsCommand, AuditCommand, BreakerCommand, Cli, Command, PlaybookCommand,
};
use homeostat::playbook::Limits;
use homeostat::progress::Progress;
use homeostat::report::{self, load_config, CasesError, FitLine, Problems, TrialError};

/// Writes to stdout. A closed pipe (`homeostat audit list … | head`) ends the program
/// quietly, as ripgrep does; any other write error ends it with exit code 1.
fn emit(args: std::fmt::Arguments) {
    use std::io::Write as _;
    if let Err(e) = std::io::stdout().lock().write_fmt(args) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write output: {e}");
        std::process::exit(1);
    }
}

/// `print!` through [`emit`].
macro_rules! out {
    ($($arg:tt)*) => { emit(format_args!($($arg)*)) };
}

/// `println!` through [`emit`].
macro_rules! outln {
    ($($arg:tt)*) => { emit(format_args!("{}\n", format_args!($($arg)*))) };
}

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
    homeostat::act::install_crypto_provider();
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) if is_usage(&e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Arguments that do not fit together (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Usage(String);

/// A usage or config error (exit 2, printed as it is); anything else is a failure (exit 1).
fn is_usage(e: &anyhow::Error) -> bool {
    e.is::<Problems>()
        || e.is::<Usage>()
        || e.is::<SettingsError>()
        || matches!(e.downcast_ref(), Some(BacktestError::NoFiles { .. }))
        || matches!(e.downcast_ref(), Some(CasesError::Empty { .. }))
        || matches!(
            e.downcast_ref(),
            Some(TrialError::NoAnomaly { .. } | TrialError::Load(_))
        )
}

/// 0 if `ok`, else `failure`.
fn code(ok: bool, failure: u8) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(failure)
    }
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Check { config: path } => {
            out!("{}", report::check(&path, &load_config(&path)?)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { config } => run(&config),
        Command::Pause { config, reason, by } => control(&config, |c| async move {
            homeostat::remote::pause(&c, &reason, &who(by)).await
        }),
        Command::Resume { config, by } => control(&config, |c| async move {
            homeostat::remote::resume(&c, &who(by)).await
        }),
        Command::Status { config } => {
            control(
                &config,
                |c| async move { homeostat::remote::status(&c).await },
            )
        }
        Command::Approvals {
            config,
            by,
            command,
        } => {
            let config = config.context("--config is required")?;
            let by = who(by);
            control(&config, |c| async move {
                match command {
                    ApprovalsCommand::List => homeostat::remote::approvals(&c).await,
                    ApprovalsCommand::Show { id } => homeostat::remote::approval(&c, &id).await,
                    ApprovalsCommand::Approve { id, hash, reason } => {
                        homeostat::remote::approve(&c, &id, &hash, &by, &reason).await
                    }
                    ApprovalsCommand::Reject { id, reason } => {
                        homeostat::remote::reject(&c, &id, &by, &reason).await
                    }
                }
            })
        }
        Command::Breaker {
            config,
            command:
                BreakerCommand::Reset {
                    playbook,
                    by,
                    reason,
                },
        } => {
            let config = config.context("--config is required")?;
            control(&config, |c| async move {
                homeostat::remote::reset_breaker(&c, &playbook, &who(by), &reason).await
            })
        }
        Command::Playbook {
            command: PlaybookCommand::List { config: path },
        } => {
            let config = load_config(&path)?;
            let (playbooks, problems) = homeostat::load_playbooks(&config, &Limits::default());
            out!("{}", report::PlaybookListing(&playbooks));
            eprint!("{}", report::Rejected(&problems));
            Ok(code(problems.is_empty(), 2))
        }
        Command::Playbook {
            command: PlaybookCommand::Test { path, .. },
        } if path.is_dir() => {
            let cases = report::Cases::find(&path)?;
            outln!("{cases}");
            let tally = cases.run(|case| outln!("{case}"));
            outln!("{tally}");
            Ok(code(tally.all_passed(), 1))
        }
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
            let (anomaly, world, results) =
                (anomaly.as_deref(), world.as_deref(), results.as_deref());
            let plans = report::trial(&path, anomaly, world, results, |note| eprintln!("{note}"))?;
            out!("{}", report::Plans::new(&plans, json));
            Ok(ExitCode::SUCCESS)
        }
        Command::Fit { config } => fit(&config),
        Command::Backtest {
            data,
            labels,
            folds,
            incidents,
            out,
            config,
            signal,
            details,
            plot,
        } => {
            if !labels.is_empty() && labels.len() != data.len() {
                anyhow::bail!(Usage(format!(
                    "{} --data but {} --labels: give one labels file per data set, in the same order",
                    data.len(),
                    labels.len()
                )));
            }
            if config.len() > 1 && !folds {
                anyhow::bail!(Usage(
                    "several --config are candidates for --folds to choose among".into()
                ));
            }
            let sets: Vec<DataSet> = data
                .iter()
                .enumerate()
                .map(|(i, d)| DataSet {
                    data: d,
                    labels: labels.get(i).map(PathBuf::as_path),
                })
                .collect();
            let configs: Vec<Option<&Path>> = match config.len() {
                0 => vec![None],
                _ => config.iter().map(|c| Some(c.as_path())).collect(),
            };
            let progress = Progress::stderr();
            let mut reports = Vec::with_capacity(configs.len());
            for path in &configs {
                let detection = backtest::settings(*path, signal.as_deref())?;
                let backtest = Backtest {
                    sets: &sets,
                    out: out.as_deref(),
                    plot: plot.as_deref(),
                    detection: &detection,
                    details,
                };
                reports.push(backtest.run(|event| event.show(&progress))?);
            }
            progress.finish();
            if !folds {
                for report in &reports {
                    out!("{report}");
                    if let Some(within) = incidents {
                        let rows = backtest::incidents::count(&report.files, within);
                        out!(
                            "{}",
                            backtest::incidents::IncidentTable {
                                within,
                                rows: &rows
                            }
                        );
                    }
                    outln!("{}", report.summary());
                }
            } else {
                let tables: Vec<_> = reports
                    .into_iter()
                    .map(|r| r.scores.unwrap_or_default())
                    .collect();
                let names = configs
                    .iter()
                    .map(|c| c.map_or("built-in defaults".into(), |p| p.display().to_string()))
                    .collect();
                let cv = backtest::cv::cross_validate(names, &tables);
                out!("{cv}");
                outln!("{}", cv.summary());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            data,
            config,
            series,
        } => {
            let detection = backtest::settings(config.as_deref(), None)?;
            let report = bench::measure(&data, &detection, series)?;
            out!("{report}");
            outln!("{}", report.summary());
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit { command } => audit(command),
    }
}

fn audit(command: AuditCommand) -> anyhow::Result<ExitCode> {
    use homeostat::audit;
    match command {
        AuditCommand::Verify {
            log,
            pubkey,
            signed_at_least,
        } => {
            let key = pubkey.as_deref().map(audit::read_public_key).transpose()?;
            let verdict = report::AuditVerdict::of(&log, key.as_ref(), signed_at_least);
            if verdict.intact() {
                outln!("{verdict}");
            } else {
                eprintln!("{verdict}");
            }
            Ok(code(verdict.intact(), 1))
        }
        AuditCommand::List {
            log,
            filter,
            segments,
            width,
        } => {
            let files = files(log, segments);
            out!(
                "{}",
                report::AuditTable::read(&files, &filter.to_filter(), width)?
            );
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Show {
            incident,
            log,
            width,
        } => {
            out!("{}", report::AuditIncident::read(&log, &incident, width)?);
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Export {
            log,
            filter,
            segments,
        } => {
            let filter = filter.to_filter();
            let files = files(log, segments);
            for file in &files {
                for r in audit::records(file)? {
                    let (line, rec) = r?;
                    if filter.matches(&rec) {
                        outln!("{line}");
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Seal { log, reason } => {
            outln!("{}", report::AuditSeal::run(&log, &reason)?);
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Rotate { log, max_bytes } => {
            let sealed = audit::rotate(&log, max_bytes)?;
            outln!("{}", report::AuditRotate { log: &log, sealed });
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Checkpoint { log, key } => {
            let signing = audit::read_signing_key(&key)?;
            let mut opened = audit::AuditLog::open(&log)?;
            let seq = opened.checkpoint(&signing)?;
            outln!(
                "{}: checkpoint {seq} signs record {} with the key of {}",
                log.display(),
                seq - 1,
                audit::public_key_path(&key).display()
            );
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Keygen { out } => {
            let public = audit::generate_key(&out)?;
            outln!(
                "{}: private key (mode 0600; keep it away from whoever can write the log)\n{}: public key {}",
                out.display(),
                audit::public_key_path(&out).display(),
                hex::encode(public.as_bytes())
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The log alone, or with `segments` its whole chain, oldest first.
fn files(log: std::path::PathBuf, segments: bool) -> Vec<std::path::PathBuf> {
    if segments {
        homeostat::audit::chain_files(&log)
    } else {
        vec![log]
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Who runs a control command: `--by`, else `$USER`, else `cli`.
fn who(by: Option<String>) -> String {
    by.or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "cli".into())
}

/// Runs a control command against the agent (or its files) and prints the answer.
fn control<F, Fut>(path: &Path, f: F) -> anyhow::Result<ExitCode>
where
    F: FnOnce(homeostat::config::Config) -> Fut,
    Fut: std::future::Future<
        Output = Result<homeostat::remote::Answer, homeostat::remote::RemoteError>,
    >,
{
    let config = load_config(path)?;
    let answer = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f(config))?;
    outln!("{answer}");
    Ok(ExitCode::SUCCESS)
}

fn run(path: &Path) -> anyhow::Result<ExitCode> {
    let runtime = runtime()?;
    let signals = Signals::catch(&runtime).context("cannot listen for signals")?;
    let config = load_config(path)?;
    let limits = Limits {
        timeout: config.agent.playbook_timeout,
        ..Limits::default()
    };
    let (playbooks, rejected) = homeostat::load_playbooks(&config, &limits);
    // A bad playbook is rejected alone; the others run.
    for p in &rejected {
        tracing::error!("playbook rejected: {p}");
    }
    runtime.block_on(async {
        homeostat::agent::start(config, playbooks, rejected, signals.shutdown())
            .await
            .context("homeostat run")
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The daemon's signals, caught from the moment its runtime exists, before the config
/// is read: SIGHUP's default action is to end the process, so one sent while the
/// agent starts (a reload racing a restart) must not kill it, and a SIGTERM or SIGINT
/// then must still stop it cleanly once it runs. The agent reads SIGHUP itself (it
/// reloads playbooks); until it does, one is caught and has nothing to reload.
struct Signals {
    term: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    _hangup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers (for the life of the process: tokio never removes them).
    fn catch(runtime: &tokio::runtime::Runtime) -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        let _entered = runtime.enter();
        Ok(Signals {
            _hangup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves on the first SIGINT or SIGTERM, including one caught before it is awaited.
    async fn shutdown(mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => tracing::info!("SIGINT received"),
            _ = self.term.recv() => tracing::info!("SIGTERM received"),
        }
    }
}

fn fit(path: &Path) -> anyhow::Result<ExitCode> {
    let config = load_config(path)?;
    let signals = config.signals.len();
    let runtime = runtime()?;
    let progress = Progress::stderr();
    let reports = runtime.block_on(homeostat::agent::fit_and_save(&config, |i, r| {
        // A failure stays on screen; a success only moves the bar.
        match r.outcome {
            Ok(_) => progress.step(i + 1, signals, FitLine(r)),
            Err(_) => progress.failed(i + 1, signals, FitLine(r)),
        }
    }))?;
    progress.finish();
    let fitted = report::Fitted::new(&reports, signals, &config.agent.models_dir);
    outln!("{fitted}");
    Ok(code(fitted.failed() == 0, 1))
}
