//! Support for the layer tests: delivering in-memory messages, and a slow handler that
//! records when its calls start and how many run at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use asyncworker_core::BoxError;
use asyncworker_core::memory::{MemoryMessage, MemoryQueue};
use futures::StreamExt;
use tokio::time::Instant;
use tower::{Service, service_fn};

/// Push a message and take it from the queue, as a runtime would.
pub async fn deliver(queue: &MemoryQueue) -> MemoryMessage {
    let id = queue.push_bytes("x");
    let message = queue
        .source()
        .next()
        .await
        .expect("queued")
        .expect("infallible");
    assert_eq!(message.id(), id);
    message
}

/// A handler whose every call takes a second: it records when each call started (from its
/// creation) and the most calls running at once.
#[derive(Clone)]
pub struct SlowHandler {
    created: Instant,
    started: Arc<Mutex<Vec<Duration>>>,
    running: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

impl SlowHandler {
    pub fn new() -> Self {
        SlowHandler {
            created: Instant::now(),
            started: Arc::default(),
            running: Arc::default(),
            peak: Arc::default(),
        }
    }

    /// The handler service; its clones record into this `SlowHandler`.
    pub fn service(
        &self,
    ) -> impl Service<Vec<MemoryMessage>, Response = (), Error = BoxError, Future: Send>
    + Clone
    + Send
    + Sync
    + 'static {
        let this = self.clone();
        service_fn(move |_batch: Vec<MemoryMessage>| {
            let this = this.clone();
            async move {
                this.started
                    .lock()
                    .expect("not poisoned")
                    .push(this.created.elapsed());
                let now = this.running.fetch_add(1, Ordering::SeqCst) + 1;
                this.peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(1)).await;
                this.running.fetch_sub(1, Ordering::SeqCst);
                Ok::<(), BoxError>(())
            }
        })
    }

    /// When each call started, from the handler's creation.
    pub fn started(&self) -> Vec<Duration> {
        self.started.lock().expect("not poisoned").clone()
    }

    /// The most calls seen running at once.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
}
