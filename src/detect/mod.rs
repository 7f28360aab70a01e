//! Detection: per-series baselines (pure, synchronous) and the hysteresis that turns
//! their per-point scores into anomaly events.
//!
//! A [`Baseline`] sees one series' points in time order and nothing else: no future
//! values, no global min/max. It is behind a trait so the engine can be swapped.

mod ensemble;
mod hysteresis;
pub mod kmeans;
mod robust;

pub use ensemble::Ensemble;
pub use hysteresis::{Hysteresis, Transition};
pub use robust::RollingRobust;

use crate::config::{DetectionConfig, Direction};

/// What a baseline says about one point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Assessment {
    /// Non-negative anomaly score in the baseline's units (robust z for [`RollingRobust`]),
    /// already filtered by the signal's direction.
    pub score: f64,
    /// Signed deviation (positive: above expected).
    pub deviation: f64,
    /// The expected value.
    pub expected: f64,
    /// Lower edge of the expected band (a point below it, at this threshold, is anomalous).
    pub lower: f64,
    /// Upper edge of the expected band.
    pub upper: f64,
    /// True while the baseline has too little data to judge; never anomalous then.
    pub warming_up: bool,
}

impl Assessment {
    /// Whether this point is beyond the band in a direction the signal cares about.
    pub fn is_anomalous(&self, threshold: f64) -> bool {
        !self.warming_up && self.score >= threshold
    }
}

/// A streaming baseline for one series.
pub trait Baseline: Send + Sync {
    /// Learns from history (oldest first), without scoring it.
    fn fit(&mut self, history: &[(f64, f64)]);
    /// Scores a point against what was seen before it, then learns from it.
    fn update(&mut self, t: f64, value: f64) -> Assessment;
}

/// One point's verdict from a [`Detector`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    /// What the baseline said.
    pub assessment: Assessment,
    /// Whether the point is beyond the threshold in a direction the signal cares about.
    pub anomalous: bool,
    /// What it did to the anomaly state.
    pub transition: Transition,
}

/// A fitted baseline of either kind: what `models/` stores per series.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(tag = "engine", rename_all = "lowercase")]
pub enum Model {
    /// Rolling median and MAD.
    Robust(RollingRobust),
    /// The streaming ensemble (boxed: it is several times larger than the robust one).
    Ensemble(Box<Ensemble>),
}

impl Baseline for Model {
    fn fit(&mut self, history: &[(f64, f64)]) {
        match self {
            Model::Robust(b) => b.fit(history),
            Model::Ensemble(b) => b.fit(history),
        }
    }

    fn update(&mut self, t: f64, value: f64) -> Assessment {
        match self {
            Model::Robust(b) => b.update(t, value),
            Model::Ensemble(b) => b.update(t, value),
        }
    }
}

/// The per-series engine that `run` and `backtest` both use: a baseline, the
/// threshold, and the hysteresis that turns points into anomaly events.
pub struct Detector {
    baseline: Model,
    hysteresis: Hysteresis,
    threshold: f64,
}

impl Detector {
    /// The configured engine for a new series.
    pub fn new(cfg: &DetectionConfig) -> Self {
        Detector::from_model(new_baseline(cfg), cfg)
    }

    /// An engine that goes on from a saved model.
    pub fn from_model(model: Model, cfg: &DetectionConfig) -> Self {
        Detector {
            baseline: model,
            hysteresis: Hysteresis::new(cfg.open_after, cfg.close_after),
            threshold: cfg.threshold,
        }
    }

    /// The fitted baseline, for saving.
    pub fn model(&self) -> &Model {
        &self.baseline
    }

    /// Learns from history (oldest first).
    pub fn fit(&mut self, history: &[(f64, f64)]) {
        self.baseline.fit(history);
    }

    /// Scores one point (seeing only what came before it), then learns from it.
    pub fn step(&mut self, t: f64, value: f64) -> Step {
        let assessment = self.baseline.update(t, value);
        let anomalous = assessment.is_anomalous(self.threshold);
        Step {
            assessment,
            anomalous,
            transition: self.hysteresis.observe(anomalous),
        }
    }

    /// A gap in the data: no evidence either way.
    pub fn interrupt(&mut self) {
        self.hysteresis.interrupt();
    }

    /// Whether an anomaly is open.
    pub fn is_open(&self) -> bool {
        self.hysteresis.is_open()
    }

    /// Goes on with an anomaly that was open when the agent last stopped.
    pub fn resume_open(&mut self) {
        self.hysteresis.resume_open();
    }
}

/// Builds the configured baseline for a new series.
pub fn new_baseline(cfg: &DetectionConfig) -> Model {
    match cfg.engine {
        crate::config::Engine::Robust => Model::Robust(RollingRobust::new(cfg)),
        crate::config::Engine::Ensemble => Model::Ensemble(Box::new(Ensemble::new(cfg))),
    }
}

/// Keeps the part of a signed deviation that the direction cares about.
pub fn directional(z: f64, direction: Direction) -> f64 {
    match direction {
        Direction::Up => z.max(0.0),
        Direction::Down => (-z).max(0.0),
        Direction::Both => z.abs(),
    }
}
