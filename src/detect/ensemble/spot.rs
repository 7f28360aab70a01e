//! SPOT, streaming peaks-over-threshold (Siffer et al., KDD 2017): the tail model that
//! turns each component's raw score into a likelihood. The smoothed score's exceedances
//! over a high running quantile follow a generalised Pareto distribution, fitted by the
//! method of moments from forgetting averages. Heavy-tailed series (counts, bursts) then
//! alarm at the rate a light-tailed one does, without a Gaussian guess.

use serde::{Deserialize, Serialize};

use super::clock::per_step;

/// Smoothing of each component's recent score (about five steps): what is judged is a
/// short run of evidence, so a lone noisy point is damped and a large or lasting
/// deviation is not.
const ALPHA_SHORT: f64 = 0.2;
/// Steps of scores a component's calibration sees before it judges any.
const CALIBRATION_WARMUP: f64 = 64.0;
/// Raw scores are capped here so that one absurd point cannot wreck a calibration.
const RAW_CAP: f64 = 1e3;
/// Quantile above which a component's smoothed scores count as peaks of its tail.
const PEAK_QUANTILE: f64 = 0.97;
/// Step of the streaming quantile, relative to the scores' running mean.
const ALPHA_QUANTILE: f64 = 0.02;
/// Memory of the tail model, in steps (exceedance rate and peak moments forget at this
/// pace: 17 days).
pub(super) const TAIL_MEMORY: f64 = 5000.0;
/// Peaks needed before the tail model speaks.
const MIN_PEAKS: f64 = 16.0;
/// The peaks the tail's moments weigh at most (they forget over this many).
const PEAK_MEMORY: f64 = TAIL_MEMORY * (1.0 - PEAK_QUANTILE);
/// A point whose tail probability is below this is a surprise to the tail: it is not
/// learnt as usual (see the ensemble's rule on what a surprise teaches).
const LEARN_BELOW_RISK: f64 = 1e-3;
/// A tail probability beyond doubt: evidence past it adds nothing to the smoothed score.
const BEYOND_DOUBT: f64 = 1e-6;
/// Recent surprises after which similar ones are taken as the series' own pattern: as
/// many as a calibrated tail has by chance within its memory (one in 1,000 steps over
/// 5,000: five). Fewer say nothing about the series: the threshold predicts them.
const REPEATS_ARE_NORMAL: f64 = LEARN_BELOW_RISK * TAIL_MEMORY;
/// A repeated surprise still alarms when it beats the earlier ones by this factor.
pub(super) const BIGGER_BY: f64 = 2.0;

/// How unusual one component's recent score is, from a SPOT model of its own tail.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(super) struct Spot {
    /// Steps of scores seen.
    seen: f64,
    /// Smoothed raw score: what the tail is learnt from.
    short: f64,
    /// Smoothed raw score with each point's evidence capped beyond doubt: what is judged.
    /// A point a hundred spreads out is anomalous, but it must not keep the score so for
    /// hours after the values are back (the smoothing decays by steps); the tail, though,
    /// goes on treating that aftermath as a surprise and does not learn it as a peak.
    /// (0 in a model saved before it existed: it catches up within a few steps.)
    #[serde(default)]
    judged: f64,
    /// Running mean of the smoothed score: the quantile's step size.
    level: f64,
    /// Running [`PEAK_QUANTILE`] of the smoothed score, over ordinary points (a surprise
    /// does not move it).
    quantile: f64,
    /// Forgetting average of "the score exceeded the quantile".
    exceed: f64,
    /// Forgetting average of "the score crossed above the quantile here" (the onsets of
    /// exceedances: with `exceed`, how many points one excursion lasts).
    upcross: f64,
    /// Whether the previous score exceeded the quantile.
    above: bool,
    /// Steps of peaks seen (for warm-up).
    peaks: f64,
    /// Forgetting first moment of the excess over the quantile.
    m1: f64,
    /// Forgetting second moment of the excess over the quantile.
    m2: f64,
    /// Forgetting count of past surprises (runs below [`LEARN_BELOW_RISK`], counted
    /// when they end).
    surprises: f64,
    /// The largest excess among past surprises (forgetting, too).
    surprise_max: f64,
    /// The part of a step still to pass before the current surprise is over (a run of
    /// surprises that pauses for less than a step goes on).
    lull: f64,
    /// The largest excess of the current surprise (0: none under way). It joins the
    /// past ones only when it ends: measured against itself, every point of an incident
    /// after its first would be "no larger than the recent ones", a repeat.
    #[serde(default)]
    run_max: f64,
}

