//! The path's shape: k-means over lag features (`detect::kmeans`), fed as the ensemble's
//! other components are, one point per reference step with gaps bridged, and its
//! distances judged by a SPOT tail of their own.

use serde::{Deserialize, Serialize};

use super::spot::{likelier, Judgement, Spot};
use crate::detect::kmeans::LagKMeans;

/// The ML component's tail probability is multiplied by this before it competes with
/// the statistics. Its distances are noisier evidence (at full weight it alarms in long
/// runs on noise); discounted, it still speaks when the path's shape breaks well beyond
/// its training. Chosen by cross-validation (docs/engine.md's table).
const ML_DISCOUNT: f64 = 3.0;

/// The ML component: k-means over the path's recent shape, and the tail of its
/// distances.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Shape {
    /// K-means over lag features.
    #[serde(rename = "ml")]
    kmeans: LagKMeans,
    /// The tail of its distances.
    #[serde(rename = "cal_ml")]
    tail: Spot,
    /// Steps since the k-means last saw a point: it sees the path one point per step, so
    /// its lags span the same time whatever the sampling.
    #[serde(rename = "ml_due")]
    due: f64,
    /// The k-means' latest distance.
    #[serde(rename = "ml_raw")]
    distance: f64,
}

impl Shape {
    /// Whether a saved one can be used (see [`LagKMeans::check`]).
    pub(super) fn check(&self) -> Result<(), String> {
        self.kmeans.check()
    }

    /// An untrained k-means and an empty tail.
    pub(super) fn new() -> Self {
        Shape {
            kmeans: LagKMeans::new(),
            tail: Spot::default(),
            due: 0.0,
            distance: 0.0,
        }
    }

    /// The k-means' distance as of `x`, a point worth `w` of a step after `missed` points
    /// went missing: once a step's worth of points has passed, the k-means scores `x`
    /// and learns it; until then its latest distance stands.
    pub(super) fn see(&mut self, x: f64, w: f64, missed: usize) -> f64 {
        self.kmeans.bridge(x, missed);
        self.due += w;
        if self.due >= 1.0 {
            // Keep the remainder, so the k-means' clock does not drift (ten tenths are
            // not quite one).
            self.due -= 1.0;
            self.distance = self.kmeans.update(x).unwrap_or(0.0);
        }
        self.distance
    }

    /// The tail's judgement of distance `r` (a point worth `w` of a step).
    pub(super) fn judge(&mut self, r: f64, w: f64, routine: bool) -> Judgement {
        self.tail.judge(r, w, routine)
    }

    /// The likelihood that the path's shape is unusual: the tail's, discounted by
    /// [`ML_DISCOUNT`]; 0 until the k-means has learnt a model.
    pub(super) fn likelihood(&self, j: &Judgement) -> f64 {
        let l = likelier(j.likelihood, ML_DISCOUNT);
        if self.kmeans.is_trained() {
            l
        } else {
            0.0
        }
    }

    /// The tail learns the judged distance. The k-means' distances are measured afresh
    /// at each retraining, so the tail's quantile follows them through surprises too.
    pub(super) fn learn(&mut self, j: &Judgement, w: f64) {
        self.tail.learn(j, w, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_k_means_sees_one_point_per_step_whatever_the_sampling() {
        // Trained on a wave at the reference step, then fed a point every quarter step:
        // the k-means scores (and learns) every fourth one; in between, its latest
        // distance stands.
        let wave = |i: usize| 10.0 * (i as f64 * std::f64::consts::TAU / 24.0).sin();
        let mut s = Shape::new();
        for i in 0..300 {
            s.see(wave(i), 1.0, 0);
        }
        let d: Vec<f64> = (0..8)
            .map(|k| s.see(wave(300) + 5.0 * k as f64, 0.25, 0))
            .collect();
        assert!(d[0] == d[1] && d[1] == d[2], "{d:?}");
        assert_ne!(d[3], d[2], "{d:?}");
        assert!(d[3] == d[4] && d[4] == d[5] && d[5] == d[6], "{d:?}");
        assert_ne!(d[7], d[6], "{d:?}");
    }

    #[test]
    fn an_untrained_k_means_says_nothing() {
        let mut s = Shape::new();
        let j = s.judge(100.0, 1.0, true);
        assert_eq!(s.likelihood(&j), 0.0);
    }
}
