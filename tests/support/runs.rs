//! Reading runs of the `amqp_worker` example: the message ids its handler logged, and the
//! `published / handled / lost / duplicates` tally of one test's runs. Shared by
//! `tests/amqp_processes.rs` and `crates/amqp/tests/cluster.rs`.

use std::collections::{HashMap, HashSet};

/// The ids of the messages the worker's handler logged in `lines`.
pub fn handled(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.contains("amqp_worker: message"))
        .filter_map(|l| Some(l.split("id=\"").nth(1)?.split('"').next()?.to_owned()))
        .collect()
}

/// What became of the published ids over all the runs of a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Ids published.
    pub published: usize,
    /// Published ids handled at least once.
    pub handled: usize,
    /// Published ids never handled.
    pub lost: usize,
    /// Handlings beyond the first, summed over every id.
    pub duplicates: usize,
}

impl Tally {
    /// The tally of `runs` (each run's handled ids) against the published ids `want`.
    pub fn of(want: &HashSet<String>, runs: &[Vec<String>]) -> Tally {
        let mut times: HashMap<&str, usize> = HashMap::new();
        for id in runs.iter().flatten() {
            *times.entry(id.as_str()).or_default() += 1;
        }
        let handled = want
            .iter()
            .filter(|id| times.contains_key(id.as_str()))
            .count();
        Tally {
            published: want.len(),
            handled,
            lost: want.len() - handled,
            duplicates: times.values().map(|n| n - 1).sum(),
        }
    }

    /// `published=N handled=N lost=N duplicates=N`, for the tests' summary lines.
    pub fn line(&self) -> String {
        format!(
            "published={} handled={} lost={} duplicates={}",
            self.published, self.handled, self.lost, self.duplicates
        )
    }
}
