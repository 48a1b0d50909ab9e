//! End-to-end throughput against a real RabbitMQ: asyncworker's full stack vs raw lapin.
//!
//! Run with: cargo bench -p asyncworker-amqp --bench e2e
//!
//! Needs a broker (`scripts/rabbitmq.sh start`). For each arm the bench declares a unique
//! durable queue, fills it with `MESSAGES` persistent messages of `BODY_BYTES` bytes
//! (publisher confirms, pipelined in a window), drains it, checks it is empty and deletes it.
//! Every fill and every drain runs in a **child process** (this binary re-executed with
//! `--child <mode> <queue> <n>`), so CPU time and peak RSS belong to that arm alone: the child
//! reads its own `utime + stime` from `/proc/self/stat` at the first delivery and at the end,
//! and its peak RSS (`VmHWM`) from `/proc/self/status`.
//!
//! Arms: each a drain of its own queue(s), filled just before by the `pub-raw` publisher.
//! The main arms, at prefetch `PREFETCH`:
//!
//! - `raw-multiple`: raw lapin, `basic.ack` with `multiple` every 128 deliveries — the
//!   baseline every ratio is taken against;
//! - `raw-awaited`: raw lapin, each delivery acked with an awaited ack;
//! - `raw-spawned`: raw lapin, each ack spawned as a task (not awaited in the loop);
//! - `aw-bulk1`, `aw-bulk256`: an asyncworker `App` route over an `AmqpSource`:
//!   Bulk → Ack → Timeit → Retry → a no-op handler, bulk size 1 and 256;
//! - `py-bulk1`, `py-bulk256` (only when `PYTHON` names an interpreter with
//!   `async-worker==0.20.2` installed, as `scripts/bench.sh` does): the Python original draining
//!   the same fill with a no-op handler (`benches/python/worker.py`), a child like the others.
//!
//! The scaling arms (`SCALE_MESSAGES` messages each; `SCALING=0` leaves them out), the same
//! full stack with its options in the name — `p` prefetch, `b` bulk size, `q` queues on the
//! one route (the fill split evenly), `sleep` a handler that sleeps that many milliseconds per
//! batch, `c` the route's `max_concurrent_batches`:
//!
//! - `aw-p{64,256,1024}-b{1,16,256}`: prefetch × bulk;
//! - `aw-q2-p256-b256`: two queues on one route;
//! - `aw-sleep5-p256-b256`, `aw-sleep5-p256-b16`, `aw-sleep5-p256-b16-c1`: a 5 ms handler,
//!   where throughput is bounded by the concurrency the options allow. A batch holds
//!   `size = min(bulk, prefetch)` messages; at most `prefetch` messages are unacknowledged, so
//!   at most `min(c, prefetch / size)` batches run at once (`c` unlimited by default), and
//!   the bound is `size × batches / 5 ms`: 256 × 1 / 5 ms = 51 200/s, 16 × 16 / 5 ms =
//!   51 200/s, 16 × 1 / 5 ms = 3 200/s. The table prints it beside the measured figure.
//!
//! Throughput is measured from the first delivery until every message is acked and the
//! channel and connection are closed (a close-ok comes after the broker has processed every
//! ack before it).
//!
//! Publishing, each round, into one more queue (purged in between), same count and size,
//! persistent, confirmed, `PUBLISH_WINDOW` publishes in flight; from the first publish to the
//! last confirm:
//!
//! - `pub-raw`: raw lapin, `basic.publish` then its confirm awaited, `PUBLISH_WINDOW` at a
//!   time with `buffer_unordered` (this also fills every drain arm's queue);
//! - `pub-aw`: asyncworker's `Publisher::publish` (confirm awaited, timeout on), driven
//!   `PUBLISH_WINDOW` at a time with `buffer_unordered`.
//!
//! Rounds: every round runs every arm once, in an order rotated by one each round (and the
//! two publishers in alternating order), so no arm always runs first or last. Each figure
//! is the median over the rounds; each ratio (an arm against `raw-multiple`, `py-bulkN`
//! against `aw-bulkN`, `pub-aw` against `pub-raw`) is taken pair by pair within a round and
//! its median over the rounds is reported. The last line of output is `BENCH_JSON {...}`:
//! every run, median and ratio, for `scripts/bench.sh` to collect.
//!
//! Environment (all optional):
//!
//! | variable | default | |
//! |---|---|---|
//! | `MESSAGES` | `200000` | messages per main arm and per publish arm |
//! | `SCALE_MESSAGES` | `25600` | messages per scaling arm |
//! | `SCALING` | `1` | `0`: leave the scaling arms out |
//! | `AMQP_URL` | `amqp://guest:guest@127.0.0.1:5672/%2f` | the broker |
//! | `PREFETCH` | `256` | `basic.qos` of the main arms' consumers |
//! | `BODY_BYTES` | `100` | message size |
//! | `PUBLISH_WINDOW` | `1024` | unconfirmed publishes in flight while filling |
//! | `ARMS` | all | comma-separated arms to run instead, e.g. `raw-multiple,aw-bulk256,aw-p64-b16`; also `aw-bulk1-bare` (Bulk → Ack only); the publish arms always run, so `pub-raw,pub-aw` runs them alone |
//! | `ROUNDS` | `3` | rounds (interleaved, rotated); the median is reported |
//! | `PYTHON` | unset | a Python with `async-worker==0.20.2`: adds `py-bulk1`, `py-bulk256` |
//! | `RUST_LOG` | unset | when set, the children log (tracing) to stderr |

