//! The daemon: fit baselines from history, then every interval query each signal,
//! score each series, open and close anomalies, hand them to the playbooks, and publish
//! metrics. This is the async shell: the per-signal rules live in [`watch`] (pure),
//! what a previous run left behind in [`restore`], and I/O comes in through the
//! [`Source`] seam and a listener the caller binds, so tests run it in process.

pub mod restore;
pub mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{watch as signal_watch, Mutex};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::act::approval::{queue_dir, ApprovalError, Approvals};
use crate::act::control::{Control, ControlError};
use crate::act::notify::{AlarmEvent, Alarms};
use crate::act::{Effectors, Executor};
use crate::anomaly::Anomaly;
use crate::audit::{
    AgentStarted, AgentStopped, AlertReceived, AnomalyClosed, AuditError, AuditLog, Auditor, Event,
    ModelsRefused, PlaybookRejected, PlaybookVersion,
};
use crate::config::Config;
use crate::detect::group::Incidents;
use crate::dispatch::{Dispatcher, PlanAges};
use crate::metrics::{Metrics, Snapshot};
use crate::models::{self, SignalModels};
use crate::playbook::{Limits, LiveWorld, Playbook};
use crate::server::{self, AppState};
use crate::source::{unix_now, Point, PromSource, Source, SourceError};
use crate::spool::{Spool, SpoolError};
use restore::Restored;
use watch::{SignalWatch, Timing, WatchEvent};

