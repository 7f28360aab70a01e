//! Detection: per-series baselines (pure, synchronous) and the hysteresis that turns
//! their per-point scores into anomaly events.
//!
//! A [`Baseline`] sees one series' points in time order and nothing else: no future
//! values, no global min/max. It is behind a trait so the engine can be swapped.

mod ensemble;
pub mod group;
mod hysteresis;
pub mod kmeans;
mod robust;

pub use ensemble::Ensemble;
pub use hysteresis::{Hysteresis, Transition};
pub use robust::RollingRobust;

use crate::config::{DetectionConfig, Direction};

/// What made a point unusual: the component of the baseline that judged it most
/// surprising. An SRE's first question when an anomaly opens, and a playbook's to branch
/// on (a step change calls for other actions than a slow drift).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Evidence {
    /// The value is far from the expected level (the rolling robust baseline's only kind).
    #[default]
    Level,
    /// It jumped from the previous point by more than its usual steps.
    Jump,
    /// The recent level (about five steps) moved away from the expected one.
    Shift,
    /// Small deviations to one side added up (CUSUM): a slow drift or a lasting change.
    Drift,
    /// The path's recent shape is unlike its usual ones (k-means over lag features).
    Shape,
    /// Beyond the range the series has kept.
    Record,
}

impl Evidence {
    /// The name used in the audit log, the playbooks' `anomaly.evidence` and the logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Evidence::Level => "level",
            Evidence::Jump => "jump",
            Evidence::Shift => "shift",
            Evidence::Drift => "drift",
            Evidence::Shape => "shape",
            Evidence::Record => "record",
        }
    }
}

impl std::fmt::Display for Evidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

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
    /// Which component scored highest.
    pub evidence: Evidence,
    /// Whether the point was judged against the daily profile (its residual), not
    /// against the plain level.
    pub seasonal: bool,
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

impl Model {
    /// Whether a model read back from disk can be used without risk: a file edited or
    /// damaged outside homeostat must be refitted, never crash the agent.
    pub fn check(&self) -> Result<(), String> {
        match self {
            Model::Robust(b) => b.check(),
            Model::Ensemble(b) => b.check(),
        }
    }
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
/// threshold, the operator's minimum deviation, and the hysteresis that turns points
/// into anomaly events.
pub struct Detector {
    baseline: Model,
    hysteresis: Hysteresis,
    threshold: f64,
    direction: Direction,
    min_deviation: f64,
    min_relative_deviation: f64,
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
            direction: cfg.direction,
            min_deviation: cfg.min_deviation,
            min_relative_deviation: cfg.min_relative_deviation,
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

