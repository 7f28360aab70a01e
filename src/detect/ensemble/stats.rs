//! The streaming statistics of one view of a series (the values themselves, or their
//! residuals against the daily profile): a slow level and its spread, a recent level,
//! the first differences' mean and spread, and a two-sided CUSUM. They give the raw,
//! signed scores of the four statistics components (level, jump, shift and drift),
//! in spreads; an outlier moves them only so far. O(1) in time and memory.

use serde::{Deserialize, Serialize};

use super::clock::{across, per_step, GAP_STEPS};
use crate::config::Direction;
use crate::detect::Evidence;

/// `sqrt(pi / 2)`: turns a mean absolute deviation into a normal standard deviation.
pub(super) const MEAN_ABS_DEV_TO_SIGMA: f64 = 1.253_314_137;
/// Smoothing of the slow level and spread (memory of roughly 1/alpha steps). Like every
/// memory, smoothing and count in the ensemble, it is per reference step of data.
pub(super) const ALPHA_SLOW: f64 = 0.01;
/// Smoothing of the fast level, used to see level shifts.
const ALPHA_FAST: f64 = 0.2;
/// Outliers move the statistics at most this many spreads, so one spike does not
/// teach the baseline that spikes are normal.
pub(super) const CLIP: f64 = 5.0;
/// CUSUM slack, in spreads: drifts smaller than this do not accumulate.
const CUSUM_SLACK: f64 = 0.5;
/// CUSUM evidence (in spreads) at which a change point is declared: the level restarts
/// from the recent mean, so a new normal stops alarming.
const CUSUM_CHANGE: f64 = 48.0;

/// The components: level, first difference, level shift and change point (CUSUM). All
/// are signed. (An activity-change component, the log ratio of recent to usual absolute
/// differences, was dropped: on NAB it raised ten false alarms for each window it found,
/// and what it sees, the difference component sees too.)
pub(super) const STAT_COMPONENTS: usize = 4;
/// What each statistics component measures, in [`Raw`]'s order.
pub(super) const STAT_EVIDENCE: [Evidence; STAT_COMPONENTS] = [
    Evidence::Level,
    Evidence::Jump,
    Evidence::Shift,
    Evidence::Drift,
];
/// The level component's place in [`Raw`]: the point's deviation, in spreads.
pub(super) const LEVEL: usize = 0;
/// The level shift component's place in [`Raw`]: the recent level's deviation.
pub(super) const SHIFT: usize = 2;

/// The raw, signed score of each statistics component, in [`STAT_EVIDENCE`]'s order.
pub(super) type Raw = [f64; STAT_COMPONENTS];

/// O(1) statistics of one view of a series.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(super) struct Stats {
    /// Reference steps seen (a point counts for its share of one).
    #[serde(rename = "n")]
    pub(super) steps: f64,
    /// The level: a slow average of the values, each clipped to [`CLIP`] spreads.
    #[serde(rename = "mean")]
    pub(super) level: f64,
    /// The mean absolute deviation from the level (evened out over the day: see
    /// [`Stats::scales`]).
    #[serde(rename = "dev")]
    pub(super) abs_dev: f64,
    /// The recent level: a fast average, to see level shifts.
    #[serde(rename = "fast")]
    recent: f64,
    /// The value a reference step ago (at finer steps, the recent path smoothed over a
    /// step): what the next difference is taken against.
    #[serde(rename = "prev")]
    previous: f64,
    /// The mean first difference.
    #[serde(rename = "dmean")]
    diff_mean: f64,
    /// The first differences' mean absolute deviation (evened out, like the level's).
    #[serde(rename = "ddev")]
    diff_abs_dev: f64,
    /// CUSUM of standardised deviations above the level.
    #[serde(rename = "up")]
    cusum_up: f64,
    /// CUSUM of standardised deviations below the level.
    #[serde(rename = "down")]
    cusum_down: f64,
}

impl Stats {
    /// Where the prediction the residuals are taken against moved by `d` since the
    /// previous point (the daily profile's next half hour, or its bucket's learning),
    /// re-expresses the previous residual against the new prediction if the difference
    /// to residual `r` is then the more usual one. The profile is a step per half hour:
    /// a square daily wave steps with it, and its step explains the values' jump; a
    /// smooth wave is cut into steps by it, and a jump of the residuals at every half
    /// hour would be an artefact that widens their differences' spread until a real
    /// jump passes as noise. Taken the way that fits, a residual's jump is one that
    /// neither explains.
    pub(super) fn rebase_previous(&mut self, r: f64, d: f64) {
        let kept = (r - self.previous - self.diff_mean).abs();
        let rebased = (r - (self.previous - d) - self.diff_mean).abs();
        if rebased < kept {
            self.previous -= d;
        }
    }

    /// The spreads of the level and of the difference here, in the values' units: the
    /// spreads are kept evened out (see the daily profile's evener), `even` says by how
    /// much here (1: the values' view).
    pub(super) fn scales(&self, floor: f64, even: f64) -> (f64, f64) {
        (
            (MEAN_ABS_DEV_TO_SIGMA * self.abs_dev / even).max(floor),
            (MEAN_ABS_DEV_TO_SIGMA * self.diff_abs_dev / even).max(floor),
        )
    }

