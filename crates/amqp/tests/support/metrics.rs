//! A `metrics` debugging recorder shared by the tests of one binary, and test logging
//! (to the test output, or captured for searching).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

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

/// Everything this test binary logs, at TRACE, from every target — lapin's frame-printing
/// targets capped as [`asyncworker_amqp::LAPIN_LOG_CAPS`] says, as `asyncworker::init_logging`
/// does. Installed as the global subscriber on first use.
pub fn captured_logs() -> String {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    let logs = LOGS.get_or_init(|| {
        use tracing_subscriber::filter::{LevelFilter, Targets};
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;

        let captured = Captured::default();
        let writer = captured.clone();
        let caps = asyncworker_amqp::LAPIN_LOG_CAPS.into_iter().fold(
            Targets::new().with_default(LevelFilter::TRACE),
            |caps, (target, level)| caps.with_target(target, level),
        );
        tracing_subscriber::registry()
            .with(caps)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(move || writer.clone()),
            )
            .init();
        captured
    });
    logs.text()
}

/// A log writer that keeps what it is given, for `tracing_subscriber`'s `with_writer(move ||
/// captured.clone())`; clones share the buffer.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether `text` shows `secret`: as text, or as the decimal bytes lapin's `Debug` of a
/// `LongString` (the login's response) or of a body prints.
pub fn shows_secret(text: &str, secret: &str) -> bool {
    let bytes: Vec<String> = secret.bytes().map(|b| b.to_string()).collect();
    text.contains(secret) || text.contains(&bytes.join(", "))
}