/// Why the daemon could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The audit log cannot be written: nothing may run without it.
    #[error("audit log: {0}")]
    Audit(#[from] AuditError),
    /// The HTTP listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The configured address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A signal handler could not be installed.
    #[error("cannot listen for signals: {source}")]
    Signal {
        /// Why.
        source: std::io::Error,
    },
    /// The Prometheus client could not be built.
    #[error("prometheus: {0}")]
    Source(#[from] SourceError),
    /// The spool of accepted alerts cannot be read or written.
    #[error("alert spool: {0}")]
    Spool(#[from] SpoolError),
    /// The approval queue cannot be read or written.
    #[error(transparent)]
    Approvals(#[from] ApprovalError),
    /// A control action at start (offline approvals) failed.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// A Kubernetes or OpenStack client could not be built from its settings.
    #[error("{0}")]
    Act(#[from] crate::act::ActError),
}

/// What the daemon runs with: a validated config, the playbooks that loaded (and the
/// problems of those that did not), where metrics come from, and where its own go.
pub struct Agent {
    /// The validated config.
    pub config: Config,
    /// Playbooks loaded at start.
    pub playbooks: Vec<Playbook>,
    /// Playbooks that failed to load, so the start record names them.
    pub rejected: Vec<String>,
    /// Where signals are queried.
    pub source: Arc<dyn Source>,
    /// The agent's metrics and health, shared with the HTTP server.
    pub metrics: Arc<Metrics>,
    /// The clients actions and script lookups go through.
    pub effectors: Effectors,
}

/// How often playbook files are checked for changes.
const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// Accepted alerts that may wait to be handled before the webhook answers 503
/// (Alertmanager retries): bounded by alert, not by payload.
const ALERT_QUEUE: usize = 10_000;

/// Alerts handled between two marks in the spool (and between two looks at a stop).
const ALERT_BATCH: usize = 64;

/// The spool of accepted alerts that belongs to an audit log: `<log>.spool`.
pub fn spool_path(audit_log: &std::path::Path) -> std::path::PathBuf {
    let mut s = audit_log.as_os_str().to_owned();
    s.push(".spool");
    std::path::PathBuf::from(s)
}

/// The longest silence of the loop that still counts as alive: generous, since a tick
/// may wait on a timed-out query.
pub fn liveness_window(config: &Config) -> Duration {
    config.agent.interval * 3
        + config.prometheus.timeout
        + config.agent.playbook_timeout
        + Duration::from_secs(30)
}

/// Runs the daemon against the configured Prometheus on the configured listen address
/// until `shutdown` resolves. Config and playbooks must be validated.
pub async fn start(
    config: Config,
    playbooks: Vec<Playbook>,
    rejected: Vec<String>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let listener = tokio::net::TcpListener::bind(config.agent.listen)
        .await
        .map_err(|source| AgentError::Listen {
            addr: config.agent.listen,
            source,
        })?;
    let source = Arc::new(PromSource::new(
        &config.prometheus.url,
        config.prometheus.timeout,
    )?);
    let metrics = Arc::new(Metrics::new(liveness_window(&config)));
    let effectors = crate::act::connect(&config).await?;
    let agent = Agent {
        config,
        playbooks,
        rejected,
        source,
        metrics,
        effectors,
    };
    run(agent, listener, shutdown).await
}

/// What the loop needs, passed around instead of a god object.
struct Context {
    source: Arc<dyn Source>,
    audit: Auditor,
    metrics: Arc<Metrics>,
    timing: Timing,
    models_dir: std::path::PathBuf,
    /// Series tracked over all signals at most.
    max_series: usize,
    /// Where anomalies are raised as Alertmanager alarms.
    alarms: Alarms,
}

/// Runs the daemon, serving HTTP on `listener`, until `shutdown` resolves.
pub async fn run(
    agent: Agent,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    // First, so that a SIGHUP from here on is a reload, never lost to the start.
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|source| AgentError::Signal { source })?;
    let Agent {
        config,
        playbooks,
        rejected,
        source,
        metrics,
        effectors,
    } = agent;
    let audit = Auditor::new(AuditLog::open(&config.agent.audit_log)?);
    metrics.watch_audit(audit.failure());
    let listen = listener.local_addr().ok();
    let (spool, recovered) = Spool::open(&spool_path(&config.agent.audit_log), ALERT_QUEUE)?;
    if recovered.pending > 0 || recovered.torn_bytes > 0 {
        info!(pending = recovered.pending, torn_bytes = recovered.torn_bytes, spool = %spool.path().display(), "alerts accepted before the last stop are taken up again");
    }
    let spool = Arc::new(spool);
    let (stop_tx, mut server_stop) = signal_watch::channel(false);
    let guard = crate::act::guard::Guard::new(config.guardrails.clone(), Default::default());
    let approvals = Arc::new(Approvals::open(&queue_dir(&config.agent.audit_log))?);
    let (approved_tx, mut approved_rx) = tokio::sync::mpsc::unbounded_channel();
    let control = Control::with_approvals(
        guard.clone(),
        audit.clone(),
        metrics.clone(),
        Some(approvals.clone()),
        Some(approved_tx),
    );
    let state = AppState {
        metrics: metrics.clone(),
        alerts: spool.clone(),
        control: Some(control.clone()),
    };
    let server = tokio::spawn(server::serve(
        listener,
        state,
        config.api.clone(),
        async move {
            let _ = server_stop.wait_for(|s| *s).await;
        },
    ));
    info!(listen = ?listen, audit_log = %audit.path().display(), signals = config.signals.len(), playbooks = playbooks.len(), "homeostat started");

    let limits = Limits {
        timeout: config.agent.playbook_timeout,
        ..Limits::default()
    };
    let executor = Executor {
        audit: audit.clone(),
        source: source.clone(),
        verify_every: config.agent.interval,
        limits: limits.clone(),
        world: Arc::new(LiveWorld::new(
            source.clone(),
            effectors.clone(),
            tokio::runtime::Handle::current(),
            config.prometheus.timeout,
        )),
        max_follow_ups: 3,
        effectors: effectors.clone(),
        mode_cap: config.agent.mode,
        metrics: metrics.clone(),
        guard: guard.clone(),
        approvals: Some(approvals),
    };
    let reconcile_effectors = effectors;
    let dispatcher = Dispatcher::new(
        config.playbooks.clone(),
        config.signals.iter().map(|s| s.name.clone()).collect(),
        playbooks,
        limits,
        executor,
        metrics.clone(),
        Incidents::new(
            config.agent.incident_window.as_secs_f64(),
            config.agent.incident_labels.clone(),
        ),
    );
    // What a previous run left behind: plans whose cooldowns still run, and anomalies
    // it stopped with open (one streaming pass over the log).
    let now = SystemTime::now();
    let mut plans = PlanAges::default();
    let mut unclosed = BTreeMap::new();
    let mut intents = BTreeMap::new();
    let mut tripped = BTreeSet::new();
    // Every segment of the chain, oldest first: a rotation must not make the agent
    // forget an open anomaly, a cooldown, an open breaker or an intent without outcome.
    for file in crate::audit::chain_files(audit.path()) {
        crate::audit::scan(
            &file,
            &[
                "anomaly_opened",
                "anomaly_closed",
                "playbook_matched",
                "playbook_suppressed",
                "action_intent",
                "action_outcome",
                "action_reconciled",
                "breaker_tripped",
                "breaker_reset",
            ],
            |r| {
                // One that does not read as its kind is skipped: it cannot be resumed from.
                if let Ok(event) = r.event() {
                    match &event {
                        Event::BreakerTripped(b) => {
                            tripped.insert(b.playbook.clone());
                        }
                        Event::BreakerReset(b) => {
                            tripped.remove(&b.playbook);
                        }
                        _ => {}
                    }
                    restore::track_open(&mut unclosed, &event);
                    restore::track_intent(&mut intents, r.seq, &event);
                    plans.note(&event, r.time(), now);
                }
            },
        )?;
    }
    for playbook in tripped {
        warn!(playbook = %playbook, "circuit breaker still open from a previous run: the playbook runs no more until reset");
        guard.restore_tripped(&playbook);
        metrics.breaker(&playbook, true);
    }
    // An action a stop cut off between its intent and its outcome may or may not have
    // happened: read its target and record what is there. Running it again could do
    // it twice (a second reboot, a second drain); the incident is over either way.
    for (intent_seq, intent) in intents.into_values() {
        let observed = reconcile_effectors.observe(&intent.action).await;
        warn!(anomaly = %intent.anomaly_id, playbook = %intent.playbook, step = intent.step, intent_seq, observed = ?observed, "action left without outcome by a stop: reconciled, not re-run: {}", intent.action);
        audit
            .record(restore::reconciled(intent_seq, &intent, observed))
            .await?;
    }
    control.take_offline_approvals().await?;
    let mut dispatcher = dispatcher;
    let restored = dispatcher.restore_cooldowns(plans);
    if restored > 0 {
        info!(
            restored,
            "cooldowns of recent plans restored from the audit log"
        );
    }
    let alarms = Alarms::start(&config.notify, metrics.clone());
    let ctx = Context {
        source,
        audit,
        metrics,
        timing: Timing {
            interval: config.agent.interval,
            series_ttl: config.agent.series_ttl,
            max_backoff: config.agent.max_backoff,
        },
        models_dir: config.agent.models_dir.clone(),
        max_series: config.agent.max_series,
        alarms,
    };
    ctx.audit
        .record(Event::AgentStarted(AgentStarted {
            version: env!("CARGO_PKG_VERSION").into(),
            signals: config.signals.iter().map(|s| s.name.clone()).collect(),
            playbooks: dispatcher
                .playbooks()
                .iter()
                .map(|p| PlaybookVersion {
                    name: p.name.clone(),
                    path: p.path.clone(),
                    sha256: p.sha256.clone(),
                })
                .collect(),
            rejected_playbooks: rejected.clone(),
        }))
        .await?;
    for problem in &rejected {
        ctx.audit
            .record(Event::PlaybookRejected(PlaybookRejected::AtStart {
                stage: "start".into(),
                error: problem.clone(),
            }))
            .await?;
    }

    let dispatcher = Arc::new(Mutex::new(dispatcher));
    // Alerts are taken from the spool by a task of their own: a burst of them never
    // holds up the detection tick.
    let (intake_stop, intake_stopped) = signal_watch::channel(false);
    let mut intake = tokio::spawn(intake(
        ctx.audit.clone(),
        spool.clone(),
        dispatcher.clone(),
        intake_stopped,
    ));
    let start = Instant::now();
    let mut watches: Vec<SignalWatch> = config
        .signals
        .iter()
        .map(|cfg| SignalWatch::new(cfg.clone(), config.agent.max_series_per_signal, start))
        .collect();

    tokio::pin!(shutdown);
    let save_every = config.agent.models_save_every;
    let result: Result<(), AuditError> = async {
        // Fitting may take a while on a big store; shutdown must still be prompt.
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            r = fit_all(&ctx, &mut watches) => r?,
        }
        for r in restore::resume(&mut watches, std::mem::take(&mut unclosed)) {
            match &r {
                Restored::Resumed { anomaly: u, .. } => {
                    info!(signal = %u.signal, series = %u.labels, id = %u.id, "anomaly resumed")
                }
                Restored::Closed { anomaly: u, reason } => {
                    info!(signal = %u.signal, series = %u.labels, id = %u.id, reason, "anomaly closed")
                }
            }
            let audit_seq = ctx.audit.record(r.event()).await?;
            if let Restored::Resumed { anomaly: u, .. } = &r {
                dispatcher
                    .lock()
                    .await
                    .resumed(&u.id, &u.incident, &u.handled, u.started_unix);
                // Its alarm goes on firing: same labels, so Alertmanager sees one alert.
                if let Some(cfg) = config.signals.iter().find(|s| s.name == u.signal && s.alert) {
                    ctx.alarms.send(AlarmEvent::Open {
                        anomaly: Box::new(Anomaly {
                            id: u.id.clone(),
                            signal: u.signal.clone(),
                            labels: u.labels.clone(),
                            peak_score: u.peak_score,
                            score: u.peak_score,
                            evidence: u.evidence.clone(),
                            seasonal: u.seasonal,
                            started_unix: u.started_unix,
                            started_at: crate::source::rfc3339(u.started_unix),
                            incident: u.incident.clone(),
                            ..Anomaly::default()
                        }),
                        severity: cfg.severity.clone(),
                        audit_seq,
                        resumed: true,
                    });
                }
            }
        }
        let mut ticker = tokio::time::interval(ctx.timing.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Playbook files are polled for changes; SIGHUP reloads at once.
        let mut reload = tokio::time::interval(RELOAD_EVERY);
        reload.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut save = tokio::time::interval_at(Instant::now() + save_every, save_every);
        save.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // A write that failed in an incident task latched the log: stop here too.
            ctx.audit.check()?;
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                _ = ticker.tick() => {}
                r = &mut intake => {
                    // It ends on its own only when the audit log fails, or by a panic,
                    // which must stop the agent as a failure (never as a clean exit).
                    match r {
                        Ok(result) => return result,
                        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                        Err(_) => return Ok(()),
                    }
                }
                _ = reload.tick() => {
                    dispatcher.lock().await.reload().await?;
                    continue;
                }
                _ = save.tick() => {
                    save_models(&ctx, &watches).await;
                    continue;
                }
                Some(approved) = approved_rx.recv() => {
                    let (id, playbook) = (approved.pending.id.clone(), approved.pending.playbook.clone());
                    let anomaly_id = approved.pending.anomaly.id.clone();
                    if !dispatcher.lock().await.run_approved(approved) {
                        error!(id = %id, playbook = %playbook, "approved plan not run: its playbook is no longer loaded");
                        ctx.audit
                            .record(Event::PlaybookFailed(crate::audit::PlaybookFailed {
                                anomaly_id,
                                playbook,
                                stage: "approval".into(),
                                error: format!("approved plan {id} not run: the playbook is no longer loaded"),
                            }))
                            .await?;
                    }
                    continue;
                }
                _ = hangup.recv() => {
                    info!("SIGHUP received: reloading playbooks");
                    dispatcher.lock().await.reload().await?;
                    continue;
                }
            }
            control.sync().await?;
            rotate_audit(&ctx.audit, &config).await?;
            if let Err(e) = control.expire().await {
                match e {
                    ControlError::Audit(e) => return Err(e),
                    e => warn!(error = %e, "approval queue"),
                }
            }
            // Queries are cancellable; processing (audit writes, dispatch) runs to completion.
            let results = tokio::select! {
                _ = &mut shutdown => return Ok(()),
                r = query_all(&ctx, &watches) => r,
            };
            for (idx, result) in results {
                let tracked: usize = watches.iter().map(SignalWatch::len).sum();
                let room = ctx.max_series.saturating_sub(tracked);
                process(&ctx, &dispatcher, &mut watches[idx], result, room).await?;
            }
            dispatcher.lock().await.reap();
            publish(&ctx, &watches);
        }
    }
    .await;

    info!("shutting down");
    // What was learned survives the restart.
    save_models(&ctx, &watches).await;
    // No new alerts first, then intake stops between batches (what it has not handled
    // stays in the spool), then the plans: the count below is then final.
    let _ = stop_tx.send(true);
    if tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .is_err()
    {
        warn!("http server did not stop within 5s");
    }
    let _ = intake_stop.send(true);
    if !intake.is_finished() {
        let _ = (&mut intake).await;
    }
    // Plans and verifications in flight are abandoned: their records so far say how far
    // they got.
    let interrupted = dispatcher.lock().await.stop().await;
    let pending = spool.pending();
    if pending > 0 {
        info!(pending, spool = %spool.path().display(), "accepted alerts kept for the next start");
    }
    let stopped = ctx
        .audit
        .record(Event::AgentStopped(AgentStopped {
            reason: if result.is_ok() { "signal" } else { "error" }.into(),
            incidents_interrupted: interrupted,
            alerts_pending: Some(pending),
        }))
        .await;
    if stopped.is_ok() {
        // The stop record signed too: a cut tail after it shows against the key.
        checkpoint(&ctx.audit, &config).await;
    }
    result?;
    stopped?;
    Ok(())
}

/// Takes accepted alerts from the spool, in order, until `stop`: audits each, hands
/// firing ones to the playbooks (grouping and cooldown dedupe Alertmanager's repeated
/// notifications), and marks them done in the spool once their records are written. Ends
/// early only when the audit log fails.
async fn intake(
    audit: Auditor,
    spool: Arc<Spool>,
    dispatcher: Arc<Mutex<Dispatcher>>,
    mut stop: signal_watch::Receiver<bool>,
) -> Result<(), AuditError> {
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return Ok(()),
            _ = spool.arrived() => {}
        }
        loop {
            // The spool's lock is held through the webhook's fsyncs: wait for it off the
            // async threads.
            let s = spool.clone();
            let batch = tokio::task::spawn_blocking(move || s.peek(ALERT_BATCH))
                .await
                .unwrap_or_default();
            let Some(&(last, _)) = batch.last() else {
                break;
            };
            for (_, alert) in batch {
                let event = Anomaly::from_alert(&alert, unix_now());
                info!(alert = ?event.signal, status = ?alert.status, labels = %event.labels, "alert received");
                audit
                    .record(Event::AlertReceived(AlertReceived {
                        id: event.id.clone(),
                        status: alert.status.clone(),
                        labels: event.labels.clone(),
                        annotations: alert.annotations.clone(),
                        starts_at: alert.starts_at.clone(),
                    }))
                    .await?;
                if alert.status == "firing" {
                    dispatcher
                        .lock()
                        .await
                        .respond(&event, &mut BTreeSet::new())
                        .await?;
                }
            }
            let s = spool.clone();
            match tokio::task::spawn_blocking(move || s.done(last)).await {
                Ok(Ok(())) => {}
                // Handled but not marked: the next start hands them over again, and the
                // cooldowns read back from the audit log hold their playbooks.
                Ok(Err(e)) => error!(error = %e, "cannot mark alerts handled in the spool"),
                Err(e) => error!(error = %e, "spool task failed"),
            }
            if *stop.borrow() {
                return Ok(());
            }
        }
    }
}

