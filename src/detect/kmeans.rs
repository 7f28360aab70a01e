//! The ML component of the ensemble: k-means (linfa) over short lag features, as
//! Netdata does it. The feature vector of a point is its last [`D`] first differences
//! (the *shape* of the recent path, not its level); two centroids are learnt from the
//! last [`N`] points and relearnt every [`RETRAIN`] points, and a point is scored by its
//! distance to the nearest centroid, in units of the training points' own 99th
//! percentile distance. Pure and synchronous; only data up to the scored point is used.

use linfa::traits::Fit;
use linfa::DatasetBase;
use linfa_clustering::KMeans;
use ndarray::Array2;
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

/// Lag features per point: the last six first differences.
pub const D: usize = 6;
/// Values kept for training (f32: half the memory, ample precision for a shape).
pub const N: usize = 128;
/// Points between two trainings (training costs ~0.25 ms: this keeps it under 0.3 µs a point).
pub const RETRAIN: u32 = 1024;
/// Clusters (Netdata's choice: "normal" and "the rest of normal").
const CLUSTERS: usize = 2;

/// The one thread every k-means fit runs on (`None` if it could not be started: the fits
/// then go to rayon's global pool). linfa's k-means is written for rayon: from an ordinary
/// thread, each fit of these 122 rows was handed to a pool of one thread per core, split
/// across it, and left those threads spinning, competing with the async runtime for the
/// cores. Whole on one thread, `homeostat bench` went from 2.5 to 3.5 M points per second,
/// with a third of the system time.
fn fit_pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .thread_name(|_| "kmeans".to_string())
            .build()
            .ok()
    })
    .as_ref()
}

/// Streaming k-means over lag features of one series.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LagKMeans {
    /// Ring buffer of the last [`N`] values; `next` is where the next one goes.
    ring: Vec<f32>,
    next: usize,
    filled: usize,
    /// Points since the last training.
    since: u32,
    /// Learnt centroids (empty until the first training).
    centroids: Vec<[f32; D]>,
    /// 99th percentile of the training points' distances: the unit of the score.
    scale: f32,
}

impl Default for LagKMeans {
    fn default() -> Self {
        LagKMeans::new()
    }
}

impl LagKMeans {
    /// An untrained model.
    pub fn new() -> Self {
        LagKMeans {
            ring: vec![0.0; N],
            next: 0,
            filled: 0,
            since: 0,
            centroids: Vec::new(),
            scale: 0.0,
        }
    }

    /// Whether a saved model can be used: its ring and cursor in range, its centroids
    /// and scale finite. A model read from disk is checked before it runs.
    pub fn check(&self) -> Result<(), String> {
        if self.ring.len() != N || self.next >= N || self.filled > N {
            return Err(format!(
                "k-means ring of {} with cursor {} and {} filled (expected {N}, below {N}, at most {N})",
                self.ring.len(),
                self.next,
                self.filled
            ));
        }
        let finite = self.ring.iter().all(|x| x.is_finite())
            && self.centroids.iter().flatten().all(|x| x.is_finite())
            && self.scale.is_finite();
        if !finite || (self.is_trained() && self.scale <= 0.0) {
            return Err("k-means values not finite, or a trained model without a scale".into());
        }
        Ok(())
    }

    /// Whether a model was learnt.
    pub fn is_trained(&self) -> bool {
        !self.centroids.is_empty()
    }

    /// Learns from history (oldest first), exactly as streaming it would.
    pub fn fit(&mut self, history: &[f64]) {
        for &x in history {
            self.update(x);
        }
    }

    /// Scores `x` (distance of its lag features to the nearest centroid, 1.0 = the edge
    /// of what training saw) before learning it; `None` while untrained or for a
    /// non-finite value (which is not learnt).
    pub fn update(&mut self, x: f64) -> Option<f64> {
        if !x.is_finite() {
            return None;
        }
        let x = x as f32;
        let score = match (self.is_trained(), self.features_with(x)) {
            (true, Some(f)) => Some(f64::from(self.distance(&f) / self.scale)),
            _ => None,
        };
        self.push(x);
        if self.filled == N && (self.since >= RETRAIN || !self.is_trained()) {
            self.train();
            self.since = 0;
        }
        score
    }

