//! The ensemble's clock: every memory counts time, not points. A point stands for its
//! share of a reference [`STEP`] (at most one), smoothing is given per step, and a pause
//! much longer than the series' usual interval is a gap in the data, not a slower
//! query rate.

use serde::{Deserialize, Serialize};

/// The reference step, in seconds: a point counts for one step at most, a point of finer
/// data for its share. Counted per point, a series queried every 15 s would forget in
/// hours what a five-minute one keeps for days (a profile bucket would be trained in
/// three minutes), and alarm all day.
pub(super) const STEP: f64 = 300.0;
/// Smoothing of the typical time between points (for `threshold_per`, and to see gaps).
const ALPHA_INTERVAL: f64 = 0.05;
/// A pause longer than this many typical intervals counts as this many: a gap in the data
/// is not a slower query rate.
const GAP: f64 = 10.0;
/// A pause of this many steps or more is a gap in the data (a point was missed, however
/// the timing jitters): the difference across it does not teach the differences'
/// spread, and the k-means bridges it.
pub(super) const GAP_STEPS: f64 = 1.5;

/// When the series' points came: the latest one's time and share of a step, and the
/// typical interval between them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Clock {
    /// Seconds a tail probability is counted per (`threshold_per`; 0: per point).
    #[serde(default)]
    per: f64,
    /// Typical seconds between points (0 until two points were seen).
    #[serde(default)]
    interval: f64,
    /// Time of the latest point.
    #[serde(default)]
    last_t: Option<f64>,
    /// The latest point's share of a step (1 before any).
    last_w: f64,
}

/// How a new point stands in time.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tick {
    /// Its share of a reference step (at most 1).
    pub(super) w: f64,
    /// How many steps the pause before it spanned (at least 1).
    pub(super) gap: f64,
    /// How many points the k-means missed in that pause.
    pub(super) missed: usize,
}

impl Clock {
    /// A clock before any point, counting tail probabilities per `per` seconds (0: per
    /// point).
    pub(super) fn new(per: f64) -> Self {
        Clock {
            per,
            interval: 0.0,
            last_t: None,
            last_w: 1.0,
        }
    }

    /// Takes in a point at time `t`: how it stands after the previous one.
    pub(super) fn tick(&mut self, t: f64) -> Tick {
        let dt = self.since_last(t);
        let (gap, missed) = self.gap(dt);
        // A point stands for its share of a step, at most one (coarser data count per
        // point). The first point (`last_w` starts at 1) and a repeated or out-of-order
        // timestamp count as much as the point before: a whole step at five minutes, its
        // share at 15 s.
        let w = dt.map_or(self.last_w, |dt| (dt / STEP).min(1.0));
        self.last_w = w;
        Tick { w, gap, missed }
    }

    /// How many points a tail probability is counted over: `per / interval` with
    /// `threshold_per` (at least one), else one. The union bound over the points of
    /// `per`: a stricter count, as the memories already run in time and neighbouring
    /// points share most of their evidence.
    pub(super) fn points_per_statement(&self) -> f64 {
        if self.per == 0.0 {
            return 1.0;
        }
        if self.interval > 0.0 {
            (self.per / self.interval).max(1.0)
        } else {
            1.0
        }
    }

    /// How many steps the latest pause spanned (at least 1; a step is the reference
    /// [`STEP`], or the typical interval of coarser data: what the difference and the
    /// k-means count in) and how many points the k-means missed; then learns the typical
    /// interval from it.
    fn gap(&mut self, dt: Option<f64>) -> (f64, usize) {
        let Some(dt) = dt else { return (1.0, 0) };
        let gap = if self.interval > 0.0 {
            (dt / self.interval.max(STEP)).max(1.0)
        } else {
            1.0
        };
        let missed = if gap >= GAP_STEPS {
            (gap.round() - 1.0).min(1e6) as usize
        } else {
            0
        };
        self.interval = if self.interval > 0.0 {
            self.interval + ALPHA_INTERVAL * (dt.min(GAP * self.interval) - self.interval)
        } else {
            dt
        };
        (gap, missed)
    }