/// Starts every signal's baselines: from saved models where there are usable ones
/// (then catching up on the history since they were saved), else from history alone.
async fn fit_all(ctx: &Context, watches: &mut [SignalWatch]) -> Result<(), AuditError> {
    let now = unix_now();
    let mut room = ctx.max_series;
    for w in watches.iter_mut() {
        let cfg = w.config().clone();
        let d = &cfg.detection;
        // The whole history is fetched even with saved models: series that appeared since
        // the save need all of it; known ones skip what they have seen.
        let since = now - d.history.as_secs_f64();
        match models::load(&ctx.models_dir, &cfg.name, d) {
            Ok(Some(saved)) => {
                let age = now - saved.updated_to;
                let dropped = w.load_saved(saved, &mut room, Instant::now());
                capped(ctx, &cfg.name, dropped, "saved models");
                info!(signal = %cfg.name, series = w.len(), age_secs = format!("{age:.0}"), "loaded saved models");
            }
            Ok(None) => {}
            Err(e) => {
                warn!(signal = %cfg.name, error = %e, "saved models not used; fitting from history");
                ctx.audit
                    .record(Event::ModelsRefused(ModelsRefused {
                        signal: cfg.name.clone(),
                        reason: e.to_string(),
                    }))
                    .await?;
            }
        }
        let span = Duration::from_secs_f64((now - since).max(d.history_step.as_secs_f64()));
        match ctx
            .source
            .range(&cfg.query, now, span, d.history_step)
            .await
        {
            Ok(histories) => {
                let points: usize = histories.iter().map(|h| h.samples.len()).sum();
                let dropped = w.fit_history(histories, &mut room, Instant::now());
                capped(ctx, &cfg.name, dropped, "history");
                info!(signal = %cfg.name, series = w.len(), points, "fitted baselines from history");
            }
            Err(e) => {
                warn!(signal = %cfg.name, error = %e, "cannot fetch history; series will warm up from live data")
            }
        }
        w.fitted(Instant::now());
    }
    Ok(())
}