/// What a tail model made of one point: its verdict, and what it learns from.
#[derive(Debug, Clone, Copy)]
pub(super) struct Judgement {
    /// Likelihood (1 - tail probability) that the recent score is unusual; 0.5 ("don't
    /// know") until the tail has seen enough peaks.
    pub(super) likelihood: f64,
    /// Whether the point surprised the tail: its tail probability, counted per step,
    /// is below [`LEARN_BELOW_RISK`].
    pub(super) surprise: bool,
    /// The smoothed score, as the tail learns it.
    recent: f64,
    /// Its excess over the running quantile.
    excess: f64,
}

impl Spot {
    /// Judges raw score `r` of a point worth `w` of a step: smooths it into the recent
    /// score and says how unusual that is; `routine`: whether recurring surprises are as
    /// likely as their rate. (What it learns is [`Spot::learn`]'s, either way.)
    pub(super) fn judge(&mut self, r: f64, w: f64, routine: bool) -> Judgement {
        let r = r.min(RAW_CAP);
        if self.seen == 0.0 {
            (self.short, self.judged, self.quantile) = (r, r, r);
        } else {
            let a = per_step(ALPHA_SHORT, w);
            self.short += a * (r - self.short);
            // A point alone at this cap is already beyond doubt (see `judged`). The cap
            // lies above the quantile: below it, it need not be computed.
            let capped = if ALPHA_SHORT * r > self.quantile {
                self.beyond_doubt().map_or(r, |s| r.min(s / ALPHA_SHORT))
            } else {
                r
            };
            self.judged += a * (capped - self.judged);
        }
        // The evidence smoothed over about five steps, where a point counts at least as
        // much as one at a full step would (the same at five minutes, as scores are never
        // negative). Counted by its share alone, a jump of a hundred spreads queried every
        // second would take a minute to be news.
        let s = self.short.max(ALPHA_SHORT * r);
        let excess = s - self.quantile;
        let tail = self.tail(s).map(|p| self.counted_per_step(p, w));
        let surprise = tail.is_some_and(|p| p < LEARN_BELOW_RISK);
        // Surprises that keep coming, no larger than the earlier ones, are a pattern of this
        // series (a nightly job, a bursty source): they are as likely as their recent rate.
        let repeat = routine
            && surprise
            && self.surprises >= REPEATS_ARE_NORMAL
            && excess <= BIGGER_BY * self.surprise_max;
        let judged = self.judged.max(ALPHA_SHORT * r);
        // The same score has the same tail: most points need only one.
        let verdict = if judged == s {
            tail
        } else {
            self.tail(judged).map(|p| self.counted_per_step(p, w))
        }
        .map(|p| {
            if repeat {
                p.max(self.surprises / TAIL_MEMORY)
            } else {
                p
            }
        });
        Judgement {
            likelihood: match verdict {
                Some(p) => 1.0 - p,
                None => 0.5,
            },
            surprise,
            recent: s,
            excess,
        }
    }

