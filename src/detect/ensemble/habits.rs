//! Habits: surprises that recur at the same time of day (a nightly job, a daily
//! report). Each alarm is remembered in its half-hour bucket; one that came near this
//! time on each of the previous days, as large, is a habit, and alarms no more.

use serde::{Deserialize, Serialize};

use super::profile::{bucket, buckets, BUCKETS};
use super::spot::{likelier, BIGGER_BY};

/// A surprise is a habit when, on each of the previous [`HABIT_DAYS`] days, one as large
/// came within this many buckets of the same time of day (an hour: cron jobs drift) ...
const HABIT_REACH: usize = 2;
/// ... between this many days ago (not the same episode) ...
const HABIT_MIN_DAYS: f64 = 0.5;
/// ... and this many (a day may be skipped).
const HABIT_MAX_DAYS: f64 = 2.5;
/// Days in a row a surprise must have recurred before it is a habit: one earlier
/// coincidence is likely on a bursty series, two in a row are not.
const HABIT_DAYS: u8 = 2;
/// A habitual anomaly is this many times likelier than the threshold allows: seen on the
/// previous days at this hour, it is no 1-in-1,000 event (at 0.999, it scores 0.99).
const HABIT_FACTOR: f64 = 10.0;

/// Per time-of-day bucket, the last surprise and how many days in a row it recurred.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Habits {
    /// Per bucket, when the last surprise came (unix days).
    #[serde(rename = "habit_day", with = "buckets")]
    day: [f32; BUCKETS],
    /// Per bucket, how far the last surprise went (spreads).
    #[serde(rename = "habit_size", with = "buckets")]
    size: [f32; BUCKETS],
    /// Per bucket, on how many days in a row its last surprise recurred.
    #[serde(rename = "habit_streak", with = "buckets")]
    streak: [u8; BUCKETS],
}

/// How a surprise stands against the ones remembered near its time of day.
#[derive(Debug, Clone, Copy)]
pub(super) struct Recurrence {
    /// Whether it is a habit.
    pub(super) habit: bool,
    /// The longest streak of days it continues.
    streak: u8,
    /// The size of the surprise that streak is measured against.
    reference: f64,
}

impl Habits {
    /// No surprises remembered.
    pub(super) fn new() -> Self {
        Habits {
            // Finite, for JSON: "long before any data".
            day: [f32::MIN; BUCKETS],
            size: [0.0; BUCKETS],
            streak: [0; BUCKETS],
        }
    }

    /// Whether a surprise at time `t` of `size` spreads is a habit: as large a one
    /// (within [`BIGGER_BY`]) came near this time of day on each of the previous
    /// [`HABIT_DAYS`] days. A record still alarms, and so does a new habit until it has
    /// recurred.
    pub(super) fn recall(&self, t: f64, size: f64) -> Recurrence {
        let day = t / 86_400.0;
        let b = bucket(t);
        // The longest streak this point continues: a neighbour's entry from today is this
        // episode (its streak carries over); one from a day or two ago, if as large,
        // extends its streak by a day.
        let (mut streak, mut reference) = (0u8, 0.0f64);
        for n in (b + BUCKETS - HABIT_REACH..=b + BUCKETS + HABIT_REACH).map(|n| n % BUCKETS) {
            let ago = day - f64::from(self.day[n]);
            let size_n = f64::from(self.size[n]);
            let continued = if ago < HABIT_MIN_DAYS {
                Some(self.streak[n])
            } else if ago <= HABIT_MAX_DAYS && size <= BIGGER_BY * size_n {
                Some(self.streak[n].saturating_add(1))
            } else {
                None
            };
            if let Some(s) = continued {
                if (s, size_n) > (streak, reference) {
                    (streak, reference) = (s, size_n);
                }
            }
        }
        Recurrence {
            habit: streak >= HABIT_DAYS && size <= BIGGER_BY * reference,
            streak,
            reference,
        }
    }

    /// Remembers a surprise at time `t` of `size` spreads, as [`Habits::recall`] found it.
    pub(super) fn remember(&mut self, t: f64, size: f64, r: &Recurrence) {
        let day = t / 86_400.0;
        let b = bucket(t);
        // The bucket keeps its episode's largest point and longest streak; an entry from
        // an earlier day is replaced.
        let same_episode = day - f64::from(self.day[b]) < HABIT_MIN_DAYS;
        let (kept_size, kept_streak) = if same_episode {
            (self.size[b], self.streak[b])
        } else {
            (0.0, 0)
        };
        self.size[b] = kept_size.max(size.max(r.reference) as f32);
        self.streak[b] = kept_streak.max(r.streak);
        self.day[b] = day as f32;
    }
}

/// The score of a habitual anomaly, at `threshold`: [`HABIT_FACTOR`] times likelier
/// than the threshold allows.
pub(super) fn habitual(threshold: f64) -> f64 {
    likelier(threshold, HABIT_FACTOR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::ensemble::testing::*;

    #[test]
    fn a_nightly_job_becomes_a_habit_but_a_bigger_or_other_hour_spike_alarms() {
        // Five minutes of load every night near 03:00 (drifting by up to 35 minutes): the
        // first nights alarm, from the third on it is a habit. A spike three times as large
        // at that hour still alarms (beyond [`BIGGER_BY`]), and so does the usual size at
        // 15:00 on the fourth day (later, ten such spikes in the tail's memory are the
        // series' pattern at any hour: see `repeated_surprises_become_a_pattern`).
        let day = DAY;
        let job = |d: usize| d * day + 36 + (d * 17) % 8;
        let mut xs: Vec<f64> = (0..12 * day).map(|i| 10.0 + noisy(i)).collect();
        for d in 0..10 {
            xs[job(d)] += 30.0;
        }
        xs[job(10)] += 90.0;
        xs[3 * day + 180] += 30.0;
        let hits = alarms(&mut ensemble(), &xs, day, threshold());
        let night = |d: usize| hits.iter().any(|h| (job(d)..job(d) + 3).contains(h));
        assert!(night(1), "the second night alarms: {hits:?}");
        for d in 3..10 {
            assert!(!night(d), "night {d} is a habit: {hits:?}");
        }
        assert!(night(10), "a three times larger job alarms: {hits:?}");
        assert!(
            hits.iter()
                .any(|h| (3 * day + 180..3 * day + 183).contains(h)),
            "15:00 is not the job's hour: {hits:?}"
        );
    }

    #[test]
    fn a_surprise_at_the_same_hour_two_days_running_is_a_habit() {
        let at = |day: f64, hour: f64| (day + hour / 24.0) * 86_400.0;
        let mut h = Habits::new();
        for day in [0.0, 1.0] {
            let t = at(day, 3.0);
            let r = h.recall(t, 10.0);
            assert!(!r.habit, "day {day}");
            h.remember(t, 10.0, &r);
        }
        // The third day, a few minutes later: a habit, if no more than twice as large.
        assert!(h.recall(at(2.0, 3.1), 10.0).habit);
        assert!(h.recall(at(2.0, 3.1), 20.0).habit);
        assert!(!h.recall(at(2.0, 3.1), 30.0).habit);
        // At another hour it is news.
        assert!(!h.recall(at(2.0, 15.0), 10.0).habit);
    }
}
