//! The daemon: fit baselines from history, then every interval query each signal,
//! score each series, open and close anomalies, run matching playbooks, and publish
//! telemetry. I/O happens here and at the edges it calls; detection stays pure.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use crate::act::Executor;
use crate::anomaly::{anomaly_id, AlertmanagerAlert, Anomaly};
use crate::audit::{
    AgentStarted, AgentStopped, AlertReceived, AnomalyClosed, AnomalyResumed, AuditError, AuditLog,
    Auditor, Event, PlaybookRejected, PlaybookVersion,
};
use crate::config::{Config, SignalConfig};
use crate::detect::{Assessment, Detector, Transition};
use crate::dispatch::{Dispatcher, PlanAges};
use crate::labels::Labels;
use crate::models::{self, SeriesModel, SignalModels};
use crate::playbook::{Limits, LiveWorld, Playbook};
use crate::server::{self, AppState, SeriesGauge, SharedTelemetry, SignalHealth, Telemetry};
use crate::source::{unix_now, History, Point, PromSource, SourceError};

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
}

/// An open anomaly's bookkeeping.
struct OpenAnomaly {
    id: String,
    started: SystemTime,
    peak_score: f64,
    /// What made the series unusual when it opened, and whether against its daily
    /// profile: why it opened, for as long as it stays open.
    evidence: String,
    seasonal: bool,
    /// Playbooks already run for it: one plan per playbook per anomaly.
    handled: BTreeSet<String>,
}

/// Everything known about one series.
struct Series {
    detector: Detector,
    last_seen: Instant,
    stale: bool,
    value: f64,
    assessment: Option<Assessment>,
    open: Option<OpenAnomaly>,
}

/// One signal's series and query health.
struct SignalState {
    cfg: SignalConfig,
    series: HashMap<Labels, Series>,
    up: bool,
    failures: u32,
    next_attempt: Instant,
    last_refit: Option<Instant>,
    /// Unix seconds of the newest point any of its baselines has seen.
    updated_to: f64,
}

/// What the loop needs, passed around instead of a god object.
struct Context {
    source: PromSource,
    audit: Auditor,
    telemetry: SharedTelemetry,
    interval: Duration,
    series_ttl: Duration,
    max_backoff: Duration,
    models_dir: std::path::PathBuf,
}