    /// Learns from the judged point (worth `w` of a step): the running quantile
    /// (stochastic approximation), the exceedance rate, the moments of the excess, and
    /// how often surprises come. A surprise is counted, not learnt as usual (the
    /// ensemble's rule, see `Ensemble::learn`): it moves neither the quantile nor the
    /// peaks. `rescaled`: the raw scores' scale itself jumps from time to time (the
    /// k-means' distances, measured afresh at each retraining), so the quantile must
    /// follow surprises too.
    pub(super) fn learn(&mut self, j: &Judgement, w: f64, rescaled: bool) {
        let (s, excess, surprise) = (j.recent, j.excess, j.surprise);
        let forget = 1.0 - w / TAIL_MEMORY;
        self.surprises *= forget;
        self.surprise_max *= forget;
        if surprise {
            self.run_max = self.run_max.max(excess);
            self.lull = 1.0;
        } else if self.run_max > 0.0 {
            self.lull -= w;
            if self.lull <= 0.0 {
                self.surprises += 1.0;
                self.surprise_max = self.surprise_max.max(self.run_max);
                (self.run_max, self.lull) = (0.0, 0.0);
            }
        }
        let a = (w / (self.seen + w)).max(w / TAIL_MEMORY);
        self.level += a * (s - self.level);
        let above = s > self.quantile;
        // The quantile climbs 32 times faster than it falls: moved by surprises, an
        // incident's hours lifted it for days, and the next surprise was judged from a
        // threshold the peaks were never measured over. The statistics' scores are in
        // spreads that keep adapting, so their usual range does not move; a k-means
        // retrained on a quiet stretch measures the next busy one in new units, and its
        // quantile has to climb.
        if !surprise || rescaled {
            let step = w * ALPHA_QUANTILE * self.level.max(1e-9);
            self.quantile += if above {
                step * PEAK_QUANTILE
            } else {
                -step * (1.0 - PEAK_QUANTILE)
            };
        }
        self.exceed += a * (f64::from(u8::from(above)) - self.exceed);
        self.upcross += a * (f64::from(u8::from(above && !self.above)) - self.upcross);
        self.above = above;
        if above && !surprise {
            let ap = (w / (self.peaks + w)).max(w / PEAK_MEMORY);
            self.m1 += ap * (excess - self.m1);
            self.m2 += ap * (excess * excess - self.m2);
            self.peaks += w;
        }
        self.seen += w;
    }

    /// Whether, counting a point worth `w` of a step that it has judged and not yet
    /// learnt, it has seen no more than [`CALIBRATION_WARMUP`] steps of scores.
    pub(super) fn warming_up_with(&self, w: f64) -> bool {
        self.seen + w <= CALIBRATION_WARMUP
    }

    /// Tail probability `p` of a point counted per step. The tail probability is per
    /// point; what the threshold means is per step. Points finer than a step count as one
    /// when they move together (an excursion lasts as many of them: a held sample, a
    /// `rate` window); noise fresh at every point has that many more chances to cross, so
    /// its probability is multiplied by the excursions it starts per step (the extremal
    /// index over the points' share).
    fn counted_per_step(&self, p: f64, w: f64) -> f64 {
        if w >= 1.0 {
            return p;
        }
        let excursions = (self.upcross / self.exceed.max(1e-12)).min(1.0) / w;
        if excursions > 1.0 {
            (p * excursions).min(1.0)
        } else {
            p
        }
    }

    /// Whether the tail model has seen enough to judge.
    pub(super) fn ready(&self) -> bool {
        self.seen > CALIBRATION_WARMUP && self.peaks >= MIN_PEAKS
    }

    /// The score whose tail probability is [`BEYOND_DOUBT`], once enough peaks were seen.
    fn beyond_doubt(&self) -> Option<f64> {
        if !self.ready() {
            return None;
        }
        let (g, sigma) = self.shape();
        let odds = (self.rate() / BEYOND_DOUBT).max(1.0);
        Some(self.quantile + sigma / g * (odds.powf(g) - 1.0))
    }

    /// How often the smoothed score exceeds the quantile (at least once in the memory).
    fn rate(&self) -> f64 {
        self.exceed.clamp(1.0 / TAIL_MEMORY, 1.0)
    }

    /// The generalised Pareto's shape and scale for the next peak: fitted by the method
    /// of moments, the shape then raised by how few peaks the fit rests on (so it is at
    /// least 1 / [`PEAK_MEMORY`], never the exponential's 0, and `1 + g y / sigma > 1`
    /// for every excess `y`).
    fn shape(&self) -> (f64, f64) {
        let mean = self.m1.max(1e-12);
        let var = (self.m2 - self.m1 * self.m1).max(1e-24);
        let ratio = mean * mean / var;
        let g = (0.5 * (1.0 - ratio)).clamp(0.0, 0.45);
        let sigma = (0.5 * mean * (1.0 + ratio)).max(1e-12);
        // A fit from sixteen peaks knows its scale to a quarter; plugged in as if exact,
        // it makes the far tail far too thin, and a young model alarms at what a few
        // more peaks would have shown to be its series' habit. The next peak's law,
        // given n peaks of an exponential tail (scale-free prior on its scale), is the
        // Lomax law (1 + y / (n sigma))^-n: a generalised Pareto of shape 1/n. So the
        // shape gains 1/n, n being the peaks the forgetting moments weigh.
        let n = self.peaks.clamp(1.0, PEAK_MEMORY);
        (g + 1.0 / n, sigma)
    }