use std::fmt::Write as _;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use asyncworker_amqp::lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use asyncworker_amqp::lapin::types::{AMQPValue, FieldTable};
use asyncworker_amqp::lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties,
};
use asyncworker_amqp::{AmqpConfig, AmqpMessage, AmqpSource, OutgoingMessage, Publisher};
use asyncworker_core::retry::{RetryConfig, RetryLayer};
use asyncworker_core::{App, BoxError, Settings};
use asyncworker_timeit::TimeitLayer;
use futures::StreamExt;
use tower::{ServiceBuilder, service_fn};

type Result<T, E = BoxError> = std::result::Result<T, E>;

const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The raw baseline acks with `multiple` every this many deliveries.
const MULTIPLE_EVERY: usize = 128;
/// Linux reports `utime` / `stime` in clock ticks of 1/100 s (`USER_HZ`).
const TICKS_PER_SEC: f64 = 100.0;

/// The main arms, run unless `ARMS` says otherwise; `raw-multiple` is the baseline.
const MAIN_ARMS: [&str; 5] = [
    "raw-multiple",
    "raw-awaited",
    "raw-spawned",
    "aw-bulk1",
    "aw-bulk256",
];

/// The Python original's arms, added when `PYTHON` is set; each is compared with the
/// asyncworker arm of the same bulk size.
const PYTHON_ARMS: [(&str, &str); 2] = [("py-bulk1", "aw-bulk1"), ("py-bulk256", "aw-bulk256")];

/// The scaling arms (see the module docs for the names).
const SCALING_ARMS: [&str; 13] = [
    "aw-p64-b1",
    "aw-p64-b16",
    "aw-p64-b256",
    "aw-p256-b1",
    "aw-p256-b16",
    "aw-p256-b256",
    "aw-p1024-b1",
    "aw-p1024-b16",
    "aw-p1024-b256",
    "aw-q2-p256-b256",
    "aw-sleep5-p256-b256",
    "aw-sleep5-p256-b16",
    "aw-sleep5-p256-b16-c1",
];

/// What a drain arm runs, parsed from its name.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    /// Raw lapin: `multiple`, `awaited` or `spawned` acks.
    Raw(&'static str),
    /// The asyncworker stack; `full`: with Timeit and Retry.
    Aw {
        bulk: usize,
        full: bool,
        sleep_ms: u64,
        batches: Option<usize>,
    },
    /// The Python original (`benches/python/worker.py`).
    Py { bulk: usize },
}

#[derive(Debug, Clone)]
struct Arm {
    name: String,
    kind: Kind,
    prefetch: u16,
    queues: usize,
    /// A scaling arm: `SCALE_MESSAGES` messages, and an expected bound when it sleeps.
    scaling: bool,
}

impl Arm {
    /// Parse an arm's name: `raw-multiple`, `raw-awaited`, `raw-spawned`, or `aw-…` / `py-…`
    /// followed by `bulkN` / `bN`, `pN`, `qN`, `sleepN`, `cN`, `bare` in any order.
    fn parse(name: &str) -> Result<Arm> {
        let default_prefetch: u16 = env_or("PREFETCH", 256u16);
        let raw = |mode| Arm {
            name: name.to_owned(),
            kind: Kind::Raw(mode),
            prefetch: default_prefetch,
            queues: 1,
            scaling: false,
        };
        match name {
            "raw-multiple" => return Ok(raw("multiple")),
            "raw-awaited" => return Ok(raw("awaited")),
            "raw-spawned" => return Ok(raw("spawned")),
            _ => {}
        }
        let bad = || -> BoxError {
            format!(
                "unknown arm {name:?}; arms: {}, {}, py-bulkN, aw-bulk1-bare",
                MAIN_ARMS.join(", "),
                SCALING_ARMS.join(", ")
            )
            .into()
        };
        let mut parts = name.split('-');
        let python = match parts.next() {
            Some("aw") => false,
            Some("py") => true,
            _ => return Err(bad()),
        };
        let (mut bulk, mut prefetch, mut queues, mut sleep_ms, mut batches, mut full) =
            (None, None, 1usize, 0u64, None, true);
        for part in parts {
            let number = |prefix: &str| {
                part.strip_prefix(prefix)
                    .and_then(|v| v.parse::<u64>().ok())
            };
            if part == "bare" {
                full = false;
            } else if let Some(v) = number("bulk").or_else(|| number("b")) {
                bulk = Some(v as usize);
            } else if let Some(v) = number("sleep") {
                sleep_ms = v;
            } else if let Some(v) = number("p") {
                prefetch = Some(u16::try_from(v).map_err(|_| bad())?);
            } else if let Some(v) = number("q") {
                queues = v as usize;
            } else if let Some(v) = number("c") {
                batches = Some(v as usize);
            } else {
                return Err(bad());
            }
        }
        let bulk = bulk.filter(|b| *b > 0).ok_or_else(bad)?;
        let scaling = prefetch.is_some() || queues != 1 || sleep_ms > 0 || batches.is_some();
        if queues == 0
            || batches == Some(0)
            || prefetch == Some(0)
            || (python && (scaling || !full))
        {
            return Err(bad());
        }
        Ok(Arm {
            name: name.to_owned(),
            kind: if python {
                Kind::Py { bulk }
            } else {
                Kind::Aw {
                    bulk,
                    full,
                    sleep_ms,
                    batches,
                }
            },
            prefetch: prefetch.unwrap_or(default_prefetch),
            queues,
            scaling,
        })
    }

