//! The ensemble baseline (experimental): a few O(1) streaming statistics per series,
//! each turned into an anomaly *likelihood* by comparing its recent level with its own
//! long-run distribution (the idea behind Numenta's anomaly likelihood), combined by
//! taking the most surprised one. Constant memory, no sorting, no look-ahead.

use serde::{Deserialize, Serialize};

use super::{directional, Assessment, Baseline};
use crate::config::{DetectionConfig, Direction};

/// `sqrt(pi / 2)`: turns a mean absolute deviation into a normal standard deviation.
const MAD_TO_SIGMA: f64 = 1.253_314_137;

/// Smoothing of the slow level and spread (memory of roughly 1/alpha points).
const ALPHA_SLOW: f64 = 0.01;
/// Smoothing of the fast level, used to see level shifts.
const ALPHA_FAST: f64 = 0.2;
/// Smoothing of each component's long-run score distribution.
const ALPHA_CAL: f64 = 0.002;
/// Smoothing of each component's recent score.
const ALPHA_SHORT: f64 = 0.3;
/// Outliers move the statistics at most this many spreads, so one spike does not
/// teach the baseline that spikes are normal.
const CLIP: f64 = 5.0;
/// Points before any likelihood is reported.
const WARMUP: u64 = 64;

/// The components: level, first difference, level shift, activity change.
const K: usize = 4;

/// Buckets of the daily profile (30 minutes each).
const BUCKETS: usize = 48;
/// Smoothing of each bucket of the daily profile.
const ALPHA_PROFILE: f64 = 0.1;
/// Points a bucket must have seen before it predicts.
const PROFILE_MIN: u16 = 12;
/// The daily profile replaces the plain level when its residuals are this much smaller.
const SEASONAL_GAIN: f64 = 0.6;

/// Raw scores are capped here so that one absurd point cannot wreck a calibration.
const RAW_CAP: f64 = 1e3;

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct Calibration {
    seen: u64,
    mean: f64,
    var: f64,
    short: f64,
}

impl Calibration {
    /// Likelihood that the recent score is unusual for this component, then learn.
    fn likelihood(&mut self, r: f64) -> f64 {
        let r = r.min(RAW_CAP);
        self.short += ALPHA_SHORT * (r - self.short);
        let sd = self.var.sqrt().max(1e-6);
        let l = if self.seen > WARMUP {
            normal_cdf((self.short - self.mean) / sd)
        } else {
            0.5
        };
        // Long-run mean and variance of the raw score: a running average at first, then
        // exponential forgetting (West's weighted update).
        let a = (1.0 / (self.seen as f64 + 1.0)).max(ALPHA_CAL);
        let d = r - self.mean;
        self.mean += a * d;
        self.var = (1.0 - a) * (self.var + a * d * d);
        self.seen += 1;
        l
    }
}

/// O(1) statistics of one representation of a series (the values themselves, or their
/// residuals against the daily profile).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct Stats {
    n: u64,
    mean: f64,
    dev: f64,
    fast: f64,
    prev: f64,
    dmean: f64,
    ddev: f64,
    act_fast: f64,
    act_slow: f64,
}

impl Stats {
    /// The raw component scores of `x`, signed where a direction applies:
    /// level, first difference, level shift, and (unsigned) activity change.
    fn raw(&self, x: f64, floor: f64) -> [f64; K] {
        let scale = (MAD_TO_SIGMA * self.dev).max(floor);
        let dscale = (MAD_TO_SIGMA * self.ddev).max(floor);
        let fast = self.fast + ALPHA_FAST * (x - self.fast);
        let act = self.act_fast + ALPHA_FAST * ((x - self.prev).abs() - self.act_fast);
        [
            (x - self.mean) / scale,
            (x - self.prev - self.dmean) / dscale,
            // An EWMA's standard deviation is sigma * sqrt(alpha / (2 - alpha)).
            (fast - self.mean) / (scale * (ALPHA_FAST / (2.0 - ALPHA_FAST)).sqrt()),
            ((act + floor) / (self.act_slow + floor)).ln().abs(),
        ]
    }