/// How often playbook files are checked for changes.
const RELOAD_EVERY: Duration = Duration::from_secs(2);

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Runs the daemon until `shutdown` resolves. Config and playbooks must be validated.
/// `rejected` lists playbooks that failed to load, so the start record names them.
pub async fn run(
    config: Config,
    playbooks: Vec<Playbook>,
    rejected: Vec<String>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let audit = Auditor::new(AuditLog::open(&config.agent.audit_log)?);
    let listener = tokio::net::TcpListener::bind(config.agent.listen)
        .await
        .map_err(|source| AgentError::Listen {
            addr: config.agent.listen,
            source,
        })?;
    let source = PromSource::new(&config.prometheus.url, config.prometheus.timeout)?;
    let telemetry: SharedTelemetry = Arc::new(Mutex::new(Telemetry {
        // Generous: a tick may wait on a timed-out query and a playbook run.
        liveness_window: config.agent.interval * 3
            + config.prometheus.timeout
            + config.agent.playbook_timeout
            + Duration::from_secs(30),
        heartbeat: Some(Instant::now()),
        ..Telemetry::default()
    }));

    let (stop_tx, mut server_stop) = watch::channel(false);
    // Bounded: when the agent is busy, the webhook answers 503 and Alertmanager retries.
    let (alerts_tx, mut alerts_rx) = tokio::sync::mpsc::channel::<Vec<AlertmanagerAlert>>(64);
    let state = AppState {
        telemetry: telemetry.clone(),
        alerts: alerts_tx,
    };
    let server = tokio::spawn(server::serve(listener, state, async move {
        let _ = server_stop.wait_for(|s| *s).await;
    }));
    info!(listen = %config.agent.listen, audit_log = %audit.path().display(), signals = config.signals.len(), playbooks = playbooks.len(), "homeostat started");

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
            tokio::runtime::Handle::current(),
            config.prometheus.timeout,
        )),
        max_follow_ups: 3,
    };
    let mut dispatcher = Dispatcher::new(
        config.playbooks.clone(),
        config.signals.iter().map(|s| s.name.clone()).collect(),
        playbooks,
        limits,
        executor,
        telemetry.clone(),
    );
    // What a previous run left behind: plans whose cooldowns still run, and anomalies
    // it stopped with open (one streaming pass over the log).
    let now = SystemTime::now();
    let mut plans = PlanAges::default();
    let mut unclosed = BTreeMap::new();
    crate::audit::scan(
        audit.path(),
        &[
            "anomaly_opened",
            "anomaly_closed",
            "playbook_matched",
            "playbook_suppressed",
        ],
        |r| {
            // One that does not read as its kind is skipped: it cannot be resumed from.
            if let Ok(event) = r.event() {
                track_open(&mut unclosed, &event);
                plans.note(&event, r.time(), now);
            }
        },
    )?;
    let restored = dispatcher.restore_cooldowns(plans);
    if restored > 0 {
        info!(
            restored,
            "cooldowns of recent plans restored from the audit log"
        );
    }
    let ctx = Context {
        source,
        audit,
        telemetry,
        interval: config.agent.interval,
        series_ttl: config.agent.series_ttl,
        max_backoff: config.agent.max_backoff,
        models_dir: config.agent.models_dir.clone(),
    };
    record(
        &ctx,
        Event::AgentStarted(AgentStarted {
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
        }),
    )
    .await?;

    for problem in &rejected {
        record(
            &ctx,
            Event::PlaybookRejected(PlaybookRejected::AtStart {
                stage: "start".into(),
                error: problem.clone(),
            }),
        )
        .await?;
    }

    let mut signals: Vec<SignalState> = config
        .signals
        .iter()
        .map(|cfg| SignalState {
            cfg: cfg.clone(),
            series: HashMap::new(),
            up: false,
            failures: 0,
            next_attempt: Instant::now(),
            last_refit: None,
            updated_to: 0.0,
        })
        .collect();

    tokio::pin!(shutdown);
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|source| AgentError::Signal { source })?;
    let save_every = config.agent.models_save_every;
    let result: Result<(), AuditError> = async {
        // Fitting may take a while on a big store; shutdown must still be prompt.
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = fit_all(&ctx, &mut signals) => {}
        }
        resume(&ctx, &mut signals, std::mem::take(&mut unclosed)).await?;
        let mut ticker = tokio::time::interval(ctx.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Playbook files are polled for changes; SIGHUP reloads at once.
        let mut reload = tokio::time::interval(RELOAD_EVERY);
        reload.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut save =
            tokio::time::interval_at(tokio::time::Instant::now() + save_every, save_every);
        save.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                _ = ticker.tick() => {}
                Some(alerts) = alerts_rx.recv() => {
                    respond_to_alerts(&ctx, &mut dispatcher, alerts).await?;
                    continue;
                }
                _ = reload.tick() => {
                    dispatcher.reload().await?;
                    continue;
                }
                _ = save.tick() => {
                    save_models(&ctx, &signals).await;
                    continue;
                }
                _ = hangup.recv() => {
                    info!("SIGHUP received: reloading playbooks");
                    dispatcher.reload().await?;
                    continue;
                }
            }
            // Queries are cancellable; processing (audit writes, playbooks) runs to completion.
            let results = tokio::select! {
                _ = &mut shutdown => return Ok(()),
                r = query_all(&ctx, &signals) => r,
            };
            for (idx, result) in results {
                process(&ctx, &mut dispatcher, &mut signals[idx], result).await?;
            }
            dispatcher.reap();
            publish(&ctx, &signals);
        }
    }
    .await;

    info!("shutting down");
    // What was learned survives the restart.
    save_models(&ctx, &signals).await;
    // Verifications in flight are abandoned: their records so far say how far they got.
    let interrupted = dispatcher.stop().await;
    let _ = stop_tx.send(true);
    let stopped = record(
        &ctx,
        Event::AgentStopped(AgentStopped {
            reason: if result.is_ok() { "signal" } else { "error" }.into(),
            incidents_interrupted: interrupted,
        }),
    )
    .await;
    if tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .is_err()
    {
        warn!("http server did not stop within 5s");
    }
    result?;
    stopped?;
    Ok(())
}

/// Appends an audit record.
async fn record(ctx: &Context, event: Event) -> Result<u64, AuditError> {
    ctx.audit.record(event).await
}