    /// The throughput bound the options allow when the handler sleeps, in messages/s:
    /// `min(bulk, prefetch)` per batch, `min(c, prefetch / size)` batches at once.
    fn expected_bound(&self) -> Option<f64> {
        match self.kind {
            Kind::Aw {
                bulk,
                sleep_ms,
                batches,
                ..
            } if sleep_ms > 0 => {
                let size = bulk.min(usize::from(self.prefetch));
                let concurrent =
                    (usize::from(self.prefetch) / size).min(batches.unwrap_or(usize::MAX));
                Some((size * concurrent) as f64 * 1000.0 / sleep_ms as f64)
            }
            _ => None,
        }
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not valid")),
        _ => default,
    }
}

fn url() -> String {
    std::env::var("AMQP_URL")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| DEFAULT_URL.to_owned())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if let Some(i) = args.iter().position(|a| a == "--child") {
        let mode = args.get(i + 1).ok_or("--child needs a mode")?.clone();
        let queue = args.get(i + 2).ok_or("--child needs a queue")?.clone();
        let n: usize = args.get(i + 3).ok_or("--child needs a count")?.parse()?;
        if std::env::var_os("RUST_LOG").is_some() {
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_writer(std::io::stderr)
                .init();
        }
        let result = runtime.block_on(child(&mode, &queue, n))?;
        println!("{}", result.to_line());
        return Ok(());
    }
    runtime.block_on(parent())
}

// ---------------------------------------------------------------------------------------
// Measurements
// ---------------------------------------------------------------------------------------

/// CPU seconds (user + system, every thread) of the process `pid` (`self` for this one).
fn cpu_secs(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SEC)
}

/// Peak resident set size of this process, in KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The broker's Erlang VM, to report its CPU time next to the client's: the `beam.smp`
/// running `-s rabbit` whose environment has `RABBITMQ_NODE_PORT` = the port of `AMQP_URL`
/// (several nodes may run on one machine, e.g. the tests' fault node), else the only such
/// VM when there is just one.
fn broker_pid() -> Option<String> {
    let port = url::Url::parse(&url())
        .ok()
        .and_then(|u| u.port())
        .unwrap_or(5672);
    let wanted = format!("RABBITMQ_NODE_PORT={port}");
    let mut nodes: Vec<(String, bool)> = std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.bytes().all(|b| b.is_ascii_digit()).then_some(())?;
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            (comm.trim() == "beam.smp").then_some(())?;
            // The node runs `-s rabbit`; `rabbitmqctl` calls start short-lived VMs of their own.
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.windows(2)
                .any(|w| w[0] == b"-s" && w[1] == b"rabbit")
                .then_some(())?;
            let environ = std::fs::read(e.path().join("environ")).unwrap_or_default();
            let ours = environ.split(|b| *b == 0).any(|v| v == wanted.as_bytes());
            Some((name, ours))
        })
        .collect();
    if let Some((pid, _)) = nodes.iter().find(|(_, ours)| *ours) {
        return Some(pid.clone());
    }
    (nodes.len() == 1).then(|| nodes.remove(0).0)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_owned())
}

/// A point in a child's run: wall clock and the process's CPU time.
#[derive(Clone, Copy)]
struct Mark {
    at: Instant,
    cpu: f64,
}

impl Mark {
    fn now() -> Mark {
        Mark {
            at: Instant::now(),
            cpu: cpu_secs("self").unwrap_or(f64::NAN),
        }
    }
}

/// What a child reports on its last line of output.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    messages: usize,
    secs: f64,
    cpu_secs: f64,
    rss_kib: u64,
    broker_cpu_secs: f64,
}

impl Run {
    fn between(messages: usize, start: Mark, end: Mark) -> Run {
        Run {
            messages,
            secs: (end.at - start.at).as_secs_f64(),
            cpu_secs: end.cpu - start.cpu,
            rss_kib: peak_rss_kib(),
            broker_cpu_secs: f64::NAN,
        }
    }

    fn rate(&self) -> f64 {
        self.messages as f64 / self.secs
    }

    fn cpu_us_per_msg(&self) -> f64 {
        self.cpu_secs * 1e6 / self.messages as f64
    }

    fn rss_mib(&self) -> f64 {
        self.rss_kib as f64 / 1024.0
    }