    /// Fills a gap of `missing` points before `x` (which [`update`](Self::update) is given
    /// next) with the straight line from the last value: the path across a gap is
    /// unknown, and a jump over it is a change over the whole gap, not one step's.
    pub fn bridge(&mut self, x: f64, missing: usize) {
        if !x.is_finite() || self.filled == 0 {
            return;
        }
        let (last, x) = (self.back(0), x as f32);
        let span = (missing + 1) as f32;
        // Only the last D of them reach a feature.
        for j in (1..=missing.min(D)).rev() {
            self.push(x - (x - last) * j as f32 / span);
        }
    }

    fn push(&mut self, x: f32) {
        self.ring[self.next] = x;
        self.next = (self.next + 1) % N;
        self.filled = (self.filled + 1).min(N);
        self.since += 1;
    }

    /// The `i`-th most recent stored value (0 = newest).
    fn back(&self, i: usize) -> f32 {
        self.ring[(self.next + N - 1 - i) % N]
    }

    /// Features of a new value `x` on top of the stored ones.
    fn features_with(&self, x: f32) -> Option<[f32; D]> {
        if self.filled < D {
            return None;
        }
        let mut f = [0.0; D];
        f[0] = x - self.back(0);
        for (k, slot) in f.iter_mut().enumerate().skip(1) {
            *slot = self.back(k - 1) - self.back(k);
        }
        Some(f)
    }

    fn distance(&self, f: &[f32; D]) -> f32 {
        self.centroids
            .iter()
            .map(|c| c.iter().zip(f).map(|(a, b)| (a - b) * (a - b)).sum::<f32>())
            .fold(f32::INFINITY, f32::min)
            .sqrt()
    }