    /// Seconds since the previous point (none for the first, or out of order); `t` is
    /// the latest point from now on.
    fn since_last(&mut self, t: f64) -> Option<f64> {
        let dt = self.last_t.map(|last| t - last).filter(|dt| *dt > 0.0);
        // An out-of-order point does not turn the clock back: the next one would seem to
        // come after a gap.
        self.last_t = Some(self.last_t.map_or(t, |last| last.max(t)));
        dt
    }
}

/// The smoothing `alpha` of one reference step, for a point worth `w` of a step: the
/// same memory in time whatever the sampling (exactly `alpha` at a full step).
pub(super) fn per_step(alpha: f64, w: f64) -> f64 {
    if w >= 1.0 {
        alpha
    } else {
        1.0 - (1.0 - alpha).powf(w)
    }
}

/// The spread of a difference taken across `gap` steps: a random walk's grows with the
/// square root of the steps, and no difference of two values of the series is expected
/// wider than that of two independent ones (`sqrt(2)` level spreads). An exporter down
/// for an hour comes back with its value of an hour later: a change over the whole
/// pause, not over one step.
pub(super) fn across(dscale: f64, scale: f64, gap: f64) -> f64 {
    if gap <= 1.0 {
        return dscale;
    }
    (dscale * gap.sqrt()).min(dscale.max(std::f64::consts::SQRT_2 * scale))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::ensemble::testing::*;

    #[test]
    fn threshold_per_counts_tail_probabilities_per_time_not_per_point() {
        // The same noise, once every 15 s: per point it crosses 1 in 1,000 now and then;
        // per five minutes each tail probability is twenty times larger (a union bound over
        // the points of five minutes), and it does not. At a five-minute step the setting
        // changes nothing.
        let per_5m = DetectionConfig {
            threshold_per: Some(std::time::Duration::from_secs(300)),
            ..DetectionConfig::default()
        };
        let xs: Vec<f64> = (0..30_000).map(|i| 10.0 + noisy(i)).collect();
        let run = |cfg: &DetectionConfig, step: f64| -> Vec<f64> {
            let mut e = Ensemble::new(cfg);
            let scores = xs
                .iter()
                .enumerate()
                .map(|(i, &x)| e.update(i as f64 * step, x).score);
            scores.collect()
        };
        let count = |scores: &[f64]| scores.iter().filter(|&&s| s >= threshold()).count();
        let (point, per_time) = (run(&DetectionConfig::default(), 15.0), run(&per_5m, 15.0));
        assert!(
            count(&point) > 0,
            "the noise should cross 1 in 1,000 now and then"
        );
        assert_eq!(count(&per_time), 0, "20x fewer chances: {per_time:?}");
        assert_eq!(run(&DetectionConfig::default(), 300.0), run(&per_5m, 300.0));
    }

    #[test]
    fn a_change_across_a_gap_in_the_data_is_judged_as_a_change_over_the_gap() {
        // A slow wave with little noise: the values wander over ±20 while a step moves them
        // by 0.25 at most. Then two hours of data go missing, and the wave has moved on by
        // some 6 units (25 steps' change; well within its range).
        let wave = |i: usize| 100.0 + 20.0 * (i as f64 * std::f64::consts::TAU / 500.0).sin();
        let run = |gap_from: usize, jump: f64| -> bool {
            let mut e = ensemble();
            let mut alarmed = false;
            for i in (0..3200).filter(|i| !(gap_from..gap_from + 24).contains(i)) {
                let x = wave(i) + 0.2 * noisy(i) + if i >= gap_from { jump } else { 0.0 };
                let a = e.update(i as f64 * STEP, x);
                alarmed |= (gap_from + 24..gap_from + 30).contains(&i) && a.score >= threshold();
            }
            alarmed
        };
        // Where the wave is steepest, across the gap.
        let steep = 3000;
        assert!(
            (wave(steep + 24) - wave(steep - 1)).abs() > 6.0,
            "the test needs a change across the gap"
        );
        assert!(
            !run(steep, 0.0),
            "the wave's own change across a gap alarmed"
        );
        // A jump the wave never makes still alarms, gap or no gap.
        assert!(run(steep, 40.0));
    }

    #[test]
    fn the_verdicts_do_not_depend_on_the_sampling_step() {
        // The same five-minute series, once as it is and twice queried every 15 s: each
        // value held for its five minutes (an instant query returns the latest sample) and
        // interpolated (a `rate(...[5m])` evaluated more often). The memories count time,
        // not points, so the quiet part stays about as quiet and the level shift alarms in
        // the same five minutes. Counted per point, the 15 s series forgot in hours what
        // the five-minute one keeps for days, and alarmed 35 times before the shift.
        let xs: Vec<f64> = (0..4000)
            .map(|i| 10.0 + noisy(i) + if i >= 3500 { 5.0 } else { 0.0 })
            .collect();
        let episodes = |fine: usize, interpolate: bool| -> Vec<usize> {
            let mut e = ensemble();
            let mut onsets = Vec::new();
            let mut was = false;
            for (i, &x) in xs.iter().enumerate() {
                let next = xs.get(i + 1).copied().unwrap_or(x);
                for j in 0..fine {
                    let u = j as f64 / fine as f64;
                    let t = (i as f64 + u) * STEP;
                    let x = if interpolate { x + u * (next - x) } else { x };
                    let alarm = e.update(t, x).score >= threshold();
                    if alarm && !was && i >= DAY {
                        onsets.push(i);
                    }
                    was = alarm;
                }
            }
            onsets
        };
        let coarse = episodes(1, false);
        assert!(coarse.contains(&3500), "{coarse:?}");
        let quiet = |v: &[usize]| v.iter().filter(|&&i| i < 3499).count();
        for interpolate in [false, true] {
            let fine = episodes(20, interpolate);
            assert!(
                fine.iter().any(|i| (3499..3501).contains(i)),
                "interpolated {interpolate}: {fine:?}"
            );
            assert!(
                quiet(&fine) <= quiet(&coarse) + 1,
                "5 min: {coarse:?}, 15 s (interpolated {interpolate}): {fine:?}"
            );
        }
    }

    #[test]
    fn a_tick_says_how_a_point_stands_in_time() {
        let mut c = Clock::new(300.0);
        // The first point counts a whole step.
        let first = c.tick(0.0);
        assert_eq!((first.w, first.gap, first.missed), (1.0, 1.0, 0));
        for i in 1..100 {
            c.tick(300.0 * f64::from(i));
        }
        // An hour's pause in five-minute data: twelve steps, eleven points missed.
        let t = 300.0 * 99.0 + 3600.0;
        let after_gap = c.tick(t);
        assert_eq!(
            (after_gap.w, after_gap.gap, after_gap.missed),
            (1.0, 12.0, 11)
        );
        // A point 15 s later is a twentieth of a step, and no gap.
        let fine = c.tick(t + 15.0);
        assert_eq!((fine.w, fine.gap, fine.missed), (0.05, 1.0, 0));
        // An out-of-order point counts as much as the one before, and does not turn
        // the clock back.
        let late = c.tick(t);
        assert_eq!((late.w, late.gap, late.missed), (0.05, 1.0, 0));
        assert_eq!(c.tick(t + 30.0).w, 0.05);
    }

    #[test]
    fn a_tail_probability_is_counted_over_the_points_of_threshold_per() {
        let mut per_5m = Clock::new(300.0);
        assert_eq!(per_5m.points_per_statement(), 1.0, "no interval yet");
        for i in 0..100 {
            per_5m.tick(15.0 * f64::from(i));
        }
        assert_eq!(per_5m.points_per_statement(), 20.0);
        let mut per_point = Clock::new(0.0);
        for i in 0..100 {
            per_point.tick(15.0 * f64::from(i));
        }
        assert_eq!(per_point.points_per_statement(), 1.0);
    }
}