    fn to_line(self) -> String {
        format!(
            "RESULT messages={} secs={} cpu={} rss_kib={}",
            self.messages, self.secs, self.cpu_secs, self.rss_kib
        )
    }

    fn parse(line: &str) -> Option<Run> {
        let mut run = Run {
            broker_cpu_secs: f64::NAN,
            ..Run::default()
        };
        for kv in line.strip_prefix("RESULT ")?.split_whitespace() {
            let (k, v) = kv.split_once('=')?;
            match k {
                "messages" => run.messages = v.parse().ok()?,
                "secs" => run.secs = v.parse().ok()?,
                "cpu" => run.cpu_secs = v.parse().ok()?,
                "rss_kib" => run.rss_kib = v.parse().ok()?,
                _ => {}
            }
        }
        Some(run)
    }
}

// ---------------------------------------------------------------------------------------
// Children: one fill or one drain each
// ---------------------------------------------------------------------------------------

/// One child's work: `queues` is one queue, or several comma-separated for a drain arm
/// with more than one.
async fn child(mode: &str, queues: &str, n: usize) -> Result<Run> {
    match mode {
        "pub-raw" => publish_raw(queues, n).await,
        "pub-aw" => publish_asyncworker(queues, n).await,
        arm => {
            let arm = Arm::parse(arm)?;
            let queues: Vec<&str> = queues.split(',').collect();
            match arm.kind {
                Kind::Raw(mode) => drain_raw(mode, queues[0], n, arm.prefetch).await,
                Kind::Aw { .. } => drain_asyncworker(&arm, &queues, n).await,
                Kind::Py { .. } => Err("the Python arms run worker.py, not --child".into()),
            }
        }
    }
}

fn body(bytes: usize) -> Vec<u8> {
    let mut body = String::from("{\"event\":\"asyncworker-bench\",\"pad\":\"");
    while body.len() + 2 < bytes {
        body.push('x');
    }
    body.push_str("\"}");
    body.into_bytes()
}

/// Raw lapin, publisher confirms, `PUBLISH_WINDOW` publishes in flight: each sends its
/// `basic.publish` and awaits its confirm, driven like the asyncworker arm (`buffer_unordered`),
/// so the two differ only in what sits between the caller and lapin.
async fn publish_raw(queue: &str, n: usize) -> Result<Run> {
    let window: usize = env_or("PUBLISH_WINDOW", 1024usize).max(1);
    let body = body(env_or("BODY_BYTES", 100usize));
    let conn = Connection::connect(&url(), ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    // Already declared by the parent; declared here too (the same arguments: a no-op) so a
    // child run alone, under a profiler, publishes into a real queue.
    declare(&ch, queue).await?;
    let props = BasicProperties::default().with_delivery_mode(2);
    let publish = || async {
        let confirm = ch
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &body,
                props.clone(),
            )
            .await?;
        check_confirm(confirm.await?)
    };
    let start = Mark::now();
    let mut results = futures::stream::iter(0..n)
        .map(|_| publish())
        .buffer_unordered(window);
    while let Some(result) = results.next().await {
        result?;
    }
    let end = Mark::now();
    drop(results);
    conn.close(200, "OK".into()).await?;
    Ok(Run::between(n, start, end))
}

/// asyncworker's `Publisher`, `PUBLISH_WINDOW` confirmed publishes in flight.
async fn publish_asyncworker(queue: &str, n: usize) -> Result<Run> {
    let window: usize = env_or("PUBLISH_WINDOW", 1024usize).max(1);
    let body = bytes::Bytes::from(body(env_or("BODY_BYTES", 100usize)));
    let config = AmqpConfig::from_url(&url())?;
    let publisher = Publisher::connect(&config).await?;
    let message = OutgoingMessage::new("", queue, body);
    let start = Mark::now();
    let mut results = futures::stream::iter(0..n)
        .map(|_| publisher.publish(message.clone()))
        .buffer_unordered(window);
    while let Some(result) = results.next().await {
        result?;
    }
    let end = Mark::now();
    drop(results);
    drop(publisher);
    Ok(Run::between(n, start, end))
}

fn check_confirm(c: Confirmation) -> Result<()> {
    match c {
        Confirmation::Ack(None) => Ok(()),
        other => Err(format!("publish not confirmed: {other:?}").into()),
    }
}

