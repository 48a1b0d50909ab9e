//! A source's background work (spawned with `SourceContext::spawn`) outlives its stream: the
//! Worker waits for it, within the grace period, before `run` returns.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use asyncworker_core::memory::MemoryMessage;
use asyncworker_core::runtime::Worker;
use asyncworker_core::{Source, SourceContext};
use futures::stream::{self, Empty};
use tokio::time::Instant;
use tower::service_fn;

/// A source whose stream ends at once, leaving a background task that takes `work` and then
/// sets `done` (like an AMQP source sending its last acks and closing its connection).
struct Lingering {
    work: Duration,
    done: Arc<AtomicBool>,
}

impl Source for Lingering {
    type Message = MemoryMessage;
    type Error = Infallible;
    type Stream = Empty<Result<MemoryMessage, Infallible>>;

    fn into_stream(self, cx: SourceContext) -> Self::Stream {
        let Lingering { work, done } = self;
        cx.spawn(async move {
            tokio::time::sleep(work).await;
            done.store(true, Ordering::Release);
        });
        stream::empty()
    }
}

fn noop()
-> impl tower::Service<MemoryMessage, Response = (), Error = Infallible, Future: Send + 'static>
+ Send
+ 'static {
    service_fn(|_m: MemoryMessage| async { Ok::<(), Infallible>(()) })
}

#[tokio::test(start_paused = true)]
async fn run_returns_after_the_sources_background_work() {
    let done = Arc::new(AtomicBool::new(false));
    let source = Lingering {
        work: Duration::from_secs(2),
        done: done.clone(),
    };
    Worker::new(source, noop()).run().await.unwrap();
    assert!(
        done.load(Ordering::Acquire),
        "the background task finished first"
    );
}

#[tokio::test(start_paused = true)]
async fn the_wait_for_background_work_is_bounded_by_the_grace_period() {
    let done = Arc::new(AtomicBool::new(false));
    let source = Lingering {
        work: Duration::from_secs(3600),
        done: done.clone(),
    };
    let started = Instant::now();
    Worker::new(source, noop())
        .grace_period(Duration::from_secs(5))
        .run()
        .await
        .unwrap();
    assert!(!done.load(Ordering::Acquire));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_secs(6),
        "waited {waited:?}"
    );
}
