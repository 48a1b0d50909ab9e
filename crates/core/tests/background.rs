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

/// A message of [`Settling`]: its settlements go to the source's background task.
#[derive(Clone)]
struct Slow {
    payload: bytes::Bytes,
    settlement: asyncworker_core::Settlement,
}

impl asyncworker_core::Message for Slow {
    fn payload(&self) -> &bytes::Bytes {
        &self.payload
    }

    fn settlement(&self) -> &asyncworker_core::Settlement {
        &self.settlement
    }
}

type Sent = Arc<std::sync::Mutex<Vec<(String, asyncworker_core::Action)>>>;

/// A source of the bodies given, whose settlements take 10 ms each to "reach the broker" in a
/// background task (like the AMQP channel task), recorded in `sent`.
struct Settling {
    bodies: Vec<&'static str>,
    sent: Sent,
}

impl Source for Settling {
    type Message = Slow;
    type Error = Infallible;
    type Stream = stream::Iter<std::vec::IntoIter<Result<Slow, Infallible>>>;

    fn into_stream(self, cx: SourceContext) -> Self::Stream {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let sent = self.sent;
        cx.spawn(async move {
            while let Some((body, action)) = rx.recv().await {
                tokio::time::sleep(Duration::from_millis(10)).await;
                sent.lock().unwrap().push((body, action));
            }
        });
        let messages: Vec<_> = self
            .bodies
            .into_iter()
            .map(|body| {
                let tx = tx.clone();
                let settlement =
                    asyncworker_core::Settlement::new(move |action: asyncworker_core::Action| {
                        let _ = tx.send((body.to_owned(), action));
                        Ok(())
                    });
                Ok(Slow {
                    payload: bytes::Bytes::from_static(body.as_bytes()),
                    settlement,
                })
            })
            .collect();
        stream::iter(messages)
    }
}

/// A batch that finished just before the grace deadline has its ack sent, though a later
/// batch is abandoned at the deadline: the background work still gets a moment to send it
/// (and the abandoned batch's requeue).
#[tokio::test(start_paused = true)]
async fn acks_of_work_finished_just_before_the_deadline_are_not_cut_off_by_an_abandoned_batch() {
    use asyncworker_core::{Action, Message, Shutdown};
    let sent = Sent::default();
    let source = Settling {
        bodies: vec!["fast", "hangs"],
        sent: sent.clone(),
    };
    let shutdown = Shutdown::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        // Both messages are in flight by then.
        tokio::time::sleep(Duration::from_millis(1)).await;
        trigger.trigger();
    });
    let handler = service_fn(|m: Slow| async move {
        if m.payload().as_ref() == b"fast" {
            tokio::time::sleep(Duration::from_millis(996)).await;
            m.settlement().settle(Action::Ack).unwrap();
        } else {
            std::future::pending::<()>().await;
        }
        Ok::<(), Infallible>(())
    });
    let report = Worker::new(source, handler)
        .with_shutdown(shutdown)
        .grace_period(Duration::from_secs(1))
        .run()
        .await
        .unwrap();
    assert_eq!(report.abandoned, 1);
    let mut sent = sent.lock().unwrap().clone();
    sent.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        sent,
        vec![
            ("fast".to_owned(), Action::Ack),
            ("hangs".to_owned(), Action::Requeue)
        ]
    );
}