async fn raw_consumer(
    queue: &str,
    prefetch: u16,
) -> Result<(Connection, Channel, asyncworker_amqp::lapin::Consumer)> {
    let conn = Connection::connect(&url(), ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let consumer = ch
        .basic_consume(
            queue.into(),
            "e2e-bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((conn, ch, consumer))
}

async fn drain_raw(mode: &str, queue: &str, n: usize, prefetch: u16) -> Result<Run> {
    let (conn, ch, mut consumer) = raw_consumer(queue, prefetch).await?;
    let mut start = None;
    let mut count = 0usize;
    let mut acks = tokio::task::JoinSet::new();
    while count < n {
        let delivery = consumer.next().await.ok_or("the consumer ended early")??;
        if start.is_none() {
            start = Some(Mark::now());
        }
        count += 1;
        std::hint::black_box(&delivery.data);
        match mode {
            "multiple" => {
                if count.is_multiple_of(MULTIPLE_EVERY) || count == n {
                    ch.basic_ack(delivery.delivery_tag, BasicAckOptions { multiple: true })
                        .await?;
                }
            }
            "awaited" => {
                delivery.ack(BasicAckOptions::default()).await?;
            }
            _ => {
                acks.spawn(async move { delivery.ack(BasicAckOptions::default()).await });
                while let Some(done) = acks.try_join_next() {
                    done??;
                }
            }
        }
    }
    while let Some(done) = acks.join_next().await {
        done??;
    }
    ch.close(200, "OK".into()).await?;
    conn.close(200, "OK".into()).await?;
    let end = Mark::now();
    Ok(Run::between(n, start.ok_or("no delivery")?, end))
}

/// The full stack as a user writes it: an `App` route over an `AmqpSource` (one or more
/// queues), with Bulk → Ack → Timeit → Retry → a no-op handler (or one that sleeps
/// `sleep_ms` per batch).
async fn drain_asyncworker(arm: &Arm, queues: &[&str], n: usize) -> Result<Run> {
    let Kind::Aw {
        bulk,
        full,
        sleep_ms,
        batches,
    } = arm.kind
    else {
        return Err(format!("{} is not an asyncworker arm", arm.name).into());
    };
    let config = AmqpConfig::builder()
        .url(&url())
        .prefetch(arm.prefetch)
        .connection_name("asyncworker e2e bench")
        .build()?;
    let source = AmqpSource::builder(config, queues.iter().copied()).build()?;
    let mut app = App::new();
    app.with_settings(Settings::from_lookup(|_| None)?)
        .handle_signals(false);
    let stop = app.shutdown_handle();
    let first: Arc<OnceLock<Mark>> = Arc::default();
    let seen = Arc::new(AtomicUsize::new(0));
    let (first2, seen2) = (first.clone(), seen.clone());
    app.route_stack("bench", source, move |cx| {
        let handler = service_fn(move |batch: Vec<AmqpMessage>| async move {
            std::hint::black_box(batch.len());
            if sleep_ms > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(sleep_ms)).await;
            }
            Ok::<(), BoxError>(())
        });
        let mut bulk_layer = cx.bulk_layer::<AmqpMessage>(bulk)?;
        if let Some(c) = batches {
            bulk_layer = bulk_layer.max_concurrent_batches(c)?;
        }
        Ok(ServiceBuilder::new()
            // Not part of the stack under test: notes the first delivery, and starts the
            // graceful shutdown once the last one is in (the partial batch then flushes).
            .map_request(move |m: AmqpMessage| {
                let count = seen2.fetch_add(1, Ordering::Relaxed) + 1;
                if count == 1 {
                    let _ = first2.set(Mark::now());
                }
                if count == n {
                    stop.trigger();
                }
                m
            })
            .layer(bulk_layer)
            .layer(cx.ack_layer())
            .option_layer(full.then(|| TimeitLayer::new("e2e_bench")))
            .option_layer(full.then(|| {
                RetryLayer::new(RetryConfig::default()).with_shutdown(cx.shutdown().clone())
            }))
            .service(handler))
    });
    app.run().await?;
    let end = Mark::now();
    let seen = seen.load(Ordering::Relaxed);
    if seen != n {
        return Err(format!("the route saw {seen} messages, expected {n}").into());
    }
    Ok(Run::between(n, *first.get().ok_or("no delivery")?, end))
}

// ---------------------------------------------------------------------------------------
// The parent: queues, children, rounds, table, JSON
// ---------------------------------------------------------------------------------------

fn unique_queue(arm: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "asyncworker-bench-e2e-{}-{nanos:09}-{arm}",
        std::process::id()
    )
}

async fn declare(ch: &Channel, queue: &str) -> Result<u32> {
    let mut args = FieldTable::default();
    // A safety net: a queue left behind by a killed run expires after 30 minutes unused.
    args.insert("x-expires".into(), AMQPValue::LongUInt(30 * 60 * 1000));
    let q = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await?;
    Ok(q.message_count())
}

/// The Python worker the `py-…` arms run.
fn python_worker() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../benches/python/worker.py")
}

/// Run one child (`mode` on `queues`, comma-separated): this binary re-executed with
/// `--child`, or the Python worker for a `py-…` arm. The child's CPU and RSS are its own; the
/// broker's CPU time is taken around it.
fn run_child(mode: &str, queues: &str, n: usize) -> Result<Run> {
    let mut command = match Arm::parse(mode).map(|a| a.kind) {
        Ok(Kind::Py { bulk }) => {
            let python = std::env::var("PYTHON").map_err(|_| "a py- arm needs PYTHON")?;
            let mut c = Command::new(python);
            c.arg(python_worker()).args([
                url(),
                queues.to_owned(),
                n.to_string(),
                bulk.to_string(),
                Arm::parse(mode)?.prefetch.to_string(),
            ]);
            c
        }
        _ => {
            let mut c = Command::new(std::env::current_exe()?);
            c.args(["--child", mode, queues, &n.to_string()]);
            c
        }
    };
    let broker = broker_pid();
    let broker_before = broker.as_deref().and_then(cpu_secs);
    let out = command
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()?;
    let broker_after = broker.as_deref().and_then(cpu_secs);
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("child {mode} failed ({}): {stdout}", out.status).into());
    }
    let mut run = stdout
        .lines()
        .rev()
        .find_map(Run::parse)
        .ok_or_else(|| format!("child {mode} printed no result: {stdout}"))?;
    if let (Some(b), Some(a)) = (broker_before, broker_after) {
        run.broker_cpu_secs = a - b;
    }
    Ok(run)
}