    /// Relearns the centroids from the buffer; on failure keeps the previous model.
    fn train(&mut self) {
        // Values oldest first, then one feature row per point that has D predecessors.
        let values: Vec<f32> = (0..N).rev().map(|i| self.back(i)).collect();
        let rows = N - D;
        let mut data = Array2::<f64>::zeros((rows, D));
        for r in 0..rows {
            let t = r + D; // the point whose features this row holds
            for k in 0..D {
                data[[r, k]] = f64::from(values[t - k] - values[t - k - 1]);
            }
        }
        // Mean absolute difference: the floor of the scale, so a flat series (all
        // distances zero) does not turn every wiggle into infinity.
        let mad = data.iter().map(|v| v.abs()).sum::<f64>() / data.len() as f64;
        let fit = || {
            KMeans::params(CLUSTERS)
                .max_n_iterations(10)
                .tolerance(1e-3)
                .n_runs(1)
                .fit(&DatasetBase::from(data.clone()))
        };
        let model = match fit_pool() {
            Some(pool) => pool.install(fit),
            None => fit(),
        };
        let Ok(model) = model else {
            return;
        };
        let centroids: Vec<[f32; D]> = model
            .centroids()
            .rows()
            .into_iter()
            .map(|row| {
                let mut c = [0.0f32; D];
                for (slot, v) in c.iter_mut().zip(row.iter()) {
                    *slot = *v as f32;
                }
                c
            })
            .collect();
        if centroids.iter().flatten().any(|v| !v.is_finite()) {
            return;
        }
        self.centroids = centroids;
        let mut distances: Vec<f32> = data
            .rows()
            .into_iter()
            .map(|row| {
                let mut f = [0.0f32; D];
                for (slot, v) in f.iter_mut().zip(row.iter()) {
                    *slot = *v as f32;
                }
                self.distance(&f)
            })
            .collect();
        distances.sort_by(f32::total_cmp);
        let p99 = distances[(distances.len() * 99 / 100).min(distances.len() - 1)];
        self.scale = p99.max((0.1 * mad) as f32).max(1e-6);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::noisy;

    fn wave(i: usize) -> f64 {
        10.0 * (i as f64 * std::f64::consts::TAU / 24.0).sin() + 0.3 * noisy(i)
    }

    #[test]
    fn untrained_says_nothing_then_scores() {
        let mut m = LagKMeans::new();
        let early: Vec<_> = (0..N).map(|i| m.update(wave(i))).collect();
        assert!(early.iter().all(Option::is_none));
        assert!(m.is_trained());
        assert!(m.update(wave(N)).is_some());
    }

    #[test]
    fn a_break_of_the_pattern_scores_far_above_the_pattern() {
        let mut m = LagKMeans::new();
        m.fit(&(0..1000).map(wave).collect::<Vec<_>>());
        let mut normal: Vec<f64> = (1000..1500).filter_map(|i| m.update(wave(i))).collect();
        normal.sort_by(f64::total_cmp);
        let p99 = normal[normal.len() * 99 / 100];
        assert!(p99 < 2.0, "pattern scores {p99}");
        // The wave stops and the value jumps: a path the model never saw.
        let jump = m.update(wave(1499) + 25.0).unwrap();
        assert!(jump > 5.0 * p99, "jump {jump} vs p99 {p99}");
    }

    #[test]
    fn a_gap_bridged_by_a_straight_line_is_no_jump() {
        // A steady climb with a little noise, then ten points missing.
        let climb = |i: usize| i as f64 + 0.2 * noisy(i);
        let (mut bridged, mut jumped) = (LagKMeans::new(), LagKMeans::new());
        for m in [&mut bridged, &mut jumped] {
            m.fit(&(0..500).map(climb).collect::<Vec<_>>());
        }
        bridged.bridge(climb(510), 9);
        let (calm, jump) = (bridged.update(climb(510)), jumped.update(climb(510)));
        let (calm, jump) = (calm.unwrap(), jump.unwrap());
        assert!(calm < 1.5, "the climb went on as before: {calm}");
        assert!(jump > 5.0, "unbridged, ten points' climb in one: {jump}");
        // The next points see only the climb's slope.
        assert!(bridged.update(climb(511)).unwrap() < 1.5);
    }

    #[test]
    fn deterministic_and_blind_to_the_future() {
        let xs: Vec<f64> = (0..800).map(wave).collect();
        let mut ys = xs.clone();
        ys[600..].iter_mut().for_each(|v| *v *= -3.0);
        let (mut a, mut b) = (LagKMeans::new(), LagKMeans::new());
        let sa: Vec<_> = xs.iter().map(|&x| a.update(x)).collect();
        let sb: Vec<_> = ys.iter().map(|&x| b.update(x)).collect();
        assert_eq!(sa[..600], sb[..600]);
        assert_ne!(sa[600..], sb[600..]);
        let mut c = LagKMeans::new();
        let sc: Vec<_> = xs.iter().map(|&x| c.update(x)).collect();
        assert_eq!(sa, sc);
    }

    #[test]
    fn a_restored_model_goes_on_bit_for_bit() {
        let mut m = LagKMeans::new();
        m.fit(&(0..300).map(wave).collect::<Vec<_>>());
        let mut back: LagKMeans =
            serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        for i in 300..700 {
            assert_eq!(m.update(wave(i)), back.update(wave(i)), "at {i}");
        }
    }

    #[test]
    fn fits_from_any_thread_agree() {
        // Detectors run on the async runtime's threads, tests on their own, and a caller
        // may itself be inside a rayon pool: every fit goes through the one k-means thread.
        let xs: Vec<f64> = (0..3000).map(wave).collect();
        let run = |xs: &[f64]| {
            let mut m = LagKMeans::new();
            xs.iter().map(|&x| m.update(x)).collect::<Vec<_>>()
        };
        let here = run(&xs);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let xs = xs.clone();
                std::thread::spawn(move || run(&xs))
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), here);
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        assert_eq!(pool.install(|| run(&xs)), here);
    }

    #[test]
    fn a_flat_series_stays_finite() {
        let mut m = LagKMeans::new();
        let scores: Vec<_> = (0..500).filter_map(|_| m.update(3.0)).collect();
        assert!(!scores.is_empty() && scores.iter().all(|s| s.is_finite() && *s == 0.0));
        assert!(m.update(3.5).unwrap().is_finite());
    }
}
