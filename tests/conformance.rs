//! Backend conformance: one set of behaviours, written once over [`Harness`] (a backend
//! under test), run against every backend that can run it: the in-memory queue and a real
//! RabbitMQ queue (durable, unique per test, deleted after), and an SSE stream from a real
//! axum server in this process that serves the published events with ids and replays from
//! `Last-Event-ID`.
//!
//! Behaviours: resend on error until success; no loss across a consumer close and re-open;
//! continuing after handler errors and panics; the in-flight bound; draining a partial batch
//! on shutdown; order within one consumer at bulk 1 and concurrency 1.
//!
//! Waits are bounded ([`DEADLINE`]); nothing asserts on time.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use asyncworker::Source;
use asyncworker::ack::AckLayer;
use asyncworker::amqp::lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use asyncworker::amqp::lapin::types::FieldTable;
use asyncworker::amqp::lapin::{Channel, Connection};
use asyncworker::amqp::{AmqpConfig, AmqpSource, OutgoingMessage, Publisher};
use asyncworker::bulk::BulkLayer;
use asyncworker::memory::{MemoryQueue, MemorySource};
use asyncworker::prelude::*;
use asyncworker::runtime::Worker;
use asyncworker::sse::{MemoryCheckpoints, SseConfig, SseSource};
use asyncworker::{BoxError, SourceContext};
use futures::StreamExt;
use futures::stream::BoxStream;
use tower::ServiceBuilder;

/// How long any one condition may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(30);

/// A backend under test: where messages are published, a consumer of them, and what the
/// backend itself says about what is left.
trait Harness {
    type Src: Source;

    /// Publishes `bodies`, in this order.
    async fn publish(&self, bodies: &[String]);
    /// A new consumer of the published messages, holding at most `prefetch` unsettled.
    fn source(&self, prefetch: u16) -> Self::Src;
    /// Waits until no published message is waiting to be delivered.
    async fn wait_delivered(&self);
    /// Waits until every published message is settled for good (acked or rejected).
    async fn wait_drained(&self);
    /// Removes what the harness made.
    async fn cleanup(self);
}

// ---------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------

struct Memory {
    queue: MemoryQueue,
}

impl Memory {
    fn new() -> Memory {
        Memory {
            queue: MemoryQueue::new().redeliver_requeued(true),
        }
    }
}

impl Harness for Memory {
    type Src = MemorySource;

    async fn publish(&self, bodies: &[String]) {
        for body in bodies {
            self.queue.push_bytes(body.clone().into_bytes());
        }
    }

    fn source(&self, _prefetch: u16) -> MemorySource {
        self.queue.source()
    }

    async fn wait_delivered(&self) {
        until("memory: nothing ready", || async {
            self.queue.ready() == 0
        })
        .await;
    }

    async fn wait_drained(&self) {
        until("memory: nothing ready or outstanding", || async {
            self.queue.ready() == 0 && self.queue.outstanding() == 0
        })
        .await;
    }

    async fn cleanup(self) {
        self.queue.close();
    }
}

