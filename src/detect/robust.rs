//! Rolling median / MAD baseline: robust to the outliers it is meant to find.

use std::collections::VecDeque;

use super::{directional, Assessment, Baseline, Evidence};
use crate::config::{DetectionConfig, Direction};

/// `1 / Phi^-1(3/4)`: turns a median absolute deviation (MAD) into a normal standard
/// deviation. (Not the ensemble's factor: that one turns a *mean* absolute deviation.)
const MEDIAN_ABS_DEV_TO_SIGMA: f64 = 1.4826;

/// Rolling window of the last `window` values; scores a point by its distance from
/// the window's median in units of the (floored) MAD-based spread.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RollingRobust {
    window: VecDeque<f64>,
    capacity: usize,
    min_points: usize,
    threshold: f64,
    min_spread: f64,
    min_relative_spread: f64,
    direction: Direction,
    /// Reused for sorting; not part of the model.
    #[serde(skip)]
    scratch: Vec<f64>,
}

impl RollingRobust {
    /// Whether a saved window can be used: a capacity of at least one that it fits in.
    pub fn check(&self) -> Result<(), String> {
        if self.capacity == 0 || self.window.len() > self.capacity || self.min_points == 0 {
            return Err(format!(
                "window of {} in a capacity of {} (min points {})",
                self.window.len(),
                self.capacity,
                self.min_points
            ));
        }
        Ok(())
    }

    /// A baseline with the window, threshold, spread floors and direction of `cfg`.
    pub fn new(cfg: &DetectionConfig) -> Self {
        RollingRobust {
            window: VecDeque::with_capacity(cfg.window),
            capacity: cfg.window,
            // Enough points for the median and MAD to mean something.
            min_points: (cfg.window / 4).clamp(5, 30),
            threshold: cfg.threshold,
            min_spread: cfg.min_spread,
            min_relative_spread: cfg.min_relative_spread,
            direction: cfg.direction,
            scratch: Vec::with_capacity(cfg.window),
        }
    }

    fn push(&mut self, value: f64) {
        if self.window.len() == self.capacity {
            self.window.pop_front();
        }
        self.window.push_back(value);
    }

    /// Median and spread of the current window.
    fn level_and_spread(&mut self) -> (f64, f64) {
        self.scratch.clear();
        self.scratch.extend(self.window.iter().copied());
        let median = median_in_place(&mut self.scratch);
        for v in self.scratch.iter_mut() {
            *v = (*v - median).abs();
        }
        let mad = median_in_place(&mut self.scratch);
        let spread = (MEDIAN_ABS_DEV_TO_SIGMA * mad)
            .max(self.min_spread)
            .max(self.min_relative_spread * median.abs())
            // A perfectly flat, zero-level series still needs a non-zero unit.
            .max(1e-9);
        (median, spread)
    }
}

fn median_in_place(v: &mut [f64]) -> f64 {
    let n = v.len();
    let mid = n / 2;
    let (_, m, _) = v.select_nth_unstable_by(mid, f64::total_cmp);
    let m = *m;
    if n % 2 == 1 {
        m
    } else {
        let lower = v[..mid].iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (lower + m) / 2.0
    }
}

impl Baseline for RollingRobust {
    fn fit(&mut self, history: &[(f64, f64)]) {
        for &(_, v) in history.iter().filter(|(_, v)| v.is_finite()) {
            self.push(v);
        }
    }