/// The median of some figures (NaN-free ones; NaN when there are none).
fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.into_iter().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// An arm's runs, one per round (in round order).
struct Series {
    name: String,
    group: &'static str,
    arm: Option<Arm>,
    runs: Vec<Run>,
}

/// (throughput, CPU per message, RSS) of `a` over `b`.
fn ratios(a: &Run, b: &Run) -> [f64; 3] {
    [
        a.rate() / b.rate(),
        a.cpu_us_per_msg() / b.cpu_us_per_msg(),
        a.rss_mib() / b.rss_mib(),
    ]
}

/// The median over the rounds of the pairwise ratios of `a` over `b` (same round each).
fn paired(a: &Series, b: &Series) -> [f64; 3] {
    let per_round: Vec<[f64; 3]> = a
        .runs
        .iter()
        .zip(&b.runs)
        .map(|(x, y)| ratios(x, y))
        .collect();
    [0, 1, 2].map(|i| median(per_round.iter().map(|r| r[i])))
}

/// Per-metric medians of a series.
struct Medians {
    rate: f64,
    secs: f64,
    cpu_secs: f64,
    cpu_us: f64,
    rss_mib: f64,
    broker_secs: f64,
    broker_us: f64,
}

impl Series {
    fn medians(&self) -> Medians {
        let m = |f: fn(&Run) -> f64| median(self.runs.iter().map(f));
        Medians {
            rate: m(Run::rate),
            secs: m(|r| r.secs),
            cpu_secs: m(|r| r.cpu_secs),
            cpu_us: m(Run::cpu_us_per_msg),
            rss_mib: m(Run::rss_mib),
            broker_secs: m(|r| r.broker_cpu_secs),
            broker_us: m(|r| r.broker_cpu_secs * 1e6 / r.messages as f64),
        }
    }
}

fn rotated<T: Clone>(items: &[T], by: usize) -> Vec<T> {
    let mut v = items.to_vec();
    if !v.is_empty() {
        let k = by % v.len();
        v.rotate_left(k);
    }
    v
}

