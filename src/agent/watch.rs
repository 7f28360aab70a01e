//! One signal's series as a pure state machine: a query's answer goes in, with the
//! time; what happened comes out as [`WatchEvent`]s (an anomaly opened, closed, still
//! anomalous; the query failed or recovered). No I/O and no clock of its own, so every
//! rule here — hysteresis across ticks, stale data, backoff, forgetting vanished series
//! — is tested by feeding it points.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use crate::anomaly::{anomaly_id, Anomaly};
use crate::config::{Export, SignalConfig};
use crate::detect::{Assessment, Detector, Transition};
use crate::labels::Labels;
use crate::metrics::{SeriesGauge, SignalHealth};
use crate::models::{self, SeriesModel, SignalModels};
use crate::source::{History, Point, SourceError};

/// How often a signal with new series may fetch their history.
const REFIT_EVERY: Duration = Duration::from_secs(60);

/// The loop's timing, from `[agent]`.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Time between ticks: the first retry after a failed query.
    pub interval: Duration,
    /// A series not seen for this long is forgotten.
    pub series_ttl: Duration,
    /// The longest wait between retries of a failing query.
    pub max_backoff: Duration,
}

/// What a query's answer did to a signal's series, in the order it happened.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent {
    /// The query failed: every series is stale until it answers again.
    QueryFailed {
        /// The error.
        error: String,
        /// Its kind, for the metric's label.
        kind: &'static str,
        /// Consecutive failures so far.
        failures: u32,
        /// When the next attempt will be made.
        retry_in: Duration,
    },
    /// The query answers again after failing.
    QueryRecovered {
        /// How many times it had failed.
        after_failures: u32,
    },
    /// The query answered with no series: every series is stale.
    NoSeries,
    /// A series became anomalous.
    Opened(Anomaly),
    /// An open anomaly ended.
    Closed {
        /// The anomaly's id.
        id: String,
        /// The series.
        labels: Labels,
        /// How long it was open (absent when it ended because the series vanished).
        duration_secs: Option<f64>,
        /// Its highest score.
        peak_score: f64,
        /// Why it ended.
        reason: &'static str,
    },
    /// A fresh point of an open anomaly was anomalous: playbooks may answer it.
    Anomalous(Anomaly),
    /// A series was not seen for `series_ttl` and is forgotten.
    Forgotten {
        /// The series.
        labels: Labels,
    },
    /// Points of series beyond the caps were dropped (not tracked, never scored).
    Capped {
        /// Points dropped by this answer.
        dropped: usize,
        /// Whether this is the first time for the signal (warn once, count always).
        first: bool,
    },
}

/// An open anomaly's bookkeeping.
#[derive(Debug, Clone)]
pub(crate) struct OpenAnomaly {
    pub(crate) id: String,
    pub(crate) started: SystemTime,
    pub(crate) peak_score: f64,
    /// What made the series unusual when it opened, and whether against its daily
    /// profile: why it opened, for as long as it stays open.
    pub(crate) evidence: String,
    pub(crate) seasonal: bool,
    /// Playbooks already run for it: one plan per playbook per anomaly.
    pub(crate) handled: BTreeSet<String>,
}

/// Everything known about one series.
pub(crate) struct Series {
    pub(crate) detector: Detector,
    last_seen: Instant,
    stale: bool,
    value: f64,
    assessment: Option<Assessment>,
    pub(crate) open: Option<OpenAnomaly>,
}

