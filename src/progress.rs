//! Progress of the long offline commands (`backtest`, `fit`) on stderr: on a terminal
//! one bar redrawn in place, with warnings and failures on lines of their own above it;
//! in a log (stderr not a terminal) no bar, one `[done/total] line` per step instead.

use std::fmt::Display;
use std::io::IsTerminal as _;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The bar's look: `[#####-------] 5/12 what was just done`.
const TEMPLATE: &str = "[{bar:24}] {pos}/{len} {msg}";

/// Progress through a run of steps, reported on stderr.
#[derive(Debug)]
pub struct Progress {
    /// Hidden when stderr is not a terminal: then each step is a line of its own.
    bar: ProgressBar,
}

impl Progress {
    /// A bar on stderr if it is a terminal, else one line per step.
    pub fn stderr() -> Progress {
        // Decided here rather than left to indicatif, so that a log gets the step lines.
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let style = ProgressStyle::with_template(TEMPLATE)
            .expect("the template is valid")
            .progress_chars("#-");
        Progress {
            bar: ProgressBar::with_draw_target(None, target).with_style(style),
        }
    }

    /// Step `done` of `total` is done; `line` says what it was.
    pub fn step(&self, done: usize, total: usize, line: impl Display) {
        if self.bar.is_hidden() {
            eprintln!("[{done}/{total}] {line}");
        } else {
            self.advance(done, total);
            self.bar.set_message(line.to_string());
        }
    }

    /// Step `done` of `total` failed; `line` says how, and stays on screen.
    pub fn failed(&self, done: usize, total: usize, line: impl Display) {
        if self.bar.is_hidden() {
            eprintln!("[{done}/{total}] {line}");
        } else {
            self.advance(done, total);
            self.note(line);
        }
    }

    /// A line of its own (a warning), above the bar on a terminal.
    pub fn note(&self, line: impl Display) {
        if self.started() {
            self.bar.suspend(|| eprintln!("{line}"));
        } else {
            // No bar on screen yet: none to clear, and none to draw before the first step.
            eprintln!("{line}");
        }
    }

    /// Leaves the bar's last state on screen; later output starts on a new line.
    pub fn finish(self) {
        if self.bar.is_hidden() {
            return;
        }
        if self.started() {
            self.bar.finish();
        }
        // The bar leaves the cursor at the end of its line.
        eprintln!();
    }

    /// Whether a step has been reported (so a bar may be on screen).
    fn started(&self) -> bool {
        self.bar.length().is_some()
    }

    fn advance(&self, done: usize, total: usize) {
        self.bar.update(|s| {
            s.set_len(total as u64);
            s.set_pos(done as u64);
        });
    }
}