/// Warns about and counts series the caps left out of saved models or history.
fn capped(ctx: &Context, signal: &str, dropped: usize, from: &str) {
    if dropped > 0 {
        warn!(signal, dropped, from, "series cap reached: series left out (raise agent.max_series_per_signal or agent.max_series, or aggregate the query)");
        ctx.metrics.series_dropped(signal, dropped);
    }
}

/// Queries every signal that is due, concurrently.
async fn query_all(
    ctx: &Context,
    watches: &[SignalWatch],
) -> Vec<(usize, Result<Vec<Point>, SourceError>)> {
    let now = Instant::now();
    let mut set = JoinSet::new();
    for (idx, w) in watches.iter().enumerate() {
        if !w.is_due(now) {
            continue;
        }
        let source = ctx.source.clone();
        let query = w.config().query.clone();
        set.spawn(async move { (idx, source.instant(&query).await) });
    }
    let mut out = Vec::with_capacity(set.len());
    while let Some(r) = set.join_next().await {
        match r {
            Ok(v) => out.push(v),
            Err(e) => error!(error = %e, "query task failed"),
        }
    }
    // Deterministic processing order, whatever order the answers came in.
    out.sort_by_key(|(i, _)| *i);
    out
}

/// One signal's query result: through its state machine, then each event logged,
/// audited, counted and, for anomalous points, handed to the playbooks.
async fn process(
    ctx: &Context,
    dispatcher: &Mutex<Dispatcher>,
    w: &mut SignalWatch,
    result: Result<Vec<Point>, SourceError>,
    mut room: usize,
) -> Result<(), AuditError> {
    let mut events = Vec::new();
    if let Some(points) = w.accept(result, Instant::now(), &ctx.timing, &mut events) {
        if let Some(unknown) = w.wants_history(&points, room, Instant::now()) {
            fetch_history(ctx, w, unknown, &mut room).await;
        }
        w.score(
            points,
            Instant::now(),
            SystemTime::now(),
            &ctx.timing,
            &mut room,
            &mut events,
        );
    }
    let name = w.config().name.clone();
    for event in events {
        match event {
            WatchEvent::QueryFailed {
                error,
                kind,
                failures,
                retry_in,
            } => {
                warn!(signal = %name, %error, failures, retry_in = ?retry_in, "query failed; series marked stale");
                ctx.metrics.query_failed(&name, kind);
            }
            WatchEvent::QueryRecovered { after_failures } => {
                info!(signal = %name, after_failures, "query recovered");
            }
            WatchEvent::NoSeries => {
                warn!(signal = %name, "query returned no series; series marked stale");
                ctx.metrics.query_empty(&name);
            }
            WatchEvent::Opened(mut a) => {
                dispatcher.lock().await.opened(&mut a);
                warn!(signal = %name, series = %a.labels, value = a.value, expected = a.expected, score = format!("{:.2}", a.score), evidence = %a.evidence, seasonal = a.seasonal, id = %a.id, incident = %a.incident, "anomaly opened");
                let alarm = w.config().alert.then(|| a.clone());
                let audit_seq = ctx.audit.record(Event::AnomalyOpened(a)).await?;
                ctx.metrics.anomaly_opened(&name);
                if let Some(anomaly) = alarm {
                    ctx.alarms.send(AlarmEvent::Open {
                        anomaly: Box::new(anomaly),
                        severity: w.config().severity.clone(),
                        audit_seq,
                        resumed: false,
                    });
                }
            }
            WatchEvent::Closed {
                id,
                labels,
                duration_secs,
                peak_score,
                reason,
            } => {
                info!(signal = %name, series = %labels, id = %id, duration_secs, reason, "anomaly closed");
                dispatcher.lock().await.closed(&id);
                ctx.alarms.send(AlarmEvent::Close { id: id.clone() });
                ctx.audit
                    .record(Event::AnomalyClosed(AnomalyClosed {
                        id,
                        signal: name.clone(),
                        labels,
                        duration_secs,
                        peak_score,
                        reason: reason.into(),
                    }))
                    .await?;
            }
            WatchEvent::Anomalous(a) => {
                let mut handled = w.handled(&a.labels);
                dispatcher.lock().await.respond(&a, &mut handled).await?;
                w.mark_handled(&a.labels, handled);
            }
            WatchEvent::Forgotten { labels } => {
                info!(signal = %name, series = %labels, "series vanished; forgotten");
            }
            WatchEvent::Capped { dropped, first } => {
                if first {
                    warn!(signal = %name, dropped, tracked = w.len(), "series cap reached: points of further series are dropped (counted in homeostat_series_dropped_total; raise agent.max_series_per_signal or agent.max_series, or aggregate the query)");
                }
                ctx.metrics.series_dropped(&name, dropped);
            }
        }
    }
    Ok(())
}