    /// The raw component scores of `x`, `gap` steps after the previous point,
    /// signed where a direction applies: level, first difference, level shift and change
    /// point.
    pub(super) fn raw(&self, x: f64, floor: f64, even: f64, w: f64, gap: f64) -> Raw {
        let (scale, dscale) = self.scales(floor, even);
        let dscale = across(dscale, scale, gap);
        let recent = self.recent + per_step(ALPHA_FAST, w) * (x - self.recent);
        [
            (x - self.level) / scale,
            (x - self.previous - self.diff_mean) / dscale,
            // An EWMA's standard deviation is sigma * sqrt(alpha / (2 - alpha)).
            (recent - self.level) / (scale * (ALPHA_FAST / (2.0 - ALPHA_FAST)).sqrt()),
            {
                let (up, down) = self.cusum(x, scale, w);
                if up >= down {
                    up
                } else {
                    -down
                }
            },
        ]
    }

    /// The CUSUM statistics after `x` (clipped like the level, so one spike adds little).
    fn cusum(&self, x: f64, scale: f64, w: f64) -> (f64, f64) {
        let z = ((x - self.level) / scale).clamp(-CLIP, CLIP);
        (
            // Grouped so that a full step computes exactly `up + z - slack`.
            (self.cusum_up + w * z - w * CUSUM_SLACK).max(0.0),
            (self.cusum_down - w * z - w * CUSUM_SLACK).max(0.0),
        )
    }

    /// Learns `x`, a point worth `w` of a step, `gap` steps after the previous one.
    pub(super) fn learn(
        &mut self,
        x: f64,
        floor: f64,
        even: f64,
        direction: Direction,
        w: f64,
        gap: f64,
    ) {
        if self.steps == 0.0 {
            *self = Stats {
                steps: w,
                level: x,
                recent: x,
                previous: x,
                ..Stats::default()
            };
            return;
        }
        // Early on, plain running averages; later, exponential forgetting.
        let a = (w / (self.steps + w)).max(per_step(ALPHA_SLOW, w));
        let (scale, dscale) = self.scales(floor, even);
        let dx = x - self.previous;
        let (xc, dxc) = if self.steps > 8.0 {
            (
                clip(x, self.level - CLIP * scale, self.level + CLIP * scale),
                clip(
                    dx,
                    self.diff_mean - CLIP * dscale,
                    self.diff_mean + CLIP * dscale,
                ),
            )
        } else {
            (x, dx)
        };
        (self.cusum_up, self.cusum_down) = self.cusum(x, scale, w);
        if self.cusum_up.max(self.cusum_down) > CUSUM_CHANGE {
            // A change point: the level restarts from the recent mean (the spread stays),
            // but only for a shift the signal cares about. Otherwise a dip of an `up`
            // signal would become the level, and the recovery would look like a rise.
            let cared = match direction {
                Direction::Both => true,
                Direction::Up => self.cusum_up > self.cusum_down,
                Direction::Down => self.cusum_down > self.cusum_up,
            };
            if cared {
                self.level = self.recent;
            }
            self.cusum_up = 0.0;
            self.cusum_down = 0.0;
        }
        self.abs_dev += a * ((xc - self.level).abs() * even - self.abs_dev);
        self.level += a * (xc - self.level);
        self.recent += per_step(ALPHA_FAST, w).max(a) * (x - self.recent);
        // A difference across a gap is no one-step difference: it must not widen theirs.
        if gap < GAP_STEPS {
            self.diff_abs_dev += a * ((dxc - self.diff_mean).abs() * even - self.diff_abs_dev);
            self.diff_mean += a * (dxc - self.diff_mean);
        }
        // The difference is taken against the value a reference step ago: at finer steps,
        // against the recent path smoothed over that span.
        self.previous = if w >= 1.0 {
            x
        } else {
            self.previous + w * (x - self.previous)
        };
        self.steps += w;
    }
}

/// `x.clamp(lo, hi)` without its panic when the bounds are NaN or crossed (state grown
/// non-finite from extreme input or a damaged saved model): then `x` passes unclipped.
fn clip(x: f64, lo: f64, hi: f64) -> f64 {
    if x < lo {
        lo
    } else if x > hi {
        hi
    } else {
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::ensemble::testing::*;

    #[test]
    fn a_level_shift_alarms_then_becomes_the_new_normal() {
        // Noise around 10, then from 3000 on around 20: the shift alarms at once, and a
        // change point moves the level, so the new normal is quiet well before the slow
        // level alone would have caught up.
        let xs: Vec<f64> = (0..6000)
            .map(|i| if i < 3000 { 10.0 } else { 20.0 } + noisy(i))
            .collect();
        let mut e = ensemble();
        let hits = alarms(&mut e, &xs, 1000, threshold());
        assert!(
            hits.first().is_some_and(|&i| (3000..3003).contains(&i)),
            "{hits:?}"
        );
        assert!(hits.iter().all(|&i| i < 3300), "still alarming: {hits:?}");
        assert!(
            (e.plain.level - 20.0).abs() < 1.0,
            "level {}",
            e.plain.level
        );
    }

    #[test]
    fn an_outlier_moves_the_level_by_at_most_a_few_spreads() {
        let mut s = Stats::default();
        let learn = |s: &mut Stats, x: f64| s.learn(x, 1e-9, 1.0, Direction::Both, 1.0, 1.0);
        for i in 0..1000 {
            learn(&mut s, 10.0 + noisy(i));
        }
        let (level, (scale, _)) = (s.level, s.scales(1e-9, 1.0));
        learn(&mut s, 1e6);
        let moved = s.level - level;
        assert!(
            moved > 0.0 && moved <= ALPHA_SLOW * CLIP * scale * (1.0 + 1e-9),
            "{moved}"
        );
    }
}