async fn parent() -> Result<()> {
    let n: usize = env_or("MESSAGES", 200_000usize);
    let scale_n: usize = env_or("SCALE_MESSAGES", 25_600usize);
    let rounds: usize = env_or("ROUNDS", 3usize).max(1);
    let prefetch: u16 = env_or("PREFETCH", 256u16);
    let body_bytes: usize = env_or("BODY_BYTES", 100usize);
    let python = std::env::var("PYTHON").ok().filter(|p| !p.is_empty());
    let names: Vec<String> = match std::env::var("ARMS") {
        Ok(list) if !list.trim().is_empty() => list
            .split(',')
            .map(|a| a.trim().to_owned())
            .filter(|a| !a.is_empty())
            .collect(),
        _ => {
            let mut names: Vec<String> = MAIN_ARMS.iter().map(|a| (*a).to_owned()).collect();
            if python.is_some() {
                names.extend(PYTHON_ARMS.iter().map(|(py, _)| (*py).to_owned()));
            }
            if env_or("SCALING", 1u8) != 0 {
                names.extend(SCALING_ARMS.iter().map(|a| (*a).to_owned()));
            }
            names
        }
    };
    // The publish arms run every round; naming them in `ARMS` (alone: no drain) is allowed.
    let arms: Vec<Arm> = names
        .iter()
        .filter(|a| !matches!(a.as_str(), "pub-raw" | "pub-aw"))
        .map(|a| Arm::parse(a))
        .collect::<Result<_>>()?;
    if python.is_none() && arms.iter().any(|a| matches!(a.kind, Kind::Py { .. })) {
        return Err("the py- arms need PYTHON (scripts/bench.sh sets it)".into());
    }
    let url = url();
    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .map_err(|e| format!("cannot reach the broker at AMQP_URL ({e}); start one with scripts/rabbitmq.sh start"))?;
    let ch = conn.create_channel().await?;
    let load_before = load_average();
    println!(
        "e2e: {n} persistent messages of {body_bytes} bytes per main arm ({scale_n} per \
         scaling arm), prefetch {prefetch}, {rounds} round(s), {} arm(s); load average \
         {load_before}",
        arms.len()
    );

    let mut drains: Vec<Series> = arms
        .iter()
        .map(|a| Series {
            name: a.name.clone(),
            group: match a.kind {
                Kind::Py { .. } => "python",
                _ if a.scaling => "scaling",
                _ => "drain",
            },
            arm: Some(a.clone()),
            runs: vec![],
        })
        .collect();
    let mut publishes: Vec<Series> = ["pub-raw", "pub-aw"]
        .map(|name| Series {
            name: name.to_owned(),
            group: "publish",
            arm: None,
            runs: vec![],
        })
        .into();
    let mut fills = Series {
        name: "fills (pub-raw)".to_owned(),
        group: "fill",
        arm: None,
        runs: vec![],
    };
    for round in 0..rounds {
        // Publishing: both publishers into one queue, purged after each, in alternating order.
        let queue = unique_queue("publish");
        declare(&ch, &queue).await?;
        let order = rotated(&[0usize, 1], round);
        let outcome = async {
            let mut results = [None, None];
            for &i in &order {
                let mode = publishes[i].name.clone();
                let run = run_child(&mode, &queue, n)?;
                let ready = declare(&ch, &queue).await?;
                if ready as usize != n {
                    return Err(
                        format!("{queue}: {ready} messages after {mode}, expected {n}").into(),
                    );
                }
                ch.queue_purge(queue.as_str().into(), QueuePurgeOptions::default())
                    .await?;
                eprintln!(
                    "round {} {mode:>22}: {:>8.0} msgs/s ({:.2} CPU µs/msg); load {}",
                    round + 1,
                    run.rate(),
                    run.cpu_us_per_msg(),
                    load_average()
                );
                results[i] = Some(run);
            }
            Ok::<_, BoxError>(results)
        }
        .await;
        ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await?;
        for (series, run) in publishes.iter_mut().zip(outcome?) {
            series.runs.extend(run);
        }
        // Draining: every arm once, the order rotated by one each round.
        let mut results: Vec<Option<Run>> = vec![None; drains.len()];
        for i in rotated(&(0..drains.len()).collect::<Vec<_>>(), round) {
            let arm = drains[i].arm.clone().ok_or("a drain without an arm")?;
            let total = if arm.scaling { scale_n } else { n };
            let queues: Vec<String> = (0..arm.queues)
                .map(|k| unique_queue(&format!("{}-{k}", arm.name)))
                .collect();
            for q in &queues {
                declare(&ch, q).await?;
            }
            let outcome = async {
                let mut filled = 0;
                for (k, q) in queues.iter().enumerate() {
                    // The fill split evenly, the remainder in the first queue.
                    let share = total / arm.queues + usize::from(k == 0) * (total % arm.queues);
                    let fill = run_child("pub-raw", q, share)?;
                    let ready = declare(&ch, q).await?;
                    if ready as usize != share {
                        return Err(format!(
                            "{q}: {ready} messages after the fill, expected {share}"
                        )
                        .into());
                    }
                    filled += share;
                    fills.runs.push(fill);
                }
                let drain = run_child(&arm.name, &queues.join(","), filled)?;
                for q in &queues {
                    let left = declare(&ch, q).await?;
                    if left != 0 {
                        return Err(format!("{q}: {left} messages left after {}", arm.name).into());
                    }
                }
                Ok::<_, BoxError>(drain)
            }
            .await;
            for q in &queues {
                ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                    .await?;
            }
            let drain = outcome?;
            eprintln!(
                "round {} {:>22}: {:>8.0} msgs/s drain ({:.2} CPU µs/msg, {:.1} MiB, \
                 broker {:.2} s); load {}",
                round + 1,
                arm.name,
                drain.rate(),
                drain.cpu_us_per_msg(),
                drain.rss_mib(),
                drain.broker_cpu_secs,
                load_average(),
            );
            results[i] = Some(drain);
        }
        for (series, run) in drains.iter_mut().zip(results) {
            series.runs.extend(run);
        }
    }
    let load_after = load_average();
    conn.close(200, "OK".into()).await?;

    let report = Report {
        drains: &drains,
        publishes: &publishes,
        fills: &fills,
    };
    println!("{}", report.table());
    println!("load average: before {load_before}, after {load_after}");
    let json = serde_json::json!({
        "bench": "e2e",
        "messages": n,
        "scale_messages": scale_n,
        "rounds": rounds,
        "prefetch": prefetch,
        "body_bytes": body_bytes,
        "publish_window": env_or("PUBLISH_WINDOW", 1024usize),
        "python": python,
        "broker_cpu_measured": broker_pid().is_some(),
        "load_before": load_before,
        "load_after": load_after,
        "arms": report.json(),
    });
    println!("BENCH_JSON {json}");
    Ok(())
}

/// Targets of the main asyncworker arms: throughput at least this share of the baseline.
fn target(arm: &str) -> Option<f64> {
    match arm {
        "aw-bulk256" => Some(0.95),
        "aw-bulk1" => Some(0.9),
        _ => None,
    }
}

struct Report<'a> {
    drains: &'a [Series],
    publishes: &'a [Series],
    fills: &'a Series,
}