/// Seals the audit log into a segment once it reaches `agent.audit_max_bytes` (the
/// chain goes on in a new file), signing a checkpoint first when a key is configured.
async fn rotate_audit(audit: &Auditor, config: &Config) -> Result<(), AuditError> {
    let size = std::fs::metadata(audit.path())
        .map(|m| m.len())
        .unwrap_or(0);
    if size < config.agent.audit_max_bytes {
        return Ok(());
    }
    checkpoint(audit, config).await;
    if let Some(sealed) = audit.rotate(config.agent.audit_max_bytes).await? {
        info!(segment = %sealed.segment.display(), "audit log rotated: the chain goes on in a new file");
    }
    Ok(())
}

/// Signs a checkpoint of the log's head when `agent.audit_signing_key` is set; a key
/// that cannot be read is logged (the chain itself goes on).
async fn checkpoint(audit: &Auditor, config: &Config) {
    let Some(path) = &config.agent.audit_signing_key else {
        return;
    };
    match crate::audit::read_signing_key(path) {
        Ok(key) => match audit.checkpoint(key).await {
            Ok(seq) => info!(seq, "audit checkpoint signed"),
            Err(e) => warn!(error = %e, "audit checkpoint not written"),
        },
        Err(e) => {
            warn!(key = %path.display(), error = %e, "audit signing key unreadable: no checkpoint")
        }
    }
}

