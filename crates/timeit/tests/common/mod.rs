//! Helpers shared by the behaviour tests: a debugging recorder and a collecting callback.

#![allow(dead_code, unreachable_pub)]

use std::{
    future::{Ready, ready},
    sync::{Arc, Mutex},
    time::Duration,
};

use asyncworker_timeit::Report;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

/// One recorded histogram sample set: name, sorted labels, values in seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub values: Vec<f64>,
}

/// Every histogram recorded since the last call, sorted by labels.
pub fn histograms(snapshotter: &Snapshotter) -> Vec<Sample> {
    let mut samples: Vec<Sample> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| match value {
            DebugValue::Histogram(values) if !values.is_empty() => {
                let (_, key) = key.into_parts();
                let mut labels: Vec<_> = key
                    .labels()
                    .map(|l| (l.key().to_owned(), l.value().to_owned()))
                    .collect();
                labels.sort();
                Some(Sample {
                    name: key.name().to_owned(),
                    labels,
                    values: values.into_iter().map(|v| v.into_inner()).collect(),
                })
            }
            _ => None,
        })
        .collect();
    samples.sort_by(|a, b| a.labels.cmp(&b.labels));
    samples
}

/// A sample of the default histogram with `transaction` and `outcome` labels.
pub fn sample(transaction: &str, outcome: &str, values: &[f64]) -> Sample {
    Sample {
        name: "asyncworker_timeit_seconds".to_owned(),
        labels: vec![
            ("outcome".to_owned(), outcome.to_owned()),
            ("transaction".to_owned(), transaction.to_owned()),
        ],
        values: values.to_vec(),
    }
}

/// A recorder and its snapshotter; install with `metrics::set_default_local_recorder`.
pub fn recorder() -> (DebuggingRecorder, Snapshotter) {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    (recorder, snapshotter)
}

/// Collected reports, and a callback that collects them.
pub type Reports = Arc<Mutex<Vec<Report>>>;

pub fn collector() -> (
    Reports,
    impl Fn(Report) -> Ready<()> + Clone + Send + Sync + 'static,
) {
    let reports = Reports::default();
    let sink = Arc::clone(&reports);
    (reports, move |report| {
        sink.lock().unwrap().push(report);
        ready(())
    })
}

pub fn taken(reports: &Reports) -> Vec<Report> {
    std::mem::take(&mut *reports.lock().unwrap())
}

/// `(name, elapsed)` of every transaction in a report, in report order.
pub fn timings(report: &Report) -> Vec<(&str, Duration)> {
    report
        .transactions()
        .iter()
        .map(|t| (t.name(), t.elapsed()))
        .collect()
}

pub const fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}
