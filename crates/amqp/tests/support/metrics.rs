//! A `metrics` debugging recorder shared by the tests of one binary, and test logging.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

/// Counters seen so far, accumulated across snapshots (a snapshot resets the recorder's
/// counters, and the tests of one binary share it).
static METRICS: OnceLock<(Snapshotter, Mutex<HashMap<String, u64>>)> = OnceLock::new();

/// Install the debugging recorder for this test binary (once).
pub fn install_metrics() {
    METRICS.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("no other recorder in the test binary");
        (snapshotter, Mutex::new(HashMap::new()))
    });
}

/// The value of counter `name` with every label of `labels` (others ignored), summed.
pub fn counter(name: &str, labels: &[(&str, &str)]) -> u64 {
    let (snapshotter, acc) = METRICS.get().expect("install_metrics() first");
    let mut acc = acc.lock().unwrap();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        if let DebugValue::Counter(v) = value {
            let (_, key) = key.into_parts();
            let mut id = key.name().to_owned();
            let mut labels: Vec<_> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            for l in labels {
                id.push('|');
                id.push_str(&l);
            }
            *acc.entry(id).or_default() += v;
        }
    }
    acc.iter()
        .filter(|(id, _)| {
            let mut parts = id.split('|');
            parts.next() == Some(name)
                && labels
                    .iter()
                    .all(|(k, v)| id.split('|').any(|p| p == format!("{k}={v}")))
        })
        .map(|(_, v)| *v)
        .sum()
}

/// Log to the test output, filtered by `RUST_LOG` (default: warnings).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}