    fn learn(&mut self, x: f64, floor: f64) {
        if self.n == 0 {
            *self = Stats {
                n: 1,
                mean: x,
                fast: x,
                prev: x,
                ..Stats::default()
            };
            return;
        }
        // Early on, plain running averages; later, exponential forgetting.
        let a = (1.0 / (self.n as f64 + 1.0)).max(ALPHA_SLOW);
        let scale = (MAD_TO_SIGMA * self.dev).max(floor);
        let dscale = (MAD_TO_SIGMA * self.ddev).max(floor);
        let dx = x - self.prev;
        let (xc, dxc) = if self.n > 8 {
            (
                x.clamp(self.mean - CLIP * scale, self.mean + CLIP * scale),
                dx.clamp(self.dmean - CLIP * dscale, self.dmean + CLIP * dscale),
            )
        } else {
            (x, dx)
        };
        self.dev += a * ((xc - self.mean).abs() - self.dev);
        self.mean += a * (xc - self.mean);
        self.fast += ALPHA_FAST.max(a) * (x - self.fast);
        self.ddev += a * ((dxc - self.dmean).abs() - self.ddev);
        self.dmean += a * (dxc - self.dmean);
        self.act_fast += ALPHA_FAST.max(a) * (dx.abs() - self.act_fast);
        self.act_slow += a * (dx.abs() - self.act_slow);
        self.prev = x;
        self.n += 1;
    }
}

/// Streaming statistics of the values and of their residuals against a time-of-day
/// profile, each component calibrated to a likelihood; the profile's view is used
/// when it explains the series clearly better.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ensemble {
    plain: Stats,
    resid: Stats,
    cal_plain: [Calibration; K],
    cal_resid: [Calibration; K],
    /// Time-of-day profile: mean per bucket, and points seen per bucket.
    #[serde(with = "buckets")]
    profile: [f32; BUCKETS],
    #[serde(with = "buckets")]
    seen: [u16; BUCKETS],
    min_spread: f64,
    min_relative_spread: f64,
    direction: Direction,
    band: f64,
}

impl Ensemble {
    /// An empty ensemble with the spread floors and direction of `cfg`.
    pub fn new(cfg: &DetectionConfig) -> Self {
        Ensemble {
            plain: Stats::default(),
            resid: Stats::default(),
            cal_plain: [Calibration::default(); K],
            cal_resid: [Calibration::default(); K],
            profile: [0.0; BUCKETS],
            seen: [0; BUCKETS],
            min_spread: cfg.min_spread,
            min_relative_spread: cfg.min_relative_spread,
            direction: cfg.direction,
            band: 4.0,
        }
    }

    fn floor(&self) -> f64 {
        self.min_spread
            .max(self.min_relative_spread * self.plain.mean.abs())
            .max(1e-9)
    }

    /// The daily profile's prediction for time `t`, once its bucket is trained.
    fn seasonal(&self, t: f64) -> Option<f64> {
        let b = bucket(t);
        (self.seen[b] >= PROFILE_MIN).then_some(self.profile[b] as f64)
    }

    /// Whether the residuals against the profile are clearly tighter than the values.
    fn use_seasonal(&self) -> bool {
        self.resid.n > WARMUP && self.resid.dev < SEASONAL_GAIN * self.plain.dev
    }

    fn learn_profile(&mut self, t: f64, x: f64) {
        let b = bucket(t);
        let p = &mut self.profile[b];
        *p = if self.seen[b] == 0 {
            x as f32
        } else {
            *p + (ALPHA_PROFILE as f32) * (x as f32 - *p)
        };
        self.seen[b] = self.seen[b].saturating_add(1);
    }
}

impl Baseline for Ensemble {
    fn fit(&mut self, history: &[(f64, f64)]) {
        for &(t, v) in history {
            if v.is_finite() {
                self.update(t, v);
            }
        }
    }