fn broker_url() -> String {
    std::env::var("ASYNCWORKER_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

struct Amqp {
    name: String,
    config: AmqpConfig,
    _connection: Connection,
    channel: Channel,
}

impl Amqp {
    async fn new(test: &str) -> Amqp {
        let config = AmqpConfig::from_url(&broker_url()).expect("a valid broker url");
        let connection = config.connect().await.expect("the test broker answers");
        let channel = connection.create_channel().await.expect("a channel");
        let name = format!("aw-test-conform-{test}-{:016x}", random_u64());
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(name.as_str().into(), durable, FieldTable::default())
            .await
            .expect("declare");
        Amqp {
            name,
            config,
            _connection: connection,
            channel,
        }
    }

    /// (ready, consumers), by passive declare.
    async fn counts(&self) -> (u32, u32) {
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let q = self
            .channel
            .queue_declare(self.name.as_str().into(), passive, FieldTable::default())
            .await
            .expect("the queue exists");
        (q.message_count(), q.consumer_count())
    }
}

impl Harness for Amqp {
    type Src = AmqpSource;

    async fn publish(&self, bodies: &[String]) {
        let publisher = Publisher::connect(&self.config).await.expect("publisher");
        let outcomes = publisher
            .publish_all(
                bodies
                    .iter()
                    .map(|b| OutgoingMessage::new("", self.name.as_str(), b.clone().into_bytes())),
            )
            .await;
        assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
        let _ = publisher.close().await;
    }

    fn source(&self, prefetch: u16) -> AmqpSource {
        let config = AmqpConfig::builder()
            .url(&broker_url())
            .prefetch(prefetch)
            .build()
            .expect("config");
        AmqpSource::builder(config, [self.name.as_str()])
            .build()
            .expect("source")
    }

    async fn wait_delivered(&self) {
        until("amqp: nothing ready", || async {
            self.counts().await.0 == 0
        })
        .await;
    }

    async fn wait_drained(&self) {
        // With no consumer left, an unacked message would be ready again.
        until("amqp: nothing ready and no consumer", || async {
            self.counts().await == (0, 0)
        })
        .await;
    }

    async fn cleanup(self) {
        self.channel
            .queue_delete(self.name.as_str().into(), QueueDeleteOptions::default())
            .await
            .expect("delete");
    }
}

/// A source that counts what its stream yields: how the SSE harness knows the events reached
/// the worker (an HTTP server cannot tell what its client has read).
struct Counted<S> {
    inner: S,
    yielded: Arc<AtomicUsize>,
}

impl<S: Source> Source for Counted<S> {
    type Message = S::Message;
    type Error = BoxError;
    type Stream = BoxStream<'static, Result<S::Message, BoxError>>;

    fn max_in_flight(&self) -> Option<usize> {
        self.inner.max_in_flight()
    }

    fn reports_readiness(&self) -> bool {
        self.inner.reports_readiness()
    }

    fn into_stream(self, cx: SourceContext) -> Self::Stream {
        let yielded = self.yielded;
        self.inner
            .into_stream(cx)
            .map(move |item| {
                if item.is_ok() {
                    yielded.fetch_add(1, Ordering::SeqCst);
                }
                item.map_err(Into::into)
            })
            .boxed()
    }
}

const SSE_PATH: &str = "/events";

struct Sse {
    base: String,
    events: Arc<Mutex<Vec<String>>>,
    checkpoints: MemoryCheckpoints,
    yielded: Arc<AtomicUsize>,
    server: tokio::task::JoinHandle<()>,
}

impl Sse {
    async fn new() -> Sse {
        let events: Arc<Mutex<Vec<String>>> = Arc::default();
        let served = Arc::clone(&events);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new().route(
            SSE_PATH,
            axum::routing::get(move |headers: axum::http::HeaderMap| {
                let events = Arc::clone(&served);
                async move {
                    // Ids are 1-based positions; replay what follows Last-Event-ID.
                    let after: usize = headers
                        .get("last-event-id")
                        .and_then(|v| v.to_str().ok()?.parse().ok())
                        .unwrap_or(0);
                    let mut body = String::from(": hello\n\n");
                    for (i, data) in events.lock().unwrap().iter().enumerate().skip(after) {
                        body.push_str(&format!("id: {}\ndata: {data}\n\n", i + 1));
                    }
                    let stream = futures::stream::iter([Ok::<_, std::io::Error>(body)])
                        .chain(futures::stream::pending());
                    axum::response::Response::builder()
                        .header("content-type", "text/event-stream")
                        .body(axum::body::Body::from_stream(stream))
                        .unwrap()
                }
            }),
        );
        let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Sse {
            base,
            events,
            checkpoints: MemoryCheckpoints::new(),
            yielded: Arc::default(),
            server,
        }
    }
}

impl Harness for Sse {
    type Src = Counted<SseSource>;

    async fn publish(&self, bodies: &[String]) {
        self.events.lock().unwrap().extend(bodies.iter().cloned());
    }

    fn source(&self, _prefetch: u16) -> Counted<SseSource> {
        let config = SseConfig::builder(self.base.clone())
            .backoff(
                asyncworker::Backoff::builder()
                    .initial_delay(Duration::from_millis(5))
                    .max_delay(Duration::from_millis(50))
                    .build()
                    .unwrap(),
            )
            .build()
            .expect("config");
        let inner = SseSource::new(&config, [SSE_PATH])
            .expect("source")
            .checkpoint_store(self.checkpoints.clone())
            .checkpoint_interval(Duration::from_millis(20));
        Counted {
            inner,
            yielded: Arc::clone(&self.yielded),
        }
    }

    async fn wait_delivered(&self) {
        let n = self.events.lock().unwrap().len();
        until("sse: every event yielded", || async {
            self.yielded.load(Ordering::SeqCst) >= n
        })
        .await;
    }

    async fn wait_drained(&self) {
        // The checkpoint passes an event only once it and every event before it is settled.
        let last = self.events.lock().unwrap().len().to_string();
        let key = SseSource::checkpoint_key(ROUTE, SSE_PATH);
        until("sse: the checkpoint is at the last event", || async {
            self.checkpoints.get(&key).as_deref() == Some(last.as_str())
        })
        .await;
    }

    async fn cleanup(self) {
        self.server.abort();
    }
}

/// The route name every worker here runs as (the SSE checkpoint key names it).
const ROUTE: &str = "conformance";

// ---------------------------------------------------------------------------------------
// The handler under test and the worker around it
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Outcome {
    Ok,
    Fail,
    Panic,
}

type Script = Arc<dyn Fn(&str, usize) -> Outcome + Send + Sync>;

/// What the handler saw: every call per body, successful handlings in order, and the most
/// messages it held at once.
#[derive(Default)]
struct Record {
    attempts: Mutex<HashMap<String, usize>>,
    handled: Mutex<Vec<String>>,
    holding: AtomicUsize,
    max_holding: AtomicUsize,
}

impl Record {
    fn handled(&self) -> Vec<String> {
        self.handled.lock().unwrap().clone()
    }
    fn handled_set(&self) -> HashSet<String> {
        self.handled().into_iter().collect()
    }
    fn attempts(&self, body: &str) -> usize {
        self.attempts
            .lock()
            .unwrap()
            .get(body)
            .copied()
            .unwrap_or(0)
    }
}

struct Run {
    bulk: usize,
    max_in_flight: usize,
    flush_interval: Duration,
    hold: Duration,
    script: Script,
}

impl Default for Run {
    fn default() -> Run {
        Run {
            bulk: 1,
            max_in_flight: 1,
            flush_interval: Duration::from_millis(20),
            hold: Duration::ZERO,
            script: Arc::new(|_, _| Outcome::Ok),
        }
    }
}

/// Runs one worker on `source` until `stop` is done, then shuts it down and waits for it.
async fn run_worker<S, F>(source: S, run: &Run, record: &Arc<Record>, stop: F)
where
    S: Source,
    F: Future<Output = ()>,
{
    let shutdown = Shutdown::new();
    let record = Arc::clone(record);
    let script = Arc::clone(&run.script);
    let hold = run.hold;
    let handler = tower::service_fn(move |batch: Vec<S::Message>| {
        let record = Arc::clone(&record);
        let script = Arc::clone(&script);
        async move {
            let n = batch.len();
            let now = record.holding.fetch_add(n, Ordering::SeqCst) + n;
            record.max_holding.fetch_max(now, Ordering::SeqCst);
            if !hold.is_zero() {
                tokio::time::sleep(hold).await;
            }
            let mut outcome = Outcome::Ok;
            for message in &batch {
                let body = message.text().expect("utf-8").to_owned();
                let attempt = {
                    let mut attempts = record.attempts.lock().unwrap();
                    let a = attempts.entry(body.clone()).or_default();
                    *a += 1;
                    *a
                };
                match script(&body, attempt) {
                    Outcome::Ok => {}
                    other => outcome = other,
                }
            }
            record.holding.fetch_sub(n, Ordering::SeqCst);
            match outcome {
                Outcome::Ok => {
                    let mut handled = record.handled.lock().unwrap();
                    for message in &batch {
                        handled.push(message.text().unwrap().to_owned());
                    }
                    Ok(())
                }
                Outcome::Fail => Err(std::io::Error::other("scripted failure")),
                Outcome::Panic => panic!("scripted panic"),
            }
        }
    });
    let service = ServiceBuilder::new()
        .layer(
            BulkLayer::new(run.bulk)
                .unwrap()
                .flush_interval(run.flush_interval)
                .with_shutdown(shutdown.clone()),
        )
        .layer(AckLayer::new())
        .service(handler);
    let worker = Worker::new(source, service)
        .name(ROUTE)
        .max_in_flight(run.max_in_flight)
        .with_shutdown(shutdown.clone())
        .grace_period(Duration::from_secs(10));
    let trigger = async {
        stop.await;
        shutdown.trigger();
    };
    let (report, ()) =
        tokio::time::timeout(DEADLINE * 2, async { tokio::join!(worker.run(), trigger) })
            .await
            .expect("the worker stops");
    report.expect("the worker runs");
}

fn bodies(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:04}")).collect()
}

async fn until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + DEADLINE;
    while !condition().await {
        assert!(Instant::now() < deadline, "not within {DEADLINE:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn until_handled(record: &Record, expected: &HashSet<String>) {
    until("every message handled", || async {
        expected.is_subset(&record.handled_set())
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// The behaviours, once
// ---------------------------------------------------------------------------------------

/// A handler failing the first 3 times for a message: it comes back and is finally acked.
async fn resends_on_error_until_success<H: Harness>(h: H) {
    let all = bodies("resend", 5);
    h.publish(&all).await;
    let record = Arc::new(Record::default());
    let run = Run {
        script: Arc::new(|body, attempt| {
            if body == "resend-0002" && attempt <= 3 {
                Outcome::Fail
            } else {
                Outcome::Ok
            }
        }),
        ..Run::default()
    };
    let expected: HashSet<String> = all.iter().cloned().collect();
    run_worker(
        h.source(10),
        &run,
        &record,
        until_handled(&record, &expected),
    )
    .await;
    h.wait_drained().await;
    assert_eq!(record.attempts("resend-0002"), 4);
    assert_eq!(record.handled_set(), expected);
    h.cleanup().await;
}

/// A worker stopped mid-drain and a new one started: every message handled at least once.
async fn no_loss_across_close_and_reopen<H: Harness>(h: H) {
    let all = bodies("reopen", 60);
    h.publish(&all).await;
    let record = Arc::new(Record::default());
    let run = Run {
        bulk: 5,
        max_in_flight: 10,
        hold: Duration::from_millis(10),
        ..Run::default()
    };
    let first_stop = async {
        until("some handled", || async { record.handled().len() >= 10 }).await;
    };
    run_worker(h.source(10), &run, &record, first_stop).await;
    let after_first = record.handled().len();
    assert!(
        after_first < all.len(),
        "the first worker was stopped mid-drain"
    );
    let expected: HashSet<String> = all.iter().cloned().collect();
    run_worker(
        h.source(10),
        &run,
        &record,
        until_handled(&record, &expected),
    )
    .await;
    h.wait_drained().await;
    assert_eq!(record.handled_set(), expected);
    h.cleanup().await;
}

/// Errors and panics of the handler fail their messages, not the worker: later messages are
/// handled, and the failed ones come back until they succeed.
async fn continues_after_errors_and_panics<H: Harness>(h: H) {
    let all = bodies("faulty", 20);
    h.publish(&all).await;
    let record = Arc::new(Record::default());
    let run = Run {
        script: Arc::new(|body, attempt| match (body, attempt) {
            ("faulty-0003", 1) | ("faulty-0011", 1) => Outcome::Fail,
            ("faulty-0005", 1) | ("faulty-0017", 1 | 2) => Outcome::Panic,
            _ => Outcome::Ok,
        }),
        max_in_flight: 4,
        ..Run::default()
    };
    let expected: HashSet<String> = all.iter().cloned().collect();
    run_worker(
        h.source(10),
        &run,
        &record,
        until_handled(&record, &expected),
    )
    .await;
    h.wait_drained().await;
    assert_eq!(record.handled_set(), expected);
    assert_eq!(record.attempts("faulty-0005"), 2);
    assert_eq!(record.attempts("faulty-0017"), 3);
    h.cleanup().await;
}

/// Never more than `max_in_flight` messages in the handler at once, though more are ready.
async fn in_flight_bound_holds<H: Harness>(h: H) {
    let all = bodies("bound", 40);
    h.publish(&all).await;
    let record = Arc::new(Record::default());
    let run = Run {
        bulk: 2,
        max_in_flight: 4,
        hold: Duration::from_millis(20),
        ..Run::default()
    };
    let expected: HashSet<String> = all.iter().cloned().collect();
    run_worker(
        h.source(50),
        &run,
        &record,
        until_handled(&record, &expected),
    )
    .await;
    h.wait_drained().await;
    let max = record.max_holding.load(Ordering::SeqCst);
    assert!(max <= 4, "held {max} at once, bound 4");
    assert!(
        max >= 2,
        "held at most {max}: the bound was never approached"
    );
    h.cleanup().await;
}

/// A partial batch (3 of 10) that would never flush on time is flushed and settled at
/// shutdown.
async fn drains_a_partial_batch_on_shutdown<H: Harness>(h: H) {
    let all = bodies("drain", 3);
    h.publish(&all).await;
    let record = Arc::new(Record::default());
    let run = Run {
        bulk: 10,
        max_in_flight: 10,
        flush_interval: Duration::MAX,
        ..Run::default()
    };
    let stop = async {
        h.wait_delivered().await;
        assert!(
            record.handled().is_empty(),
            "the batch was not flushed early"
        );
    };
    run_worker(h.source(10), &run, &record, stop).await;
    assert_eq!(record.handled(), all);
    h.wait_drained().await;
    h.cleanup().await;
}

/// At bulk 1 and concurrency 1, one consumer handles messages in publishing order.
async fn keeps_order_at_bulk_1_concurrency_1<H: Harness>(h: H) {
    let all = bodies("order", 50);
    h.publish(&all).await;
    let record = Arc::new(Record::default());
    let expected: HashSet<String> = all.iter().cloned().collect();
    run_worker(
        h.source(1),
        &Run::default(),
        &record,
        until_handled(&record, &expected),
    )
    .await;
    h.wait_drained().await;
    assert_eq!(record.handled(), all);
    h.cleanup().await;
}

// ---------------------------------------------------------------------------------------
// The matrix
// ---------------------------------------------------------------------------------------

macro_rules! conformance {
    ($($behaviour:ident),* $(,)?) => {
        mod memory {
            use super::*;
            $(
                #[tokio::test]
                async fn $behaviour() {
                    super::$behaviour(Memory::new()).await;
                }
            )*
        }
        mod sse {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $behaviour() {
                    super::$behaviour(Sse::new().await).await;
                }
            )*
        }
        mod amqp {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $behaviour() {
                    super::$behaviour(Amqp::new(stringify!($behaviour)).await).await;
                }
            )*
        }
    };
}

conformance!(
    resends_on_error_until_success,
    no_loss_across_close_and_reopen,
    continues_after_errors_and_panics,
    in_flight_bound_holds,
    drains_a_partial_batch_on_shutdown,
    keeps_order_at_bulk_1_concurrency_1,
);

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_usize(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}