    /// Scores one point (seeing only what came before it), then learns from it. A value
    /// that is not a finite number is missing data: no evidence either way (the run
    /// towards opening or closing is interrupted), never an anomaly, nothing learnt.
    pub fn step(&mut self, t: f64, value: f64) -> Step {
        if !value.is_finite() {
            self.hysteresis.interrupt();
            return Step {
                assessment: Assessment {
                    score: 0.0,
                    deviation: 0.0,
                    expected: f64::NAN,
                    lower: f64::NAN,
                    upper: f64::NAN,
                    warming_up: false,
                    evidence: Evidence::Level,
                    seasonal: false,
                },
                anomalous: false,
                transition: Transition::None,
            };
        }
        let mut assessment = self.baseline.update(t, value);
        // The operator's minimum deviation is a promise, not a tendency: the band widens
        // to it, and a point inside it is normal however unusual the baseline finds it.
        // Its score is held just below the threshold, so that the exported score still
        // meets the threshold exactly when the point is anomalous.
        let needed = self
            .min_deviation
            .max(self.min_relative_deviation * assessment.expected.abs());
        let far_enough =
            needed <= 0.0 || directional(value - assessment.expected, self.direction) >= needed;
        if !far_enough && assessment.score >= self.threshold && self.threshold > 0.0 {
            // The largest float below the (positive) threshold: `f64::next_down` needs
            // Rust 1.86.
            assessment.score = f64::from_bits(self.threshold.to_bits() - 1);
        }
        // (NaN edges, "no band yet", stay NaN.)
        if needed > 0.0 && !assessment.lower.is_nan() && !assessment.upper.is_nan() {
            assessment.lower = assessment.lower.min(assessment.expected - needed);
            assessment.upper = assessment.upper.max(assessment.expected + needed);
        }
        let anomalous = assessment.is_anomalous(self.threshold) && far_enough;
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

/// Deterministic pseudo-noise in [-1, 1], for the detectors' tests.
#[cfg(test)]
fn noisy(i: usize) -> f64 {
    ((i as f64 * 12.9898).sin() * 43758.5453).fract() * 2.0 - 1.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether an anomaly opens on 2,000 five-minute points of noise around 100 followed
    /// by ten points `jump` away, and the band at the last point.
    fn opens(cfg: &DetectionConfig, jump: f64) -> (bool, Assessment) {
        let mut d = Detector::new(cfg);
        let mut opened = false;
        let mut last = None;
        for i in 0..2010 {
            let x = 100.0 + noisy(i) + if i >= 2000 { jump } else { 0.0 };
            let step = d.step(i as f64 * 300.0, x);
            // What is exported says what was decided.
            assert_eq!(
                step.anomalous,
                step.assessment.score >= cfg.threshold,
                "{i}"
            );
            opened |= i >= 2000 && step.transition == Transition::Opened;
            last = Some(step.assessment);
        }
        (opened, last.expect("points were fed"))
    }

    #[test]
    fn an_unusual_point_too_close_to_normal_for_the_operator_does_not_alarm() {
        // Six units is some ten spreads of this noise: the baseline alone alarms.
        let plain = DetectionConfig::default();
        assert!(opens(&plain, 6.0).0);
        assert!(opens(&plain, -6.0).0);
        let absolute = DetectionConfig {
            min_deviation: 8.0,
            ..plain.clone()
        };
        let relative = DetectionConfig {
            min_relative_deviation: 0.08,
            ..plain.clone()
        };
        for cfg in [&absolute, &relative] {
            assert!(!opens(cfg, 6.0).0, "{cfg:?}");
            assert!(!opens(cfg, -6.0).0, "{cfg:?}");
            assert!(opens(cfg, 12.0).0, "{cfg:?}");
            assert!(opens(cfg, -12.0).0, "{cfg:?}");
            // The band says the same: it reaches at least the minimum either way.
            let (_, a) = opens(cfg, 0.0);
            assert!(
                a.upper >= a.expected + 7.9 && a.lower <= a.expected - 7.9,
                "{a:?}"
            );
        }
        // Only a deviation on a side the signal cares about counts.
        let up = DetectionConfig {
            direction: Direction::Up,
            min_deviation: 8.0,
            ..plain.clone()
        };
        assert!(opens(&up, 12.0).0);
        assert!(!opens(&up, -12.0).0);
    }

    #[test]
    fn a_missing_value_is_no_evidence_either_way() {
        // An anomaly opens on the jump and closes after five normal points; a missing
        // value among those five interrupts their run, so it closes that much later.
        let cfg = DetectionConfig {
            close_after: 5,
            ..DetectionConfig::default()
        };
        let closed_at = |missing: Option<usize>| {
            let mut d = Detector::new(&cfg);
            let mut opened = false;
            for i in 0..2400 {
                let jump = if (2000..2010).contains(&i) { 12.0 } else { 0.0 };
                let x = if Some(i) == missing {
                    f64::NAN
                } else {
                    100.0 + noisy(i) + jump
                };
                let step = d.step(i as f64 * 300.0, x);
                if x.is_nan() {
                    assert!(!step.anomalous && step.assessment.score == 0.0, "{step:?}");
                }
                opened |= step.transition == Transition::Opened;
                if opened && step.transition == Transition::Closed {
                    return i;
                }
            }
            panic!("the anomaly never closed");
        };
        let closed = closed_at(None);
        assert!(closed > 2010, "{closed}");
        assert_eq!(closed_at(Some(closed - 2)), closed + 3);
    }

    #[test]
    fn no_minimum_leaves_the_band_and_verdicts_to_the_baseline() {
        let cfg = DetectionConfig::default();
        let mut d = Detector::new(&cfg);
        let mut b = new_baseline(&cfg);
        let mut alarmed = false;
        for i in 0..600 {
            let jump = if (500..510).contains(&i) { 9.0 } else { 0.0 };
            let (t, x) = (i as f64 * 300.0, 100.0 + noisy(i) + jump);
            let (step, a) = (d.step(t, x), b.update(t, x));
            // NaN edges (warming up) compare unequal: compare bit patterns.
            assert_eq!(step.assessment.lower.to_bits(), a.lower.to_bits(), "{i}");
            assert_eq!(step.assessment.upper.to_bits(), a.upper.to_bits(), "{i}");
            assert_eq!(step.anomalous, a.is_anomalous(cfg.threshold), "{i}");
            alarmed |= step.anomalous;
        }
        assert!(alarmed, "the jump should have been anomalous");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// Any finite values a store may answer, however extreme, in any order: each
        /// engine scores them without a panic.
        #[test]
        fn extreme_finite_values_never_panic(
            values in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::num::f64::NORMAL,
                    proptest::num::f64::SUBNORMAL,
                    proptest::num::f64::ZERO,
                    proptest::sample::select(vec![f64::MAX, f64::MIN, 1e300, -1e300, 0.0]),
                ],
                1..400,
            )
        ) {
            for engine in [crate::config::Engine::Ensemble, crate::config::Engine::Robust] {
                let cfg = DetectionConfig { engine, ..DetectionConfig::default() };
                let mut det = Detector::new(&cfg);
                for (i, v) in values.iter().enumerate() {
                    det.step(i as f64 * 60.0, *v);
                }
            }
        }
    }
}
