//! Wall-clock time of each stage of a heuristic call, so benchmarks can say which stage
//! dominates (e.g. k-means vs typicality in TypiClust).

use std::time::{Duration, Instant};

/// Named stage durations, in the order the stages ran.
#[derive(Clone, Debug)]
pub struct Stages {
    entries: Vec<(&'static str, Duration)>,
    started: Instant,
}

impl Stages {
    /// Starts timing the first stage.
    pub fn start() -> Self {
        Self { entries: Vec::new(), started: Instant::now() }
    }

    /// Ends the running stage under `name` and starts the next.
    pub fn lap(&mut self, name: &'static str) {
        let now = Instant::now();
        self.entries.push((name, now - self.started));
        self.started = now;
    }

    /// `(name, duration)` of every finished stage, in order.
    pub fn entries(&self) -> &[(&'static str, Duration)] {
        &self.entries
    }
}
