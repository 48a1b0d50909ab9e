//! Test support shared by the core's behaviour tests: compile-time `Send`/`Sync` checks and
//! one way to record metrics on a local recorder.
//!
//! Each test binary includes it with `mod support;`; not every binary uses every item.
#![allow(dead_code, unreachable_pub)]

pub mod layers;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

/// Fails to compile unless `T` is `Send + Sync + 'static`.
pub const fn assert_send_sync<T: Send + Sync + 'static>() {}

/// Fails to compile unless `T` is `Send`.
pub const fn assert_send<T: Send>() {}

/// Fails to compile unless the value's type is `Send`.
pub fn assert_send_value<T: Send>(_: &T) {}

/// An [`App`](asyncworker_core::App) with default settings (not the environment's) and no
/// signal handlers.
pub fn quiet_app() -> asyncworker_core::App {
    let mut app = asyncworker_core::App::new();
    app.with_settings(asyncworker_core::Settings::default())
        .handle_signals(false);
    app
}

/// `error` and each of its sources, joined by `: `.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The labels of one series, sorted by key.
pub type Labels = Vec<(String, String)>;

/// A debugging recorder installed on this thread for the test's lifetime.
///
/// The debugging recorder drains every metric on each snapshot (a gauge reads as its change
/// since the last one), so reads accumulate: counters and histogram samples since
/// [`LocalMetrics::install`], gauges as the sum of their increments and decrements.
pub struct LocalMetrics {
    snapshotter: Snapshotter,
    totals: std::cell::RefCell<Totals>,
    _guard: metrics::LocalRecorderGuard<'static>,
}

/// Every metric's value since [`LocalMetrics::install`].
#[derive(Debug, Clone, Default)]
pub struct Totals {
    /// Counters: name, labels, total.
    pub counters: Vec<(String, Labels, u64)>,
    /// Gauges: name, labels, the sum of their increments and decrements.
    pub gauges: Vec<(String, Labels, f64)>,
    /// Histograms: name, labels, every sample.
    pub histograms: Vec<(String, Labels, Vec<f64>)>,
}

impl LocalMetrics {
    /// Install a fresh recorder on this thread (a current-thread runtime's tasks record
    /// into it).
    pub fn install() -> Self {
        let recorder: &'static DebuggingRecorder = Box::leak(Box::new(DebuggingRecorder::new()));
        LocalMetrics {
            snapshotter: recorder.snapshotter(),
            totals: Default::default(),
            _guard: metrics::set_default_local_recorder(recorder),
        }
    }

    /// Every metric's value so far.
    pub fn read(&self) -> Totals {
        let mut totals = self.totals.borrow_mut();
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let key = key.key();
            let name = key.name().to_owned();
            let mut labels: Labels = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            labels.sort();
            match value {
                DebugValue::Counter(n) => entry(&mut totals.counters, name, labels, 0, |v| *v += n),
                DebugValue::Gauge(g) => entry(&mut totals.gauges, name, labels, 0.0, |v| {
                    *v += g.into_inner()
                }),
                DebugValue::Histogram(h) => {
                    entry(&mut totals.histograms, name, labels, Vec::new(), |v| {
                        v.extend(h.iter().map(|f| f.into_inner()))
                    })
                }
            }
        }
        totals.clone()
    }

    /// The sum of counter `name` over every series whose labels include all of `labels`.
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.read()
            .counters
            .iter()
            .filter(|(n, l, _)| n == name && matches(l, labels))
            .map(|(.., v)| v)
            .sum()
    }

    /// The samples of histogram `name` over every series whose labels include all of
    /// `labels`.
    pub fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        self.read()
            .histograms
            .into_iter()
            .filter(|(n, l, _)| n == name && matches(l, labels))
            .flat_map(|(.., v)| v)
            .collect()
    }

    /// The value of gauge `name` whose labels include all of `labels`, if recorded.
    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.read()
            .gauges
            .into_iter()
            .find(|(n, l, _)| n == name && matches(l, labels))
            .map(|(.., v)| v)
    }
}

fn matches(have: &Labels, want: &[(&str, &str)]) -> bool {
    want.iter()
        .all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v))
}

fn entry<T>(
    entries: &mut Vec<(String, Labels, T)>,
    name: String,
    labels: Labels,
    empty: T,
    update: impl FnOnce(&mut T),
) {
    match entries
        .iter_mut()
        .find(|(n, l, _)| *n == name && *l == labels)
    {
        Some((.., v)) => update(v),
        None => {
            let mut v = empty;
            update(&mut v);
            entries.push((name, labels, v));
        }
    }
}
