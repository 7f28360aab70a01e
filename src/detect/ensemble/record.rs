//! Records: the range the series has kept. A point beyond it by a clear margin is a
//! record. For exchangeable data, a point beats the n before it with probability
//! 1/(n + 1); that is its tail probability, whatever the distribution (the question an
//! SRE asks first: has it ever been this high?). The other components may have learnt
//! that surprises are routine for this series; a record is news all the same.

use serde::{Deserialize, Serialize};

use super::spot::TAIL_MEMORY;
use crate::config::Direction;

/// A record must beat the range the series has kept by this fraction of that range: a
/// new high by a hair is the ordinary drift of a counter, not news.
const RECORD_SPAN: f64 = 0.2;
/// Memory of the kept range, in steps: older extremes fade towards the level at this
/// pace (about half a year), and the record's rarity is counted over at most this many
/// steps.
const RECORD_MEMORY: f64 = 10.0 * TAIL_MEMORY;

/// The range a series has kept, its extremes fading towards the level.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(super) struct Record {
    /// The highest value kept.
    hi: f64,
    /// The lowest value kept.
    lo: f64,
    /// Steps the range was kept over (at most [`RECORD_MEMORY`]; 0: empty).
    #[serde(rename = "n")]
    steps: f64,
}

impl Record {
    /// Likelihood that `x` is anomalous because it breaks the range on a side `direction`
    /// cares about.
    pub(super) fn likelihood(&self, x: f64, floor: f64, direction: Direction) -> f64 {
        if self.steps < 1.0 {
            return 0.0;
        }
        let margin = RECORD_SPAN * (self.hi - self.lo).max(floor);
        let broke = match direction {
            Direction::Up => x > self.hi + margin,
            Direction::Down => x < self.lo - margin,
            Direction::Both => x > self.hi + margin || x < self.lo - margin,
        };
        if broke {
            1.0 - 1.0 / (self.steps + 1.0)
        } else {
            0.0
        }
    }

    /// Widens the range to `x`; the extremes fade towards `level`.
    pub(super) fn learn(&mut self, x: f64, level: f64, w: f64) {
        if self.steps == 0.0 {
            (self.hi, self.lo) = (x, x);
        }
        let fade = w / RECORD_MEMORY;
        self.hi = x.max(self.hi - fade * (self.hi - level).max(0.0));
        self.lo = x.min(self.lo + fade * (level - self.lo).max(0.0));
        self.steps = (self.steps + w).min(RECORD_MEMORY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Evenly spread over [0, 1), in no particular order.
    fn uniform(i: usize) -> f64 {
        (i as f64 * 0.618_033_988_7).fract()
    }

    #[test]
    fn a_record_needs_a_clear_margin_and_is_as_rare_as_its_history() {
        // 999 points in [0, 1]: a point at 1.1 is within the margin (a fifth of the
        // range), one at 1.3 beats 999 points, which happens once in 1,000.
        let mut r = Record::default();
        for i in 0..999 {
            r.learn(uniform(i), 0.5, 1.0);
        }
        let both = Direction::Both;
        assert_eq!(r.likelihood(1.1, 1e-9, both), 0.0);
        assert!((r.likelihood(1.3, 1e-9, both) - 0.999).abs() < 1e-12);
        assert!((r.likelihood(-0.3, 1e-9, both) - 0.999).abs() < 1e-12);
        assert_eq!(r.likelihood(-0.3, 1e-9, Direction::Up), 0.0);
        assert_eq!(r.likelihood(1.3, 1e-9, Direction::Down), 0.0);
    }

    #[test]
    fn an_old_extreme_fades_so_a_record_is_against_recent_history() {
        // One spike to 10, then a long quiet [0, 1]: after a few memories the old spike no
        // longer sets the bar, and a 2 is a record again.
        let mut r = Record::default();
        r.learn(10.0, 0.5, 1.0);
        for i in 0..1000 {
            r.learn(uniform(i), 0.5, 1.0);
        }
        assert_eq!(r.likelihood(2.0, 1e-9, Direction::Up), 0.0);
        for i in 0..(4.0 * RECORD_MEMORY) as usize {
            r.learn(uniform(i), 0.5, 1.0);
        }
        assert!(r.hi < 1.2, "{r:?}");
        assert!(r.likelihood(2.0, 1e-9, Direction::Up) > 0.9999, "{r:?}");
    }
}
