//! The daily profile: what each half hour of the day usually brings, and how noisy it
//! is. The residuals against it are the ensemble's second view of a series. That view
//! judges when it explains the series clearly better than the values do ([`explains`]);
//! a little short of that, it may still veto the values' alarms ([`may_veto`]).

use serde::{Deserialize, Serialize};

use super::clock::per_step;
use super::stats::{Stats, ALPHA_SLOW, CLIP, MEAN_ABS_DEV_TO_SIGMA};

/// Buckets of the daily profile (30 minutes each).
pub(super) const BUCKETS: usize = 48;
/// Smoothing of each bucket of the daily profile, per reference step of data.
const ALPHA_PROFILE: f64 = 0.1;
/// Steps a bucket must have seen before it predicts: two days of five-minute data.
const PROFILE_MIN: f32 = 12.0;
/// The daily profile replaces the plain level when its residuals are this much smaller.
const SEASONAL_GAIN: f64 = 0.6;
/// ... and keeps judging while they stay this much smaller. An anomaly widens the
/// residuals (the profile expects the old normal): with one bar, a shift in a daily
/// series handed the judging to the values' view, whose spread is the whole day's
/// swing, and went unseen.
const SEASONAL_KEEP: f64 = 0.8;
/// Below the bar to take over, the daily profile still vetoes the values' alarms while
/// its residuals are this much tighter than the values: both views are then plausible
/// models of the series, and a point must be unusual against both. (The spreads are
/// averages over about a hundred steps, each known to some 5 %: a ratio near 1 says
/// nothing, and a profile no better than the level must not veto.)
const SEASONAL_VETO: f64 = 0.9;
/// Bounds of the factor that evens out the residuals' spread over the day: a bucket's
/// spread is trusted to differ from the usual by at most this ratio either way.
const SPREAD_RATIO: f64 = 4.0;

/// A time-of-day profile: per half-hour bucket, the usual value and its noise.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct DailyProfile {
    /// Per bucket, the mean.
    #[serde(rename = "profile", with = "buckets")]
    mean: [f32; BUCKETS],
    /// Per bucket, the reference steps seen.
    #[serde(rename = "seen", with = "buckets")]
    steps: [f32; BUCKETS],
    /// Per bucket, the mean absolute error of its prediction: how noisy this time of day is.
    #[serde(rename = "profile_dev", with = "buckets")]
    abs_dev: [f32; BUCKETS],
    /// The buckets' spread as the series visits them (a slow average over time): the
    /// usual noise, against which a bucket's is quiet or loud.
    #[serde(rename = "usual_dev")]
    usual_abs_dev: f64,
}

impl DailyProfile {
    /// A profile that has seen nothing.
    pub(super) fn new() -> Self {
        DailyProfile {
            mean: [0.0; BUCKETS],
            steps: [0.0; BUCKETS],
            abs_dev: [0.0; BUCKETS],
            usual_abs_dev: 0.0,
        }
    }

    /// The profile's prediction for bucket `b`, once it is trained.
    pub(super) fn predict(&self, b: usize) -> Option<f64> {
        (self.steps[b] >= PROFILE_MIN).then_some(self.mean[b] as f64)
    }

    /// The factor that evens out the residuals' spread over the day in bucket `b`: the
    /// usual spread over this bucket's. Busy hours are noisier than quiet ones (traffic,
    /// requests, tweets); measured in one spread, the busy hours' noise would alarm and a
    /// night's jump would pass as noise.
    pub(super) fn evener(&self, b: usize) -> f64 {
        if self.steps[b] < PROFILE_MIN || self.usual_abs_dev <= 0.0 {
            return 1.0;
        }
        // A bucket without error at all (nothing at night) is as quiet as any may be.
        (self.usual_abs_dev / f64::from(self.abs_dev[b])).clamp(1.0 / SPREAD_RATIO, SPREAD_RATIO)
    }