    fn update(&mut self, t: f64, x: f64) -> Assessment {
        if !x.is_finite() {
            return Assessment {
                score: 0.0,
                deviation: 0.0,
                expected: self.plain.mean,
                lower: f64::NAN,
                upper: f64::NAN,
                warming_up: true,
            };
        }
        let floor = self.floor();
        let seasonal = self.seasonal(t);
        let dir = self.direction;
        let calibrate = |cal: &mut [Calibration; K], raw: [f64; K]| {
            let mut best = 0.0f64;
            for (k, (c, r)) in cal.iter_mut().zip(raw).enumerate() {
                let r = if k < 3 { directional(r, dir) } else { r };
                best = best.max(c.likelihood(r));
            }
            best
        };
        let warm = self.plain.n > WARMUP;
        let raw_plain = self.plain.raw(x, floor);
        let l_plain = if warm {
            calibrate(&mut self.cal_plain, raw_plain)
        } else {
            0.0
        };
        let mut l_resid = None;
        if let Some(p) = seasonal {
            if self.resid.n > WARMUP {
                l_resid = Some(calibrate(&mut self.cal_resid, self.resid.raw(x - p, floor)));
            }
        }
        let use_resid = self.use_seasonal() && l_resid.is_some();
        let (score, expected, scale, deviation) = match (use_resid, seasonal) {
            (true, Some(p)) => {
                let sc = (MAD_TO_SIGMA * self.resid.dev).max(floor);
                (
                    l_resid.unwrap_or(0.0),
                    p + self.resid.mean,
                    sc,
                    (x - p - self.resid.mean) / sc,
                )
            }
            _ => {
                let sc = (MAD_TO_SIGMA * self.plain.dev).max(floor);
                (l_plain, self.plain.mean, sc, raw_plain[0])
            }
        };
        let warming_up = !warm || self.cal_plain[0].seen <= WARMUP;
        let a = Assessment {
            score: if warming_up { 0.0 } else { score },
            deviation,
            expected,
            lower: if warming_up {
                f64::NAN
            } else {
                expected - self.band * scale
            },
            upper: if warming_up {
                f64::NAN
            } else {
                expected + self.band * scale
            },
            warming_up,
        };
        if let Some(p) = seasonal {
            self.resid.learn(x - p, floor);
        }
        self.plain.learn(x, floor);
        self.learn_profile(t, x);
        a
    }
}

/// serde derives arrays up to 32 elements only: the profile goes as a sequence.
mod buckets {
    use super::BUCKETS;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer, T: Serialize>(
        v: &[T; BUCKETS],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        v.as_slice().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<[T; BUCKETS], D::Error> {
        let v: Vec<T> = Vec::deserialize(d)?;
        let n = v.len();
        v.try_into()
            .map_err(|_| serde::de::Error::invalid_length(n, &"one value per profile bucket"))
    }
}

/// The time-of-day bucket of unix time `t`.
fn bucket(t: f64) -> usize {
    ((t.rem_euclid(86_400.0) / 86_400.0 * BUCKETS as f64) as usize).min(BUCKETS - 1)
}

/// The standard normal CDF, via a rational approximation of erfc (|error| < 1.2e-7).
pub fn normal_cdf(z: f64) -> f64 {
    0.5 * erfc(-z / std::f64::consts::SQRT_2)
}

fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noisy(i: usize) -> f64 {
        ((i as f64 * 12.9898).sin() * 43758.5453).fract() * 2.0 - 1.0
    }

    #[test]
    fn normal_cdf_matches_known_values() {
        assert!((normal_cdf(0.0) - 0.5).abs() < 1e-7);
        assert!((normal_cdf(1.96) - 0.975).abs() < 1e-4);
        assert!((normal_cdf(-3.0) - 0.00135).abs() < 1e-5);
    }

    #[test]
    fn a_spike_in_noise_is_likely_anomalous_and_noise_is_not() {
        let mut e = Ensemble::new(&DetectionConfig {
            min_relative_spread: 0.0,
            ..DetectionConfig::default()
        });
        let mut worst = 0.0f64;
        for i in 0..2000 {
            let a = e.update(i as f64, 10.0 + noisy(i));
            if i > 500 {
                worst = worst.max(a.score);
            }
        }
        let spike = e.update(2000.0, 30.0);
        assert!(spike.score > 0.9999, "{spike:?}");
        assert!(spike.score > worst, "noise peaked at {worst}");
    }

    #[test]
    fn score_at_t_ignores_later_data() {
        let cfg = DetectionConfig::default();
        let (mut a, mut b) = (Ensemble::new(&cfg), Ensemble::new(&cfg));
        let xs: Vec<f64> = (0..600).map(|i| 5.0 + noisy(i)).collect();
        let sa: Vec<f64> = xs
            .iter()
            .enumerate()
            .map(|(i, v)| a.update(i as f64, *v).score)
            .collect();
        let mut ys = xs.clone();
        ys[400..].iter_mut().for_each(|v| *v *= 3.0);
        let sb: Vec<f64> = ys
            .iter()
            .enumerate()
            .map(|(i, v)| b.update(i as f64, *v).score)
            .collect();
        assert_eq!(sa[..400], sb[..400]);
        assert_ne!(sa[400..], sb[400..]);
    }

    #[test]
    fn small_and_constant_size() {
        assert!(
            std::mem::size_of::<Ensemble>() <= 1024,
            "{}",
            std::mem::size_of::<Ensemble>()
        );
    }
}