/// Audits each alert; firing ones go to the playbooks (grouping and cooldown dedupe
/// Alertmanager's repeated notifications).
async fn respond_to_alerts(
    ctx: &Context,
    dispatcher: &mut Dispatcher,
    alerts: Vec<AlertmanagerAlert>,
) -> Result<(), AuditError> {
    for alert in alerts {
        let event = Anomaly::from_alert(&alert, unix_now());
        info!(alert = %event.signal, status = %alert.status, labels = %event.labels, "alert received");
        record(
            ctx,
            Event::AlertReceived(AlertReceived {
                id: event.id.clone(),
                status: alert.status.clone(),
                labels: event.labels.clone(),
                annotations: alert.annotations.clone(),
                starts_at: alert.starts_at.clone(),
            }),
        )
        .await?;
        if alert.status == "firing" {
            dispatcher.respond(&event, &mut BTreeSet::new()).await?;
        }
    }
    Ok(())
}

/// Starts every signal's baselines: from saved models where there are usable ones
/// (then catching up on the history since they were saved), else from history alone.
async fn fit_all(ctx: &Context, signals: &mut [SignalState]) {
    let now = unix_now();
    for s in signals.iter_mut() {
        let d = s.cfg.detection.clone();
        // The whole history is fetched even with saved models: series that appeared since
        // the save need all of it; known ones skip what they have seen.
        let since = now - d.history.as_secs_f64();
        match models::load(&ctx.models_dir, &s.cfg.name, &d) {
            Ok(Some(saved)) => {
                for m in saved.series {
                    let mut series = new_series(&s.cfg);
                    series.detector = Detector::from_model(m.model, &d);
                    s.series.insert(m.labels, series);
                }
                s.updated_to = saved.updated_to;
                info!(signal = %s.cfg.name, series = s.series.len(), age_secs = format!("{:.0}", now - saved.updated_to), "loaded saved models");
            }
            Ok(None) => {}
            Err(e) => {
                warn!(signal = %s.cfg.name, error = %e, "saved models not used; fitting from history")
            }
        }
        let span = Duration::from_secs_f64((now - since).max(d.history_step.as_secs_f64()));
        match ctx
            .source
            .range(&s.cfg.query, now, span, d.history_step)
            .await
        {
            Ok(histories) => {
                let points: usize = histories.iter().map(|h| h.samples.len()).sum();
                let saved_to = s.updated_to;
                for h in histories {
                    // A saved model learns only what it has not seen; a new series, everything.
                    let known = s.series.contains_key(&h.labels);
                    let fresh: Vec<(f64, f64)> = h
                        .samples
                        .iter()
                        .copied()
                        .filter(|(t, _)| !known || *t > saved_to)
                        .collect();
                    let series = s
                        .series
                        .entry(h.labels)
                        .or_insert_with(|| new_series(&s.cfg));
                    series.detector.fit(&fresh);
                    if let Some((t, _)) = fresh.last() {
                        s.updated_to = s.updated_to.max(*t);
                    }
                }
                info!(signal = %s.cfg.name, series = s.series.len(), points, "fitted baselines from history");
            }
            Err(e) => {
                warn!(signal = %s.cfg.name, error = %e, "cannot fetch history; series will warm up from live data")
            }
        }
        s.last_refit = Some(Instant::now());
    }
}

/// An anomaly the audit log shows opened and never closed: the agent stopped (or
/// crashed) while it was open.
#[derive(Debug, Clone, PartialEq)]
struct Unclosed {
    id: String,
    signal: String,
    labels: Labels,
    started_unix: f64,
    peak_score: f64,
    evidence: String,
    seasonal: bool,
    /// Playbooks already matched (or suppressed) for it.
    handled: BTreeSet<String>,
}