    /// Learns `x` into bucket `b`, weighted by the share `w` of a step it covers, and the
    /// bucket's typical error. (The error includes the day-to-day wander of the level and
    /// a profile's lag behind a trend, which are the same at every hour: they even the
    /// buckets out, towards one spread for the day.)
    pub(super) fn learn(&mut self, b: usize, x: f64, floor: f64, w: f64) {
        let seen = f64::from(self.steps[b]);
        if seen == 0.0 {
            self.mean[b] = x as f32;
            self.steps[b] = w as f32;
            return;
        }
        let p = f64::from(self.mean[b]);
        let d = f64::from(self.abs_dev[b]);
        // A trained bucket learns a point clipped to five of its spreads (like the
        // level): one spike must not make this time of day look high and noisy for days.
        let x = if seen >= f64::from(PROFILE_MIN) {
            let reach = CLIP * (MEAN_ABS_DEV_TO_SIGMA * d).max(floor);
            x.max(p - reach).min(p + reach)
        } else {
            x
        };
        // The error of the bucket's prediction, before it learns this point: a running
        // average over the bucket's first steps, then forgetting like the profile.
        let a = (w / seen).max(per_step(ALPHA_PROFILE, w));
        let d = d + a * ((x - p).abs() - d);
        self.usual_abs_dev = if self.usual_abs_dev == 0.0 {
            d
        } else {
            self.usual_abs_dev + per_step(ALPHA_SLOW, w) * (d - self.usual_abs_dev)
        };
        let p = p + per_step(ALPHA_PROFILE, w) * (x - p);
        // In f32 to halve the profile's size; a value beyond f32 is not learnt.
        if (p as f32).is_finite() && (d as f32).is_finite() {
            self.mean[b] = p as f32;
            self.abs_dev[b] = d as f32;
        }
        self.steps[b] = (self.steps[b] + w as f32).min(f32::from(u16::MAX));
    }
}

/// Whether the residuals against the profile (`resid`, judging after `warmup` steps)
/// are clearly tighter than the values (`plain`): by [`SEASONAL_GAIN`] to take over, by
/// [`SEASONAL_KEEP`] to go on (`judging`: whether the profile's view judged the latest
/// point).
pub(super) fn explains(resid: &Stats, plain: &Stats, judging: bool, warmup: f64) -> bool {
    let gain = if judging {
        SEASONAL_KEEP
    } else {
        SEASONAL_GAIN
    };
    resid.steps > warmup && resid.abs_dev < gain * plain.abs_dev
}

/// Short of judging, whether the profile's view (`resid`) is nearly as good a model as
/// the values' (`plain`), so that it may veto their alarms.
pub(super) fn may_veto(resid: &Stats, plain: &Stats) -> bool {
    resid.abs_dev < SEASONAL_VETO * plain.abs_dev
}

/// The time-of-day bucket of unix time `t`.
pub(super) fn bucket(t: f64) -> usize {
    // The seconds into the day in integers: `f64::rem_euclid` is a software `fmod`, a
    // bit-by-bit loop that took 3 % of the engine's instructions. Exact for whole
    // seconds, as the float remainder is; a fraction of a second is added back.
    let whole = t.floor();
    let secs = (whole as i64).rem_euclid(86_400) as f64 + (t - whole);
    ((secs / 86_400.0 * BUCKETS as f64) as usize).min(BUCKETS - 1)
}

/// serde derives arrays up to 32 elements only: a per-bucket array goes as a sequence.
pub(super) mod buckets {
    use super::BUCKETS;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// Writes the buckets as a sequence.
    pub fn serialize<S: Serializer, T: Serialize>(
        v: &[T; BUCKETS],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        v.as_slice().serialize(s)
    }

