//! What the ensemble's tests share: the default settings, series fed one point per
//! reference step, and reproducible random draws.

pub(super) use super::clock::STEP;
use super::profile::explains;
pub(super) use super::Ensemble;
pub(super) use crate::config::{DetectionConfig, Direction};
pub(super) use crate::detect::{noisy, Baseline};

impl Ensemble {
    /// Whether the profile's view would judge the next point.
    pub(super) fn use_seasonal(&self) -> bool {
        explains(&self.resid, &self.plain, self.seasonal_view, self.warmup)
    }
}

/// A new ensemble with the default settings.
pub(super) fn ensemble() -> Ensemble {
    Ensemble::new(&DetectionConfig::default())
}

/// An ensemble that has seen 5,000 steps of noise around 10 with a spike of 30 every
/// 500: surprises have become routine.
pub(super) fn routine_spikes() -> Ensemble {
    let mut e = ensemble();
    for i in 0..5000 {
        let spike = if i % 500 == 250 { 30.0 } else { 0.0 };
        e.update(i as f64 * STEP, 10.0 + noisy(i) + spike);
    }
    e
}

/// Points of a day at the reference step (five minutes).
pub(super) const DAY: usize = 288;

/// Indices of the points at or above `threshold` in `xs[from..]`, fed one per
/// reference step: the tests count in points.
pub(super) fn alarms(e: &mut Ensemble, xs: &[f64], from: usize, threshold: f64) -> Vec<usize> {
    xs.iter()
        .enumerate()
        .filter_map(|(i, &x)| {
            let a = e.update(i as f64 * STEP, x);
            (i >= from && a.score >= threshold).then_some(i)
        })
        .collect()
}

/// The default threshold: the tests check what `run` would do.
pub(super) fn threshold() -> f64 {
    DetectionConfig::default().threshold
}

/// Xorshift: reproducible random draws for the tests that need a distribution.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    /// Uniform in [0, 1).
    pub(super) fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Poisson with mean `lambda` (Knuth's product of uniforms: fine for small means).
    pub(super) fn poisson(&mut self, lambda: f64) -> f64 {
        let (limit, mut k, mut p) = ((-lambda).exp(), 0.0, 1.0);
        loop {
            p *= self.next();
            if p <= limit {
                return k;
            }
            k += 1.0;
        }
    }
}