    /// The tail probability of smoothed score `s`, once enough peaks were seen.
    fn tail(&self, s: f64) -> Option<f64> {
        if !self.ready() {
            return None;
        }
        let y = s - self.quantile;
        if y <= 0.0 {
            return Some(1.0);
        }
        let (g, sigma) = self.shape();
        Some(self.rate() * (1.0 + g * y / sigma).powf(-1.0 / g))
    }
}

/// The likelihood `l` with its tail probability `factor` times larger (at most 1).
pub(super) fn likelier(l: f64, factor: f64) -> f64 {
    1.0 - ((1.0 - l) * factor).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::ensemble::testing::*;

    #[test]
    fn a_tail_fitted_from_few_peaks_is_judged_with_their_uncertainty() {
        // Exponential excesses of mean 1 over the quantile (second moment 2). Given 16
        // peaks, the next one's law is the Lomax (1 + y / 16)^-16; given the memory's
        // 150, nearly e^-y. Ten means out: 4.2e-4 against 6.2e-5 (e^-10 = 4.5e-5).
        let few = Spot {
            seen: 1000.0,
            quantile: 1.0,
            exceed: 0.03,
            peaks: 16.0,
            m1: 1.0,
            m2: 2.0,
            ..Spot::default()
        };
        let many = Spot { peaks: 1e4, ..few };
        let y = 10.0;
        let lomax = |n: f64| 0.03 * (1.0 + y / n).powf(-n);
        let (p_few, p_many) = (few.tail(1.0 + y).unwrap(), many.tail(1.0 + y).unwrap());
        assert!((p_few / lomax(16.0) - 1.0).abs() < 1e-9, "{p_few}");
        assert!((p_many / lomax(PEAK_MEMORY) - 1.0).abs() < 1e-9, "{p_many}");
        assert!(p_few > 5.0 * p_many, "{p_few} vs {p_many}");
    }

    #[test]
    fn fresh_noise_at_every_fine_point_alarms_per_step_not_per_point() {
        // Twenty days of noise drawn anew every 15 s: twenty times the points of a
        // five-minute series, and each can cross. The threshold counts per step (the tail
        // probability times the excursions started per step), so the false alarms stay
        // near the 1 in 1,000 steps the threshold states, not twenty times that.
        let steps = 20 * DAY;
        let mut e = ensemble();
        let (mut episodes, mut was) = (0, false);
        for i in 0..steps * 20 {
            let alarm = e.update(i as f64 * 15.0, 10.0 + noisy(i)).score >= threshold();
            if alarm && !was && i >= 2 * DAY * 20 {
                episodes += 1;
            }
            was = alarm;
        }
        let nominal = (steps - 2 * DAY) as f64 * (1.0 - threshold());
        assert!(
            episodes as f64 <= 1.5 * nominal,
            "{episodes} false alarms in 18 days, nominal {nominal:.1}"
        );
    }

    #[test]
    fn heavy_tailed_noise_alarms_rarely_and_a_record_still_alarms() {
        // Pareto-like bursts (a tweet-count series): the tail model learns how heavy the
        // tail is, so ordinary bursts stay quiet; one far beyond them still alarms.
        let xs: Vec<f64> = (0..20_000)
            .map(|i| {
                let u = (noisy(i) + 1.0) / 2.0;
                5.0 / (1.0 - 0.999 * u).powf(0.5)
            })
            .collect();
        let mut e = ensemble();
        let hits = alarms(&mut e, &xs, 2000, threshold());
        // Alarm episodes (a run of alarming points is one anomaly once hysteresis is on).
        let episodes = hits
            .iter()
            .enumerate()
            .filter(|(k, &i)| *k == 0 || hits[k - 1] + 1 != i)
            .count();
        // No more than the nominal rate (1 in 1,000 points by default), with some slack.
        let nominal = 18_000.0 * (1.0 - threshold());
        assert!(
            episodes as f64 <= 1.5 * nominal,
            "{episodes} episodes in 18,000 points: {hits:?}"
        );
        let biggest = xs.iter().cloned().fold(0.0, f64::max);
        let a = e.update(20_000.0 * STEP, 20.0 * biggest);
        assert!(a.score >= threshold(), "{a:?}");
    }

    #[test]
    fn an_incident_does_not_blunt_the_next_one() {
        // Noise within ±1, then an incident: 8 up for two hours. A day later a smaller
        // one, 4 up for half an hour, must still alarm. The tails' quantiles learn from
        // ordinary scores only; lifted by the first incident (they climb 32 times faster
        // than they fall), they had the second judged as ordinary: it alarmed only on its
        // way back down. It comes at the first one's hours: had the profile learnt them,
        // the spread the incident left in the values' view would let it veto the second.
        let mut e = ensemble();
        let mut hits = Vec::new();
        for i in 0..4000 {
            let x = 10.0
                + noisy(i)
                + match i {
                    3000..3024 => 8.0,
                    3300..3306 => 4.0,
                    _ => 0.0,
                };
            if e.update(i as f64 * STEP, x).score >= threshold() {
                hits.push(i);
            }
        }
        assert!(hits.iter().any(|i| (3000..3024).contains(i)), "{hits:?}");
        assert!(hits.iter().any(|i| (3300..3306).contains(i)), "{hits:?}");
    }

    #[test]
    fn an_incident_is_not_a_repeat_of_itself() {
        // Spikes every 500 steps have made surprises routine. Then an incident, queried
        // every 15 s: a jump ten times their size, for five minutes. Every point of it
        // alarms: it is no larger than its own first point, but it is no repeat of
        // the earlier, smaller surprises either.
        let mut e = routine_spikes();
        let start = 5000.0 * STEP;
        let scores: Vec<f64> = (0..20)
            .map(|k| e.update(start + 15.0 * k as f64, 310.0 + noisy(k)).score)
            .collect();
        assert!(scores.iter().all(|&s| s >= threshold()), "{scores:?}");
    }

    #[test]
    fn the_score_falls_back_soon_after_a_huge_spike() {
        // One point a thousand spreads up alarms; once the values are back, within ten
        // steps, so is the score. The smoothing used to remember the spike's size and
        // keep the anomaly open for 24 steps (two hours), or for more than 20 after a
        // half-minute spike queried every 2 s; what lingers now is the recent level's
        // (the shift component's) own memory of that half minute. (Both ways, the drop
        // back is news of its own.)
        let up = DetectionConfig {
            direction: Direction::Up,
            ..DetectionConfig::default()
        };
        for (step, spike_points) in [(STEP, 1), (2.0, 15)] {
            let mut e = Ensemble::new(&up);
            for i in 0..3000 {
                e.update(i as f64 * STEP, 10.0 + noisy(i));
            }
            let start = 3000.0 * STEP;
            let at = |k: usize| start + step * k as f64;
            let spike: Vec<f64> = (0..spike_points)
                .map(|k| e.update(at(k), 1000.0).score)
                .collect();
            assert!(spike.iter().all(|&s| s >= threshold()), "{spike:?}");
            let after: Vec<f64> = (spike_points..spike_points + 3000)
                .map(|k| e.update(at(k), 10.0 + noisy(k)).score)
                .collect();
            let back = after
                .iter()
                .position(|&s| s < threshold())
                .unwrap_or(after.len());
            let steps = back as f64 * step / STEP;
            assert!(
                steps <= 10.0,
                "step {step}: still anomalous {steps} steps later"
            );
        }
    }

    #[test]
    fn repeated_surprises_become_a_pattern() {
        // A spike of the same size every 500 steps: the first ones alarm, until their
        // rate is learnt (at 1 in 1,000, about five in the tail's memory, counted as they
        // fade; the warm-up's spikes meet tails fitted from few peaks, too unsure to call
        // each one a surprise, so up to the seventh may alarm; 500 steps are no daily
        // habit), later ones do not.
        let xs: Vec<f64> = (0..10_000)
            .map(|i| 10.0 + noisy(i) + if i % 500 == 250 { 30.0 } else { 0.0 })
            .collect();
        let mut e = ensemble();
        let hits = alarms(&mut e, &xs, 1000, threshold());
        let spikes_alarmed = (1000..10_000)
            .filter(|i| i % 500 == 250 && hits.iter().any(|h| (*i..i + 3).contains(h)))
            .count();
        assert!(hits.contains(&1250), "the first one alarms: {hits:?}");
        assert!(
            spikes_alarmed <= 7,
            "{spikes_alarmed} of 18 spikes alarmed: {hits:?}"
        );
    }
}