/// Folds one audit event, in log order, into the anomalies open so far (by id).
fn track_open(open: &mut BTreeMap<String, Unclosed>, event: &Event) {
    match event {
        // One without its series cannot be resumed.
        Event::AnomalyOpened(a) if !a.id.is_empty() && !a.signal.is_empty() => {
            open.insert(
                a.id.clone(),
                Unclosed {
                    id: a.id.clone(),
                    signal: a.signal.clone(),
                    labels: a.labels.clone(),
                    started_unix: a.started_unix,
                    peak_score: a.peak_score,
                    // Empty in a record written before evidence was recorded.
                    evidence: a.evidence.clone(),
                    seasonal: a.seasonal,
                    handled: BTreeSet::new(),
                },
            );
        }
        Event::AnomalyClosed(c) => {
            open.remove(&c.id);
        }
        Event::PlaybookMatched(m) => note_handled(open, &m.anomaly_id, &m.playbook),
        Event::PlaybookSuppressed(s) => note_handled(open, &s.anomaly_id, &s.playbook),
        _ => {}
    }
}

/// Notes that a playbook has been run (or held back) for an open anomaly.
fn note_handled(open: &mut BTreeMap<String, Unclosed>, anomaly_id: &str, playbook: &str) {
    if let Some(u) = open.get_mut(anomaly_id) {
        u.handled.insert(playbook.to_string());
    }
}

/// Goes on with the anomalies a previous run stopped with open, under the same id and
/// with the playbooks it already ran, so a restart neither opens the incident again
/// nor leaves it open in the log forever. One whose series is not known after fitting
/// (gone from Prometheus's history, or its signal no longer configured) is closed.
async fn resume(
    ctx: &Context,
    signals: &mut [SignalState],
    unclosed: BTreeMap<String, Unclosed>,
) -> Result<(), AuditError> {
    for u in unclosed.into_values() {
        let signal = signals.iter_mut().find(|s| s.cfg.name == u.signal);
        let known = signal.is_some();
        match signal.and_then(|s| s.series.get_mut(&u.labels)) {
            Some(series) => {
                let started = UNIX_EPOCH + Duration::from_secs_f64(u.started_unix.max(0.0));
                series.detector.resume_open();
                info!(signal = %u.signal, series = %u.labels, id = %u.id, "anomaly resumed");
                record(
                    ctx,
                    Event::AnomalyResumed(AnomalyResumed {
                        id: u.id.clone(),
                        signal: u.signal.clone(),
                        labels: u.labels.clone(),
                        started_at: humantime::format_rfc3339_millis(started).to_string(),
                        handled: u.handled.clone(),
                    }),
                )
                .await?;
                series.open = Some(OpenAnomaly {
                    id: u.id,
                    started,
                    peak_score: u.peak_score,
                    evidence: u.evidence,
                    seasonal: u.seasonal,
                    handled: u.handled,
                });
            }
            None => {
                let reason = if known {
                    "series not in the history at restart"
                } else {
                    "signal no longer configured"
                };
                info!(signal = %u.signal, series = %u.labels, id = %u.id, reason, "anomaly closed");
                record(
                    ctx,
                    Event::AnomalyClosed(AnomalyClosed {
                        id: u.id,
                        signal: u.signal,
                        labels: u.labels,
                        duration_secs: None,
                        peak_score: u.peak_score,
                        reason: reason.into(),
                    }),
                )
                .await?;
            }
        }
    }
    Ok(())
}