/// One signal: its series, and the health of its query.
pub struct SignalWatch {
    pub(crate) cfg: SignalConfig,
    pub(crate) series: HashMap<Labels, Series>,
    up: bool,
    failures: u32,
    next_attempt: Instant,
    last_refit: Option<Instant>,
    /// Unix seconds of the newest point any of its baselines has seen.
    updated_to: f64,
    /// The most series it tracks.
    max_series: usize,
    /// Whether it has dropped series for its cap before.
    capped: bool,
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl SignalWatch {
    /// A signal with no series yet, tracking at most `max_series`, due for its first
    /// query at `now`.
    pub fn new(cfg: SignalConfig, max_series: usize, now: Instant) -> Self {
        SignalWatch {
            cfg,
            series: HashMap::new(),
            up: false,
            failures: 0,
            next_attempt: now,
            last_refit: None,
            updated_to: 0.0,
            max_series,
            capped: false,
        }
    }

    /// Whether one more series may be tracked, within its own cap and `room` left of the
    /// total (taken from it when so).
    fn admit(&self, room: &mut usize) -> bool {
        if self.series.len() >= self.max_series || *room == 0 {
            return false;
        }
        *room -= 1;
        true
    }

    /// The signal's config.
    pub fn config(&self) -> &SignalConfig {
        &self.cfg
    }

    /// Series tracked.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    /// Whether no series is tracked.
    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Whether its query is due at `now` (not backing off).
    pub fn is_due(&self, now: Instant) -> bool {
        self.next_attempt <= now
    }

    /// Unix seconds of the newest point its baselines have seen.
    pub fn updated_to(&self) -> f64 {
        self.updated_to
    }

    fn new_series(&self, now: Instant) -> Series {
        Series {
            detector: Detector::new(&self.cfg.detection),
            last_seen: now,
            stale: true,
            value: f64::NAN,
            assessment: None,
            open: None,
        }
    }

    /// Starts from saved models (their series' baselines, and how far they had seen),
    /// within the caps (`room`: series left of the total).
    /// Returns how many series the caps left out.
    pub fn load_saved(&mut self, saved: SignalModels, room: &mut usize, now: Instant) -> usize {
        let total = saved.series.len();
        for (i, m) in saved.series.into_iter().enumerate() {
            if !self.admit(room) {
                self.updated_to = saved.updated_to;
                return total - i;
            }
            let mut series = self.new_series(now);
            series.detector = Detector::from_model(m.model, &self.cfg.detection);
            self.series.insert(m.labels, series);
        }
        self.updated_to = saved.updated_to;
        0
    }

    /// Fits baselines from history: a known series learns only what it has not seen
    /// (saved models), a new one everything, within the caps. Returns how many series
    /// the caps left out.
    pub fn fit_history(
        &mut self,
        histories: Vec<History>,
        room: &mut usize,
        now: Instant,
    ) -> usize {
        let saved_to = self.updated_to;
        let mut dropped = 0;
        for h in histories {
            let known = self.series.contains_key(&h.labels);
            if !known && !self.admit(room) {
                dropped += 1;
                continue;
            }
            let fresh: Vec<(f64, f64)> = h
                .samples
                .iter()
                .copied()
                .filter(|(t, _)| !known || *t > saved_to)
                .collect();
            if !known {
                let series = self.new_series(now);
                self.series.insert(h.labels.clone(), series);
            }
            let series = self.series.get_mut(&h.labels).expect("inserted above");
            series.detector.fit(&fresh);
            if let Some((t, _)) = fresh.last() {
                self.updated_to = self.updated_to.max(*t);
            }
        }
        dropped
    }

    /// Marks the signal as fitted at `now`: its models may be saved from now on, and new
    /// series wait a minute before their history is fetched.
    pub fn fitted(&mut self, now: Instant) {
        self.last_refit = Some(now);
    }

    /// Takes a query's outcome: on failure, backs off and marks every series stale; on
    /// an empty answer, marks them stale and forgets the expired. Returns the points
    /// when there are any to score.
    pub fn accept(
        &mut self,
        result: Result<Vec<Point>, SourceError>,
        now: Instant,
        timing: &Timing,
        events: &mut Vec<WatchEvent>,
    ) -> Option<Vec<Point>> {
        let points = match result {
            Err(e) => {
                self.failures += 1;
                // Exponential backoff from one interval up to max_backoff.
                let backoff = timing
                    .interval
                    .saturating_mul(1 << self.failures.min(16).saturating_sub(1))
                    .min(timing.max_backoff);
                self.next_attempt = now + backoff;
                self.up = false;
                self.mark_all_stale();
                events.push(WatchEvent::QueryFailed {
                    error: e.to_string(),
                    kind: e.kind(),
                    failures: self.failures,
                    retry_in: backoff,
                });
                return None;
            }
            Ok(points) => points,
        };
        if self.failures > 0 {
            events.push(WatchEvent::QueryRecovered {
                after_failures: self.failures,
            });
        }
        self.failures = 0;
        self.next_attempt = now;
        if points.is_empty() {
            self.up = false;
            self.mark_all_stale();
            events.push(WatchEvent::NoSeries);
            self.expire(now, timing, events);
            return None;
        }
        self.up = true;
        Some(points)
    }

    /// Series in `points` it does not know, when their history may be fetched now (at
    /// most once a minute, and only while the caps leave `room` for them); the caller
    /// fetches it and hands it to [`Self::adopt`].
    pub fn wants_history(
        &mut self,
        points: &[Point],
        room: usize,
        now: Instant,
    ) -> Option<Vec<Labels>> {
        // At a cap the unknown series stay unknown: fetching their history every minute
        // would cost what the cap is there to bound.
        if room == 0 || self.series.len() >= self.max_series {
            return None;
        }
        let unknown: Vec<Labels> = points
            .iter()
            .filter(|p| !self.series.contains_key(&p.labels))
            .map(|p| p.labels.clone())
            .collect();
        if unknown.is_empty()
            || self
                .last_refit
                .is_some_and(|t| now.duration_since(t) < REFIT_EVERY)
        {
            return None;
        }
        self.last_refit = Some(now);
        Some(unknown)
    }

    /// Fits the series in `unknown` from their history, within the caps.
    pub fn adopt(
        &mut self,
        histories: Vec<History>,
        unknown: &[Labels],
        room: &mut usize,
        now: Instant,
    ) {
        for h in histories
            .into_iter()
            .filter(|h| unknown.contains(&h.labels))
        {
            if self.series.contains_key(&h.labels) || !self.admit(room) {
                continue;
            }
            let mut series = self.new_series(now);
            series.detector.fit(&h.samples);
            self.series.insert(h.labels, series);
        }
    }

    /// Scores each point, opens and closes anomalies, marks unseen series stale and
    /// forgets the expired. `wall` is the time anomalies are said to start; a point of a
    /// new series beyond the caps (`room`: series left of the total) is dropped.
    pub fn score(
        &mut self,
        points: Vec<Point>,
        now: Instant,
        wall: SystemTime,
        timing: &Timing,
        room: &mut usize,
        events: &mut Vec<WatchEvent>,
    ) {
        let mut seen = BTreeSet::new();
        let mut dropped = 0;
        for p in points {
            if !self.series.contains_key(&p.labels) {
                if !self.admit(room) {
                    dropped += 1;
                    continue;
                }
                let series = self.new_series(now);
                self.series.insert(p.labels.clone(), series);
            }
            let series = self.series.get_mut(&p.labels).expect("inserted above");
            series.last_seen = now;
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
            self.updated_to = self.updated_to.max(p.t);
            let (a, anomalous) = (step.assessment, step.anomalous);
            series.assessment = Some(a);
            match step.transition {
                Transition::Opened => {
                    series.open = Some(OpenAnomaly {
                        id: anomaly_id(&self.cfg.name, &p.labels, unix(wall)),
                        started: wall,
                        peak_score: a.score,
                        evidence: a.evidence.to_string(),
                        seasonal: a.seasonal,
                        handled: BTreeSet::new(),
                    });
                    events.push(WatchEvent::Opened(describe(
                        &self.cfg, &p.labels, series, wall,
                    )));
                }
                Transition::Closed => {
                    if let Some(open) = series.open.take() {
                        let secs = wall
                            .duration_since(open.started)
                            .map(|d| d.as_secs_f64())
                            .unwrap_or(0.0);
                        events.push(WatchEvent::Closed {
                            id: open.id,
                            labels: p.labels.clone(),
                            duration_secs: Some(secs),
                            peak_score: open.peak_score,
                            reason: "back to normal",
                        });
                    }
                }
                Transition::None => {}
            }
            if let Some(open) = series.open.as_mut() {
                open.peak_score = open.peak_score.max(a.score);
            }
            // Playbooks act only on fresh, anomalous evidence.
            if anomalous && series.open.is_some() {
                events.push(WatchEvent::Anomalous(describe(
                    &self.cfg, &p.labels, series, wall,
                )));
            }
        }
        for (labels, series) in self.series.iter_mut() {
            if !seen.contains(labels) {
                series.stale = true;
                series.detector.interrupt();
            }
        }
        if dropped > 0 {
            events.push(WatchEvent::Capped {
                dropped,
                first: !self.capped,
            });
            self.capped = true;
        }
        self.expire(now, timing, events);
    }

    /// The playbooks already run for the anomaly open on `labels`.
    pub fn handled(&self, labels: &Labels) -> BTreeSet<String> {
        self.series
            .get(labels)
            .and_then(|s| s.open.as_ref())
            .map(|o| o.handled.clone())
            .unwrap_or_default()
    }

    /// Notes playbooks that answered the anomaly open on `labels`.
    pub fn mark_handled(&mut self, labels: &Labels, playbooks: impl IntoIterator<Item = String>) {
        if let Some(open) = self.series.get_mut(labels).and_then(|s| s.open.as_mut()) {
            open.handled.extend(playbooks);
        }
    }

    /// Marks every series stale: no data is no evidence.
    fn mark_all_stale(&mut self) {
        for series in self.series.values_mut() {
            series.stale = true;
            series.detector.interrupt();
        }
    }

    /// Forgets series not seen for `series_ttl`, closing their anomalies.
    fn expire(&mut self, now: Instant, timing: &Timing, events: &mut Vec<WatchEvent>) {
        let mut gone: Vec<Labels> = self
            .series
            .iter()
            .filter(|(_, v)| now.duration_since(v.last_seen) > timing.series_ttl)
            .map(|(k, _)| k.clone())
            .collect();
        // Deterministic order, whatever the map's.
        gone.sort();
        for labels in gone {
            if let Some(series) = self.series.remove(&labels) {
                events.push(WatchEvent::Forgotten {
                    labels: labels.clone(),
                });
                if let Some(open) = series.open {
                    events.push(WatchEvent::Closed {
                        id: open.id,
                        labels,
                        duration_secs: None,
                        peak_score: open.peak_score,
                        reason: "series vanished",
                    });
                }
            }
        }
    }

    /// The signal's health and per-series gauges, for the metrics snapshot.
    pub fn gauges(&self) -> (SignalHealth, Vec<SeriesGauge>) {
        let health = SignalHealth {
            up: self.up,
            series: self.series.len(),
        };
        let export = self.cfg.export;
        let gauges = self
            .series
            .iter()
            .filter(|(_, series)| match export {
                Export::All => true,
                Export::Open => series.open.is_some(),
                Export::Off => false,
            })
            .map(|(labels, series)| {
                let a = series.assessment;
                SeriesGauge {
                    signal: self.cfg.name.clone(),
                    labels: labels.clone(),
                    value: series.value,
                    score: a.map_or(f64::NAN, |a| a.score),
                    lower: a.map_or(f64::NAN, |a| a.lower),
                    upper: a.map_or(f64::NAN, |a| a.upper),
                    open: series.open.is_some(),
                    stale: series.stale,
                }
            })
            .collect();
        (health, gauges)
    }

    /// Its baselines as saved models, or `None` while it has not been fitted (an
    /// interrupted fit must not overwrite a good saved file).
    pub fn models(&self, saved_at: f64) -> Option<SignalModels> {
        self.last_refit?;
        Some(SignalModels {
            schema: models::SCHEMA,
            signal: self.cfg.name.clone(),
            detection: models::detection_hash(&self.cfg.detection),
            saved_at,
            updated_to: self.updated_to,
            series: self
                .series
                .iter()
                .map(|(labels, series)| SeriesModel {
                    labels: labels.clone(),
                    model: series.detector.model().clone(),
                })
                .collect(),
        })
    }
}

/// The anomaly open on a series, as playbooks and the audit log see it, as of `wall`.
fn describe(signal: &SignalConfig, labels: &Labels, series: &Series, wall: SystemTime) -> Anomaly {
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
        duration_secs: wall
            .duration_since(open.started)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
        source: "homeostat".into(),
        annotations: Default::default(),
        // The dispatcher, which groups across signals, names it.
        incident: String::new(),
    }
}