/// Fits series that appeared after start from their history.
async fn fetch_history(
    ctx: &Context,
    w: &mut SignalWatch,
    unknown: Vec<crate::labels::Labels>,
    room: &mut usize,
) {
    let cfg = w.config().clone();
    let d = &cfg.detection;
    match ctx
        .source
        .range(&cfg.query, unix_now(), d.history, d.history_step)
        .await
    {
        Ok(histories) => {
            debug!(signal = %cfg.name, series = unknown.len(), "fitting new series from history");
            w.adopt(histories, &unknown, room, Instant::now());
        }
        Err(e) => {
            debug!(signal = %cfg.name, error = %e, "no history for new series; warming up live")
        }
    }
}

/// Publishes this tick's snapshot to the metrics.
fn publish(ctx: &Context, watches: &[SignalWatch]) {
    let mut snapshot = Snapshot {
        audit_records: ctx.audit.written(),
        ..Snapshot::default()
    };
    for w in watches {
        let (health, gauges) = w.gauges();
        snapshot.signals.insert(w.config().name.clone(), health);
        snapshot.series.extend(gauges);
    }
    snapshot
        .series
        .sort_by(|a, b| (&a.signal, &a.labels).cmp(&(&b.signal, &b.labels)));
    ctx.metrics.tick(snapshot);
}

