//! Turns per-point verdicts into anomaly open/close events, so one noisy point
//! neither opens nor closes an incident.

/// What a point did to the anomaly state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Nothing changed.
    None,
    /// `open_after` anomalous points in a row: an anomaly opens.
    Opened,
    /// `close_after` normal points in a row while open: it closes.
    Closed,
}

/// Open after N consecutive anomalous points, close after M consecutive normal ones.
#[derive(Debug, Clone)]
pub struct Hysteresis {
    open_after: u32,
    close_after: u32,
    run: u32,
    open: bool,
}

impl Hysteresis {
    /// A closed state machine with the given run lengths (each at least 1).
    pub fn new(open_after: u32, close_after: u32) -> Self {
        Hysteresis {
            open_after: open_after.max(1),
            close_after: close_after.max(1),
            run: 0,
            open: false,
        }
    }

    /// Whether an anomaly is open.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Feeds one point's verdict.
    pub fn observe(&mut self, anomalous: bool) -> Transition {
        // `run` counts points that argue for a change of state.
        if anomalous != self.open {
            self.run += 1;
        } else {
            self.run = 0;
        }
        let needed = if self.open {
            self.close_after
        } else {
            self.open_after
        };
        if self.run >= needed {
            self.open = !self.open;
            self.run = 0;
            if self.open {
                Transition::Opened
            } else {
                Transition::Closed
            }
        } else {
            Transition::None
        }
    }

    /// Opens without evidence: an anomaly that was open when the agent last stopped goes
    /// on, and closes only after `close_after` normal points.
    pub fn resume_open(&mut self) {
        self.open = true;
        self.run = 0;
    }

    /// Forgets a partial run, e.g. when data went missing: a gap is no evidence either way.
    pub fn interrupt(&mut self) {
        self.run = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_n_and_closes_after_m() {
        let mut h = Hysteresis::new(3, 2);
        let seq = [
            true, true, false, true, true, true, false, true, false, false,
        ];
        let got: Vec<_> = seq.iter().map(|&a| h.observe(a)).collect();
        use Transition::*;
        assert_eq!(
            got,
            [None, None, None, None, None, Opened, None, None, None, Closed]
        );
    }

    #[test]
    fn a_resumed_anomaly_closes_after_m_normal_points_and_never_reopens_meanwhile() {
        let mut h = Hysteresis::new(1, 2);
        h.resume_open();
        assert!(h.is_open());
        assert_eq!(h.observe(true), Transition::None);
        assert_eq!(h.observe(false), Transition::None);
        assert_eq!(h.observe(false), Transition::Closed);
    }

    #[test]
    fn interrupt_resets_a_partial_run() {
        let mut h = Hysteresis::new(2, 1);
        h.observe(true);
        h.interrupt();
        assert_eq!(h.observe(true), Transition::None);
        assert_eq!(h.observe(true), Transition::Opened);
    }
}
