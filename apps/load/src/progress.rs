//! The progress bar on stderr (hidden when stderr is not a terminal, or with `--quiet`).

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar that is either drawn on stderr or hidden.
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar on stderr, or a hidden one when `quiet` or when stderr is not a terminal.
    pub fn new(quiet: bool) -> Progress {
        let bar = if quiet || !std::io::stderr().is_terminal() {
            ProgressBar::hidden()
        } else {
            ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(10))
        };
        Progress { bar }
    }

    /// Starts a step of `len` units, labelled `prefix`, at position 0.
    pub fn step(&self, prefix: &'static str, len: u64) {
        let style = ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos:>7}/{len:7} {msg}")
            .expect("valid progress template")
            .progress_chars("=> ");
        self.bar.set_style(style);
        self.bar.set_prefix(prefix);
        self.bar.set_length(len);
        self.bar.set_position(0);
        self.bar.set_message("");
    }

    /// Starts a timed step of `total`; the position shows seconds.
    pub fn timed(&self, prefix: &'static str, total: Duration) {
        let style = ProgressStyle::with_template("{prefix:>10} [{bar:30}] {msg}")
            .expect("valid progress template")
            .progress_chars("=> ");
        self.bar.set_style(style);
        self.bar.set_prefix(prefix);
        self.bar.set_length(total.as_millis().max(1) as u64);
        self.bar.set_position(0);
        self.bar.set_message("");
    }

    /// Changes the label.
    pub fn set_prefix(&self, prefix: &'static str) {
        self.bar.set_prefix(prefix);
    }

    /// Moves to `pos` (units of the step; milliseconds of a timed step).
    pub fn set(&self, pos: u64, message: String) {
        self.bar.set_position(pos);
        self.bar.set_message(message);
    }

    /// Removes the bar.
    pub fn clear(&self) {
        self.bar.finish_and_clear();
    }

    /// Prints a line above the bar (or plainly when it is hidden).
    pub fn println(&self, line: &str) {
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }
}