/// Saves every signal's models; blocking file I/O runs off the async threads.
async fn save_models(ctx: &Context, signals: &[SignalState]) {
    let batch: Vec<SignalModels> = signals
        .iter()
        // A signal whose fitting was interrupted must not overwrite a good saved file.
        .filter(|s| s.last_refit.is_some())
        .map(|s| SignalModels {
            schema: models::SCHEMA,
            signal: s.cfg.name.clone(),
            detection: models::detection_hash(&s.cfg.detection),
            saved_at: unix_now(),
            updated_to: s.updated_to,
            series: s
                .series
                .iter()
                .map(|(labels, series)| SeriesModel {
                    labels: labels.clone(),
                    model: series.detector.model().clone(),
                })
                .collect(),
        })
        .collect();
    let dir = ctx.models_dir.clone();
    let saved = tokio::task::spawn_blocking(move || {
        batch
            .iter()
            .map(|m| models::save(&dir, m).map(|_| m.series.len()))
            .collect::<Vec<_>>()
    })
    .await;
    match saved {
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

fn new_series(cfg: &SignalConfig) -> Series {
    let d = &cfg.detection;
    Series {
        detector: Detector::new(d),
        last_seen: Instant::now(),
        stale: true,
        value: f64::NAN,
        assessment: None,
        open: None,
    }
}

fn insert_fitted(s: &mut SignalState, h: History) {
    let mut series = new_series(&s.cfg);
    series.detector.fit(&h.samples);
    s.series.insert(h.labels, series);
}

/// Queries every signal that is due, concurrently.
async fn query_all(
    ctx: &Context,
    signals: &[SignalState],
) -> Vec<(usize, Result<Vec<Point>, SourceError>)> {
    let now = Instant::now();
    let mut set = JoinSet::new();
    for (idx, s) in signals.iter().enumerate() {
        if s.next_attempt > now {
            continue;
        }
        let source = ctx.source.clone();
        let query = s.cfg.query.clone();
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

/// Marks every series of a signal stale: no data is no evidence.
fn mark_all_stale(s: &mut SignalState) {
    for series in s.series.values_mut() {
        series.stale = true;
        series.detector.interrupt();
    }
}

async fn process(
    ctx: &Context,
    dispatcher: &mut Dispatcher,
    s: &mut SignalState,
    result: Result<Vec<Point>, SourceError>,
) -> Result<(), AuditError> {
    let name = s.cfg.name.clone();
    let points = match result {
        Err(e) => {
            s.failures += 1;
            // Exponential backoff from one interval up to max_backoff.
            let backoff = ctx
                .interval
                .saturating_mul(1 << s.failures.min(16).saturating_sub(1))
                .min(ctx.max_backoff);
            s.next_attempt = Instant::now() + backoff;
            s.up = false;
            mark_all_stale(s);
            warn!(signal = %name, error = %e, failures = s.failures, retry_in = ?backoff, "query failed; series marked stale");
            let mut t = ctx.telemetry.lock().unwrap_or_else(|p| p.into_inner());
            *t.query_errors
                .entry((name, e.kind().to_string()))
                .or_default() += 1;
            return Ok(());
        }
        Ok(points) => points,
    };
    if s.failures > 0 {
        info!(signal = %name, after_failures = s.failures, "query recovered");
    }
    s.failures = 0;
    s.next_attempt = Instant::now();
    if points.is_empty() {
        s.up = false;
        mark_all_stale(s);
        warn!(signal = %name, "query returned no series; series marked stale");
        *ctx.telemetry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .empty_results
            .entry(name)
            .or_default() += 1;
        expire(ctx, s).await?;
        return Ok(());
    }
    s.up = true;

    let unknown: Vec<Labels> = points
        .iter()
        .filter(|p| !s.series.contains_key(&p.labels))
        .map(|p| p.labels.clone())
        .collect();
    if !unknown.is_empty() {
        refit_new(ctx, s, unknown).await;
    }

    let mut seen = BTreeSet::new();
    for p in points {
        let series = s
            .series
            .entry(p.labels.clone())
            .or_insert_with(|| new_series(&s.cfg));
        series.last_seen = Instant::now();
        seen.insert(p.labels.clone());
        if !p.value.is_finite() {
            // NaN (e.g. 0/0 in a ratio) or Inf is missing data, never an anomaly.
            series.stale = true;
            series.detector.interrupt();
            continue;
        }
        series.stale = false;
        series.value = p.value;
        let step = series.detector.step(p.t, p.value);
        s.updated_to = s.updated_to.max(p.t);
        let (a, anomalous) = (step.assessment, step.anomalous);
        series.assessment = Some(a);
        match step.transition {
            Transition::Opened => {
                let started = SystemTime::now();
                let id = anomaly_id(&name, &p.labels, unix(started));
                series.open = Some(OpenAnomaly {
                    id: id.clone(),
                    started,
                    peak_score: a.score,
                    evidence: a.evidence.to_string(),
                    seasonal: a.seasonal,
                    handled: BTreeSet::new(),
                });
                let anomaly = describe(&s.cfg, &p.labels, series);
                warn!(signal = %name, series = %p.labels, value = p.value, expected = a.expected, score = format!("{:.2}", a.score), evidence = %a.evidence, seasonal = a.seasonal, id = %id, "anomaly opened");
                record(ctx, Event::AnomalyOpened(anomaly)).await?;
                *ctx.telemetry
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .anomalies_opened
                    .entry(name.clone())
                    .or_default() += 1;
            }
            Transition::Closed => {
                if let Some(open) = series.open.take() {
                    let secs = open
                        .started
                        .elapsed()
                        .map(|d| d.as_secs_f64())
                        .unwrap_or(0.0);
                    info!(signal = %name, series = %p.labels, id = %open.id, duration_secs = secs, "anomaly closed");
                    record(
                        ctx,
                        Event::AnomalyClosed(AnomalyClosed {
                            id: open.id,
                            signal: name.clone(),
                            labels: p.labels.clone(),
                            duration_secs: Some(secs),
                            peak_score: open.peak_score,
                            reason: "back to normal".into(),
                        }),
                    )
                    .await?;
                }
            }
            Transition::None => {}
        }
        if let Some(open) = series.open.as_mut() {
            open.peak_score = open.peak_score.max(a.score);
        }
        // Playbooks act only on fresh, anomalous evidence.
        if anomalous && series.open.is_some() {
            let anomaly = describe(&s.cfg, &p.labels, series);
            if let Some(open) = series.open.as_mut() {
                dispatcher.respond(&anomaly, &mut open.handled).await?;
            }
        }
    }
    for (labels, series) in s.series.iter_mut() {
        if !seen.contains(labels) {
            series.stale = true;
            series.detector.interrupt();
        }
    }
    expire(ctx, s).await
}

/// Forgets series not seen for `series_ttl`, closing their anomalies in the log.
async fn expire(ctx: &Context, s: &mut SignalState) -> Result<(), AuditError> {
    let ttl = ctx.series_ttl;
    let gone: Vec<Labels> = s
        .series
        .iter()
        .filter(|(_, v)| v.last_seen.elapsed() > ttl)
        .map(|(k, _)| k.clone())
        .collect();
    for labels in gone {
        if let Some(series) = s.series.remove(&labels) {
            info!(signal = %s.cfg.name, series = %labels, "series vanished; forgotten");
            if let Some(open) = series.open {
                record(
                    ctx,
                    Event::AnomalyClosed(AnomalyClosed {
                        id: open.id,
                        signal: s.cfg.name.clone(),
                        labels,
                        duration_secs: None,
                        peak_score: open.peak_score,
                        reason: "series vanished".into(),
                    }),
                )
                .await?;
            }
        }
    }
    Ok(())
}

/// Fits series that appeared after start from their history, at most once a minute per signal.
async fn refit_new(ctx: &Context, s: &mut SignalState, unknown: Vec<Labels>) {
    if s.last_refit
        .is_some_and(|t| t.elapsed() < Duration::from_secs(60))
    {
        return;
    }
    s.last_refit = Some(Instant::now());
    let d = &s.cfg.detection;
    match ctx
        .source
        .range(&s.cfg.query, unix_now(), d.history, d.history_step)
        .await
    {
        Ok(histories) => {
            for h in histories
                .into_iter()
                .filter(|h| unknown.contains(&h.labels))
            {
                debug!(signal = %s.cfg.name, series = %h.labels, points = h.samples.len(), "fitted new series from history");
                insert_fitted(s, h);
            }
        }
        Err(e) => {
            debug!(signal = %s.cfg.name, error = %e, "no history for new series; warming up live")
        }
    }
}

fn describe(signal: &SignalConfig, labels: &Labels, series: &Series) -> Anomaly {
    let a = series.assessment.expect("described after an assessment");
    let open = series.open.as_ref().expect("described while open");
    Anomaly {
        id: open.id.clone(),
        signal: signal.name.clone(),
        query: signal.query.clone(),
        labels: labels.clone(),
        value: series.value,
        expected: a.expected,
        lower: a.lower,
        upper: a.upper,
        score: a.score,
        peak_score: open.peak_score,
        direction: if a.deviation >= 0.0 { "up" } else { "down" }.to_string(),
        evidence: open.evidence.clone(),
        seasonal: open.seasonal,
        started_at: humantime::format_rfc3339_millis(open.started).to_string(),
        started_unix: unix(open.started),
        duration_secs: open
            .started
            .elapsed()
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
        source: "homeostat".into(),
        annotations: Default::default(),
    }
}

/// Rebuilds the telemetry snapshot from the signals' state.
fn publish(ctx: &Context, signals: &[SignalState]) {
    let mut gauges = Vec::new();
    let mut health = std::collections::BTreeMap::new();
    for s in signals {
        health.insert(
            s.cfg.name.clone(),
            SignalHealth {
                up: s.up,
                series: s.series.len(),
            },
        );
        for (labels, series) in &s.series {
            let a = series.assessment;
            gauges.push(SeriesGauge {
                signal: s.cfg.name.clone(),
                labels: labels.clone(),
                value: series.value,
                score: a.map_or(f64::NAN, |a| a.score),
                lower: a.map_or(f64::NAN, |a| a.lower),
                upper: a.map_or(f64::NAN, |a| a.upper),
                open: series.open.is_some(),
                stale: series.stale,
            });
        }
    }
    gauges.sort_by(|a, b| (&a.signal, &a.labels).cmp(&(&b.signal, &b.labels)));
    let mut t = ctx.telemetry.lock().unwrap_or_else(|p| p.into_inner());
    t.series = gauges;
    t.signals = health;
    t.ticks += 1;
    t.ready = true;
    t.audit_records = ctx.audit.written();
    t.heartbeat = Some(Instant::now());
}

/// What `homeostat fit` did for one signal.
#[derive(Debug, Clone)]
pub struct FitReport {
    /// The signal.
    pub signal: String,
    /// Series fitted, or why none could be.
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
        let outcome = match source
            .range(&cfg.query, now, d.history, d.history_step)
            .await
        {
            Err(e) => Err(e.to_string()),
            Ok(histories) if histories.is_empty() => {
                Err("the query returned no series over the history".to_string())
            }
            Ok(histories) => {
                let points: usize = histories.iter().map(|h| h.samples.len()).sum();
                let updated_to = histories
                    .iter()
                    .filter_map(|h| h.samples.last().map(|(t, _)| *t))
                    .fold(0.0, f64::max);
                let series: Vec<SeriesModel> = histories
                    .into_iter()
                    .map(|h| {
                        let mut det = Detector::new(d);
                        det.fit(&h.samples);
                        SeriesModel {
                            labels: h.labels,
                            model: det.model().clone(),
                        }
                    })
                    .collect();
                let n = series.len();
                let models = SignalModels {
                    schema: models::SCHEMA,
                    signal: cfg.name.clone(),
                    detection: models::detection_hash(d),
                    saved_at: unix_now(),
                    updated_to,
                    series,
                };
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

#[cfg(test)]
mod tests {
    use super::*;

    use crate::audit::{PlaybookMatched, PlaybookSuppressed};

    #[test]
    fn the_log_tells_which_anomalies_a_previous_run_left_open() {
        let opened = |id: &str, pod: &str| {
            Event::AnomalyOpened(Anomaly {
                id: id.into(),
                signal: "latency".into(),
                labels: Labels::from_pairs([("pod", pod)]),
                started_unix: 100.0,
                peak_score: 0.9995,
                evidence: "jump".into(),
                seasonal: true,
                ..Anomaly::default()
            })
        };
        let matched = |id: &str, playbook: &str| {
            Event::PlaybookMatched(PlaybookMatched {
                anomaly_id: id.into(),
                playbook: playbook.into(),
                ..PlaybookMatched::default()
            })
        };
        let log = [
            opened("an-1", "a"),
            opened("an-2", "b"),
            matched("an-2", "restart"),
            Event::PlaybookSuppressed(PlaybookSuppressed {
                anomaly_id: "an-2".into(),
                playbook: "scale".into(),
                ..PlaybookSuppressed::default()
            }),
            // An alert's plan: no anomaly of homeostat's own.
            matched("al-9", "restart"),
            Event::AnomalyClosed(AnomalyClosed {
                id: "an-1".into(),
                ..AnomalyClosed::default()
            }),
            // Without its series: skipped, not fatal.
            Event::AnomalyOpened(Anomaly {
                id: "an-3".into(),
                ..Anomaly::default()
            }),
        ];
        let mut open = BTreeMap::new();
        for event in &log {
            track_open(&mut open, event);
        }
        let left: Vec<&Unclosed> = open.values().collect();
        assert_eq!(
            left,
            [&Unclosed {
                id: "an-2".into(),
                signal: "latency".into(),
                labels: Labels::from_pairs([("pod", "b")]),
                started_unix: 100.0,
                peak_score: 0.9995,
                evidence: "jump".into(),
                seasonal: true,
                handled: ["restart".to_string(), "scale".to_string()].into(),
            }]
        );
    }
}