/// Saves every signal's models; blocking file I/O runs off the async threads.
async fn save_models(ctx: &Context, watches: &[SignalWatch]) {
    let saved_at = unix_now();
    let batch: Vec<SignalModels> = watches.iter().filter_map(|w| w.models(saved_at)).collect();
    let dir = ctx.models_dir.clone();
    match tokio::task::spawn_blocking(move || models::save_all(&dir, &batch)).await {
        Ok(results) => {
            for r in results {
                if let Err(e) = r {
                    warn!(error = %e, "cannot save models");
                }
            }
            debug!(dir = %ctx.models_dir.display(), "models saved");
        }
        Err(e) => error!(error = %e, "model save task failed"),
    }
}

/// What `homeostat fit` did for one signal.
#[derive(Debug, Clone)]
pub struct FitReport {
    /// The signal.
    pub signal: String,
    /// Series fitted and points read, or why none could be.
    pub outcome: Result<(usize, usize), String>,
}

/// Fits every signal from Prometheus history and saves the models (`homeostat fit`);
/// `progress` hears about each signal as it is done.
pub async fn fit_and_save(
    config: &Config,
    mut progress: impl FnMut(usize, &FitReport),
) -> Result<Vec<FitReport>, AgentError> {
    let source = PromSource::new(&config.prometheus.url, config.prometheus.timeout)?;
    let now = unix_now();
    let mut reports = Vec::new();
    for (i, cfg) in config.signals.iter().enumerate() {
        let d = &cfg.detection;
        let outcome = match Source::range(&source, &cfg.query, now, d.history, d.history_step).await
        {
            Err(e) => Err(e.to_string()),
            Ok(histories) if histories.is_empty() => {
                Err("the query returned no series over the history".to_string())
            }
            Ok(histories) => {
                let points: usize = histories.iter().map(|h| h.samples.len()).sum();
                let mut w = SignalWatch::new(
                    cfg.clone(),
                    config.agent.max_series_per_signal,
                    Instant::now(),
                );
                let mut room = config.agent.max_series;
                w.fit_history(histories, &mut room, Instant::now());
                w.fitted(Instant::now());
                let models = w.models(unix_now()).expect("fitted above");
                let n = models.series.len();
                let dir = config.agent.models_dir.clone();
                match tokio::task::spawn_blocking(move || models::save(&dir, &models)).await {
                    Ok(Ok(_)) => Ok((n, points)),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            }
        };
        let report = FitReport {
            signal: cfg.name.clone(),
            outcome,
        };
        progress(i, &report);
        reports.push(report);
    }
    Ok(reports)
}