    fn update(&mut self, _t: f64, value: f64) -> Assessment {
        let assessment = if self.window.len() < self.min_points {
            Assessment {
                score: 0.0,
                deviation: 0.0,
                expected: value,
                lower: f64::NAN,
                upper: f64::NAN,
                warming_up: true,
                evidence: Evidence::Level,
                seasonal: false,
            }
        } else {
            let (median, spread) = self.level_and_spread();
            let z = (value - median) / spread;
            Assessment {
                score: directional(z, self.direction),
                deviation: z,
                expected: median,
                lower: median - self.threshold * spread,
                upper: median + self.threshold * spread,
                warming_up: false,
                evidence: Evidence::Level,
                seasonal: false,
            }
        };
        if value.is_finite() {
            self.push(value);
        }
        assessment
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::noisy;

    fn cfg() -> DetectionConfig {
        DetectionConfig {
            window: 64,
            threshold: 6.0,
            min_relative_spread: 0.0,
            ..DetectionConfig::default()
        }
    }

    #[test]
    fn median_handles_even_and_odd() {
        assert_eq!(median_in_place(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median_in_place(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn warms_up_then_flags_a_spike_but_not_noise() {
        let mut b = RollingRobust::new(&cfg());
        assert!(b.update(0.0, 10.0).warming_up);
        let history: Vec<_> = (0..200).map(|i| (i as f64, 10.0 + noisy(i))).collect();
        b.fit(&history);
        for i in 200..300 {
            let a = b.update(i as f64, 10.0 + noisy(i));
            assert!(!a.is_anomalous(6.0), "noise flagged at {i}: {a:?}");
        }
        let a = b.update(300.0, 40.0);
        assert!(a.is_anomalous(6.0), "{a:?}");
        assert!(a.upper < 40.0 && a.lower < a.expected && a.expected < a.upper);
    }

    #[test]
    fn direction_filters_scores() {
        let mut up = RollingRobust::new(&DetectionConfig {
            direction: Direction::Up,
            ..cfg()
        });
        let history: Vec<_> = (0..100).map(|i| (i as f64, 10.0 + noisy(i))).collect();
        up.fit(&history);
        assert_eq!(up.update(100.0, -50.0).score, 0.0);
        assert!(up.update(101.0, 70.0).score > 6.0);
    }

    #[test]
    fn flat_series_does_not_alarm_on_tiny_wiggles_with_a_relative_floor() {
        let mut b = RollingRobust::new(&DetectionConfig {
            min_relative_spread: 0.01,
            ..cfg()
        });
        b.fit(&(0..100).map(|i| (i as f64, 100.0)).collect::<Vec<_>>());
        assert!(!b.update(100.0, 100.5).is_anomalous(6.0));
        assert!(b.update(101.0, 110.0).is_anomalous(6.0));
    }

    #[test]
    fn a_level_shift_becomes_the_new_normal() {
        let mut b = RollingRobust::new(&cfg());
        b.fit(
            &(0..64)
                .map(|i| (i as f64, 10.0 + noisy(i)))
                .collect::<Vec<_>>(),
        );
        let flagged: Vec<bool> = (64..200)
            .map(|i| b.update(i as f64, 30.0 + noisy(i)).is_anomalous(6.0))
            .collect();
        assert!(flagged[0]);
        assert!(
            !flagged[flagged.len() - 1],
            "still alarming after the window turned over"
        );
    }

    #[test]
    fn score_at_t_ignores_later_data() {
        let points: Vec<f64> = (0..120).map(|i| 5.0 + noisy(i)).collect();
        let mut a = RollingRobust::new(&cfg());
        let mut b = RollingRobust::new(&cfg());
        let sa: Vec<_> = points
            .iter()
            .enumerate()
            .map(|(i, v)| a.update(i as f64, *v))
            .collect();
        let mut changed = points.clone();
        for v in changed[80..].iter_mut() {
            *v += 100.0;
        }
        let sb: Vec<_> = changed
            .iter()
            .enumerate()
            .map(|(i, v)| b.update(i as f64, *v))
            .collect();
        // Debug output compares NaN bands (warm-up) as equal, unlike `==`.
        let show = |v: &[Assessment]| v.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>();
        assert_eq!(show(&sa[..80]), show(&sb[..80]));
        assert_ne!(
            show(&sa[80..]),
            show(&sb[80..]),
            "the change after t must be visible after t"
        );
    }
}