    /// Reads a sequence of exactly one value per bucket.
    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<[T; BUCKETS], D::Error> {
        let v: Vec<T> = Vec::deserialize(d)?;
        let n = v.len();
        v.try_into()
            .map_err(|_| serde::de::Error::invalid_length(n, &"one value per profile bucket"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::ensemble::spot::Spot;
    use crate::detect::ensemble::stats::STAT_COMPONENTS;
    use crate::detect::ensemble::testing::*;

    #[test]
    fn buckets_are_half_hours_of_the_utc_day() {
        let half_hour = 1800.0;
        assert_eq!(bucket(0.0), 0);
        assert_eq!(bucket(half_hour - 1.0), 0);
        assert_eq!(bucket(half_hour), 1);
        assert_eq!(bucket(86_399.0), BUCKETS - 1);
        assert_eq!(bucket(86_400.0), 0);
        // Before 1970 the day still starts at midnight.
        assert_eq!(bucket(-1.0), BUCKETS - 1);
        assert_eq!(bucket(-86_400.0 + half_hour + 0.5), 1);
        // Fractions of a second count: 2015-03-02 13:59:59.75 UTC is bucket 27.
        assert_eq!(bucket(1_425_304_799.75), 27);
        assert_eq!(bucket(1_425_304_800.25), 28);
        // The same buckets as the float remainder, at every five minutes of a year
        // of today's timestamps (the models' profiles must not shift).
        for i in 0..105_120 {
            let t = 1_700_000_000.0 + 300.0 * i as f64;
            let float =
                ((t.rem_euclid(86_400.0) / 86_400.0 * BUCKETS as f64) as usize).min(BUCKETS - 1);
            assert_eq!(bucket(t), float, "t = {t}");
        }
    }

    #[test]
    fn a_daily_pattern_is_expected_and_a_break_of_it_is_not() {
        // A strong daily wave: after two days the profile explains it, so the wave alone
        // alarms no more than its noise would (none at 1 in 10,000 in three days); three
        // hours at the crest where the trough should be alarm.
        let wave = |i: usize| 50.0 + 40.0 * (std::f64::consts::TAU * i as f64 / DAY as f64).sin();
        let mut xs: Vec<f64> = (0..6 * DAY).map(|i| wave(i) + noisy(i)).collect();
        let mut e = ensemble();
        assert_eq!(
            alarms(&mut e, &xs[..5 * DAY], 2 * DAY, 0.9999),
            Vec::<usize>::new()
        );
        assert!(e.use_seasonal(), "the profile should explain the wave");
        // Day six, from noon: the trough (quarter to three quarters of the day) stays at
        // the crest.
        let flat = 5 * DAY + DAY / 2..5 * DAY + DAY / 2 + DAY / 8;
        let mut e2 = ensemble();
        for i in flat.clone() {
            xs[i] = 90.0 + noisy(i);
        }
        let hits = alarms(&mut e2, &xs, 5 * DAY, threshold());
        assert!(hits.first().is_some_and(|i| flat.contains(i)), "{hits:?}");
    }

    #[test]
    fn a_plausible_daily_profile_vetoes_what_its_time_of_day_explains() {
        // Tweet-like counts: Poisson around 20 on a weak daily cycle (±30 %), the day's
        // level wandering by up to 30 %, and rare bursts. The profile explains the series
        // somewhat better than the plain level, not enough to take over the judging.
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut e = ensemble();
        let (mut alarms, mut vetoed, mut in_zone) = (0, 0, 0);
        let mut day_level = 1.0;
        for i in 0..30 * DAY {
            if i % DAY == 0 {
                day_level = 1.0 + 0.3 * (2.0 * rng.next() - 1.0);
            }
            let cycle = 1.0 + 0.3 * (std::f64::consts::TAU * i as f64 / DAY as f64).sin();
            let burst = if rng.next() < 0.003 {
                1.0 + 2.0 * rng.next()
            } else {
                1.0
            };
            let x = rng.poisson(20.0 * day_level * cycle * burst);
            let t = i as f64 * STEP;
            // Where the values' view judges, the same ensemble without the profile's
            // tails is that view alone.
            let values_judge = !e.use_seasonal();
            let mut alone = e.clone();
            alone.resid_tails = [Spot::default(); STAT_COMPONENTS];
            let zone = values_judge
                && e.resid_tails.iter().all(Spot::ready)
                && may_veto(&e.resid, &e.plain);
            in_zone += usize::from(zone);
            let (level, profile) = (e.plain.level, e.profile.predict(bucket(t)));
            let with_veto = e.update(t, x).score >= threshold();
            if !values_judge {
                continue;
            }
            let without = alone.update(t, x).score >= threshold();
            assert!(!with_veto || without, "the veto raised point {i}");
            alarms += usize::from(without);
            if without && !with_veto {
                vetoed += 1;
                // Vetoed: the point is off the level the way its time of day is.
                let profile = profile.expect("a vetoing profile is trained");
                assert!(
                    (x - level) * (profile - level) > 0.0,
                    "point {i}: {x} vetoed, level {level}, profile {profile}"
                );
            }
        }
        assert!(
            in_zone > 10 * DAY,
            "in the veto's zone for {in_zone} points"
        );
        assert!(
            vetoed * 4 >= alarms,
            "{vetoed} of {alarms} alarmed points vetoed"
        );
        // A burst the time of day does not explain still alarms: five times the rate for
        // half an hour, at the busiest hour.
        let crest = 30 * DAY + DAY / 4;
        let hits: Vec<usize> = (crest..crest + 6)
            .filter(|&i| {
                let x = rng.poisson(5.0 * 20.0 * 1.3);
                e.update(i as f64 * STEP, x).score >= threshold()
            })
            .collect();
        assert!(!hits.is_empty(), "the burst did not alarm");
    }

    #[test]
    fn a_jump_in_a_quiet_hour_alarms_where_a_busy_hour_is_that_noisy() {
        // A daily wave whose noise is ten times larger in the busy half of the day. A
        // jump of three at night is as large as the day's noise, but twenty of the night's
        // spreads: measured in one spread for the whole day it would pass as noise.
        let busy = |i: usize| (i % DAY) < DAY / 2;
        let wave = |i: usize| 50.0 + 20.0 * (std::f64::consts::TAU * i as f64 / DAY as f64).sin();
        let noise = |i: usize| (if busy(i) { 2.0 } else { 0.2 }) * noisy(i);
        let mut xs: Vec<f64> = (0..10 * DAY).map(|i| wave(i) + noise(i)).collect();
        let night = 9 * DAY + 3 * DAY / 4;
        xs[night..night + 6].iter_mut().for_each(|x| *x += 3.0);
        let mut e = ensemble();
        let hits = alarms(&mut e, &xs, 5 * DAY, threshold());
        assert!(e.use_seasonal(), "the profile should explain the wave");
        assert!(
            hits.iter().any(|i| (night..night + 6).contains(i)),
            "{hits:?}"
        );
    }

    #[test]
    fn busy_and_quiet_hours_of_noise_alarm_no_more_than_the_threshold_states() {
        // The same wave, four times noisier by day than by night (as far as the evener
        // trusts a bucket's spread, `SPREAD_RATIO`), and nothing else: eight series of
        // ten days, judged from day five. The threshold states 0.288 false alarms per
        // series per day (counting the points of half an hour as one). One series of
        // five days is too few to tell a rate: what it allows (1.4) its noise may exceed
        // by chance. (Ten times noisier, beyond the evener's bound, these series alarm at
        // over three times the stated rate: see docs/engine.md.)
        let busy = |i: usize| (i % DAY) < DAY / 2;
        let wave = |i: usize| 50.0 + 20.0 * (std::f64::consts::TAU * i as f64 / DAY as f64).sin();
        let mut episodes = Vec::new();
        for seed in 1..=8u64 {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ seed);
            let xs: Vec<f64> = (0..10 * DAY)
                .map(|i| wave(i) + if busy(i) { 0.8 } else { 0.2 } * (2.0 * rng.next() - 1.0))
                .collect();
            let mut e = ensemble();
            let mut halves: Vec<usize> = alarms(&mut e, &xs, 5 * DAY, threshold())
                .iter()
                .map(|i| i / 6)
                .collect();
            halves.dedup();
            episodes.push(halves.len());
        }
        let stated = 8.0 * 5.0 * 288.0 * (1.0 - threshold());
        let total: usize = episodes.iter().sum();
        assert!(total as f64 <= stated, "{total} > {stated}: {episodes:?}");
    }

    #[test]
    fn an_anomaly_in_a_daily_series_does_not_hand_the_judging_to_the_plain_view() {
        // Counts (Poisson) on a daily cycle of 5 to 35, then from day ten a drift up to
        // six of their spreads over 100 points. The drift widens the residuals against the
        // profile; had the values' view taken over, whose spread is the day's swing, it
        // would pass unseen. Four series of different noise: each must alarm.
        // A generator of its own (an LCG): drawn from `noisy`'s sine hash instead, the
        // series hid the drift from both engines, old and new, and tested nothing.
        let mut state = 0x5eed_u64;
        let mut uniform = move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        for series in 0..4 {
            let mut e = ensemble();
            let xs: Vec<f64> = (0..3200usize)
                .map(|i| {
                    let mean = 20.0 + 15.0 * (std::f64::consts::TAU * i as f64 / DAY as f64).sin();
                    // Knuth's Poisson draw.
                    let (limit, mut p, mut k) = ((-mean).exp(), 1.0, 0.0);
                    loop {
                        p *= uniform();
                        if p <= limit {
                            break;
                        }
                        k += 1.0;
                    }
                    let drift = (i.saturating_sub(3000) as f64 / 100.0).min(1.0);
                    k + drift * 6.0 * mean.sqrt()
                })
                .collect();
            let mut hits = Vec::new();
            for (i, &x) in xs.iter().enumerate() {
                if i == 3000 {
                    assert!(e.use_seasonal(), "series {series}: the cycle is explained");
                }
                if e.update(i as f64 * STEP, x).score >= threshold() && i >= 3000 {
                    hits.push(i);
                }
            }
            assert!(hits.iter().any(|&i| i < 3100), "series {series}: {hits:?}");
        }
    }

    #[test]
    fn the_plain_view_judges_until_the_seasonal_one_can() {
        // A daily wave: after about two days the profile explains it, but the residuals'
        // tail models have yet to see their peaks. A jump towards the middle of the wave
        // (no record) at that moment must alarm, as the plain view's difference sees it;
        // had the seasonal view taken over at once, it would not know yet.
        let wave = |i: usize| 50.0 + 40.0 * (std::f64::consts::TAU * i as f64 / DAY as f64).sin();
        let mut e = ensemble();
        let mut i = 0;
        while !e.use_seasonal() {
            e.update(i as f64 * STEP, wave(i) + noisy(i));
            i += 1;
            assert!(i < 5 * DAY, "the profile should explain the wave");
        }
        assert!(!e.resid_tails.iter().all(Spot::ready), "{i}");
        // Towards the middle of the wave's range.
        let jump = if wave(i) < 50.0 { 30.0 } else { -30.0 };
        let a = e.update(i as f64 * STEP, wave(i) + jump);
        assert!(a.score >= threshold(), "{a:?} at {i}");
    }

    #[test]
    fn an_absurd_value_neither_panics_nor_poisons_the_profile() {
        // 1e300 is finite in f64 but not in the profile's f32: it alarms, and the next
        // days at that hour go on being judged by a sane profile.
        let wave = |i: usize| 50.0 + 40.0 * (std::f64::consts::TAU * i as f64 / DAY as f64).sin();
        let mut xs: Vec<f64> = (0..8 * DAY).map(|i| wave(i) + noisy(i)).collect();
        let absurd = 5 * DAY + 120;
        xs[absurd] = 1e300;
        let mut e = ensemble();
        let hits = alarms(&mut e, &xs, 3 * DAY, threshold());
        assert!(hits.contains(&absurd), "{hits:?}");
        assert!(e
            .profile
            .mean
            .iter()
            .chain(&e.profile.abs_dev)
            .all(|v| v.is_finite()));
        assert!(hits.iter().all(|&i| i < absurd + DAY / 2), "{hits:?}");
    }

    #[test]
    fn a_spike_does_not_haunt_its_time_of_day() {
        // A daily wave with noise, and one absurd spike at 10:00 on day six. The spike
        // alarms; the next days at 10:00 are ordinary and must stay quiet (had the profile
        // learnt the spike, 10:00 would be predicted far too high, and look noisy, for
        // days).
        let wave = |i: usize| 50.0 + 40.0 * (std::f64::consts::TAU * i as f64 / DAY as f64).sin();
        let mut xs: Vec<f64> = (0..9 * DAY).map(|i| wave(i) + noisy(i)).collect();
        let spike = 5 * DAY + 120;
        xs[spike] += 1000.0;
        let mut e = ensemble();
        let hits = alarms(&mut e, &xs, 3 * DAY, threshold());
        assert!(e.use_seasonal(), "the profile should explain the wave");
        assert!(hits.contains(&spike), "{hits:?}");
        // (The spike's own evidence fades over the next hours: the same episode.)
        assert!(hits.iter().all(|&i| i < spike + DAY / 2), "{hits:?}");
    }

    #[test]
    fn the_profile_learns_over_days_whatever_the_step() {
        // A ramp within every half-hour bucket, from 0 at its start to 10 at its end,
        // every 15 s. The profile must average days of each bucket: counted per point, it
        // was trained after three minutes and held only the bucket's last minute or so
        // (about 9.5), yesterday's end of the bucket, not the bucket.
        let ramp = |t: f64| (t % 1800.0) / 180.0;
        let mut e = ensemble();
        let mut t = 0.0;
        while t < 1.5 * 86_400.0 {
            e.update(t, ramp(t));
            t += 15.0;
        }
        assert_eq!(
            e.profile.predict(bucket(t + 60.0)),
            None,
            "trained after a day and a half"
        );
        while t < 4.0 * 86_400.0 {
            e.update(t, ramp(t));
            t += 15.0;
        }
        let p = e
            .profile
            .predict(bucket(t + 60.0))
            .expect("trained after four days");
        assert!((3.0..7.0).contains(&p), "{p}");
        // Five-minute data, as before: a point counts whole.
        let mut e = ensemble();
        for i in 0..6 * 48 * 2 {
            e.update(f64::from(i) * 300.0, 1.0);
        }
        assert_eq!(e.profile.steps[0], 12.0);
    }
}