impl Report<'_> {
    fn find(&self, name: &str) -> Option<&Series> {
        self.drains
            .iter()
            .chain(self.publishes)
            .find(|s| s.name == name)
    }

    /// What a series is compared with, pair by pair within each round.
    fn reference(&self, s: &Series) -> Option<&Series> {
        let name = match s.group {
            "publish" => "pub-raw",
            "python" => PYTHON_ARMS
                .iter()
                .find(|(py, _)| *py == s.name)
                .map(|(_, aw)| *aw)?,
            _ => "raw-multiple",
        };
        self.find(name)
    }

    fn verdict(&self, s: &Series, r: [f64; 3]) -> String {
        if self.reference(s).is_some_and(|b| b.name == s.name) {
            return "baseline".to_owned();
        }
        let floor = match s.name.as_str() {
            "pub-aw" => Some(0.8),
            name => target(name),
        };
        let Some(t) = floor else {
            return String::new();
        };
        let mut misses = Vec::new();
        if r[0].is_nan() || r[0] < t {
            misses.push(format!("thru<{t}"));
        }
        if s.group == "drain" {
            if r[1].is_nan() || r[1] > 1.3 {
                misses.push("CPU>1.3".to_owned());
            }
            if r[2].is_nan() || r[2] > 1.5 {
                misses.push("RSS>1.5".to_owned());
            }
        }
        if misses.is_empty() {
            "ok".to_owned()
        } else {
            format!("MISS {}", misses.join(" "))
        }
    }

    fn table(&self) -> String {
        let mut s = String::new();
        let groups: [(&str, &str); 5] = [
            ("drain", "drain (× raw-multiple)"),
            ("python", "Python original (× aw-bulkN)"),
            ("scaling", "scaling (× raw-multiple)"),
            ("publish", "publish (× pub-raw)"),
            ("fill", "fills"),
        ];
        for (group, title) in groups {
            let series: Vec<&Series> = if group == "fill" {
                vec![self.fills]
            } else {
                self.drains
                    .iter()
                    .chain(self.publishes)
                    .filter(|x| x.group == group)
                    .collect()
            };
            if series.iter().all(|x| x.runs.is_empty()) {
                continue;
            }
            let _ = writeln!(
                s,
                "\n{:<24} {:>9} {:>9} {:>7} {:>8} {:>8} {:>9} {:>7} {:>7} {:>6}  verdict",
                title,
                "msgs/s",
                "bound/s",
                "wall s",
                "CPU µs/m",
                "RSS MiB",
                "broker µs",
                "×thru",
                "×CPU/m",
                "×RSS"
            );
            for x in series {
                let m = x.medians();
                let r = self.reference(x).map_or([f64::NAN; 3], |b| paired(x, b));
                let bound = x
                    .arm
                    .as_ref()
                    .and_then(Arm::expected_bound)
                    .map_or_else(|| "-".to_owned(), |b| format!("{b:.0}"));
                let _ = writeln!(
                    s,
                    "{:<24} {:>9.0} {:>9} {:>7.2} {:>8.2} {:>8.1} {:>9.2} {:>7.3} {:>7.3} {:>6.3}  {}",
                    x.name,
                    m.rate,
                    bound,
                    m.secs,
                    m.cpu_us,
                    m.rss_mib,
                    m.broker_us,
                    r[0],
                    r[1],
                    r[2],
                    self.verdict(x, r),
                );
            }
        }
        s
    }

    fn json(&self) -> Vec<serde_json::Value> {
        let finite = |v: f64| v.is_finite().then_some(v);
        self.drains
            .iter()
            .chain(self.publishes)
            .chain([self.fills])
            .map(|x| {
                let m = x.medians();
                let reference = self.reference(x).filter(|_| x.group != "fill");
                let r = reference.map_or([f64::NAN; 3], |b| paired(x, b));
                let arm = x.arm.as_ref();
                serde_json::json!({
                    "name": x.name,
                    "group": x.group,
                    "prefetch": arm.map(|a| a.prefetch),
                    "queues": arm.map(|a| a.queues),
                    "bulk": arm.and_then(|a| match a.kind {
                        Kind::Aw { bulk, .. } | Kind::Py { bulk } => Some(bulk),
                        Kind::Raw(_) => None,
                    }),
                    "expected_bound_per_sec": arm.and_then(Arm::expected_bound),
                    "median": {
                        "msgs_per_sec": finite(m.rate),
                        "wall_secs": finite(m.secs),
                        "cpu_secs": finite(m.cpu_secs),
                        "cpu_us_per_msg": finite(m.cpu_us),
                        "peak_rss_mib": finite(m.rss_mib),
                        "broker_cpu_secs": finite(m.broker_secs),
                        "broker_cpu_us_per_msg": finite(m.broker_us),
                    },
                    "vs": reference.map(|b| b.name.clone()),
                    "ratio_median": {
                        "throughput": finite(r[0]),
                        "cpu_per_msg": finite(r[1]),
                        "peak_rss": finite(r[2]),
                    },
                    "verdict": self.verdict(x, r),
                    "runs": x.runs.iter().map(|r| serde_json::json!({
                        "messages": r.messages,
                        "secs": finite(r.secs),
                        "cpu_secs": finite(r.cpu_secs),
                        "rss_kib": r.rss_kib,
                        "broker_cpu_secs": finite(r.broker_cpu_secs),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect()
    }
}
