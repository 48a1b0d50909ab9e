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
//! Drain arms, all at prefetch `PREFETCH`:
//!
//! - `raw-multiple`: raw lapin, `basic.ack` with `multiple` every 128 deliveries — the
//!   baseline every ratio is taken against;
//! - `raw-awaited`: raw lapin, each delivery acked with an awaited ack;
//! - `raw-spawned`: raw lapin, each ack spawned as a task (not awaited in the loop);
//! - `aw-bulk1`, `aw-bulk256`: an asyncworker `App` route over an `AmqpSource`:
//!   Bulk → Ack → Timeit → Retry → a no-op handler, bulk size 1 and 256.
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
//! Environment (all optional):
//!
//! | variable | default | |
//! |---|---|---|
//! | `MESSAGES` | `200000` | messages per arm |
//! | `AMQP_URL` | `amqp://guest:guest@127.0.0.1:5672/%2f` | the broker |
//! | `PREFETCH` | `256` | `basic.qos` of every consumer |
//! | `BODY_BYTES` | `100` | message size |
//! | `PUBLISH_WINDOW` | `1024` | unconfirmed publishes in flight while filling |
//! | `ARMS` | all | comma-separated drain arms to run, e.g. `raw-multiple,aw-bulk256`; also `aw-bulk1-bare` (Bulk → Ack only) |
//! | `ROUNDS` | `1` | run every arm this many times (interleaved); the median is reported |
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

/// Extra arms, only run when `ARMS` names them: `aw-bulk1-bare` is Bulk → Ack → handler
/// (no Timeit, no Retry), to see what those two cost.
const EXTRA_ARMS: [&str; 1] = ["aw-bulk1-bare"];

const DRAIN_ARMS: [&str; 5] = [
    "raw-multiple",
    "raw-awaited",
    "raw-spawned",
    "aw-bulk1",
    "aw-bulk256",
];

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

/// The broker's Erlang VM, to report its CPU time next to the client's.
fn broker_pid() -> Option<String> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let name = e.file_name().into_string().ok()?;
        name.bytes().all(|b| b.is_ascii_digit()).then_some(())?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        (comm.trim() == "beam.smp").then_some(())?;
        // The node runs `-s rabbit`; `rabbitmqctl` calls start short-lived VMs of their own.
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        args.windows(2)
            .any(|w| w[0] == b"-s" && w[1] == b"rabbit")
            .then_some(name)
    })
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

async fn child(mode: &str, queue: &str, n: usize) -> Result<Run> {
    match mode {
        "pub-raw" => publish_raw(queue, n).await,
        "pub-aw" => publish_asyncworker(queue, n).await,
        "raw-multiple" | "raw-awaited" | "raw-spawned" => drain_raw(mode, queue, n).await,
        "aw-bulk1" => drain_asyncworker(queue, n, 1, true).await,
        "aw-bulk256" => drain_asyncworker(queue, n, 256, true).await,
        "aw-bulk1-bare" => drain_asyncworker(queue, n, 1, false).await,
        other => Err(format!("unknown mode {other:?}").into()),
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
) -> Result<(Connection, Channel, asyncworker_amqp::lapin::Consumer)> {
    let prefetch: u16 = env_or("PREFETCH", 256u16);
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

async fn drain_raw(mode: &str, queue: &str, n: usize) -> Result<Run> {
    let (conn, ch, mut consumer) = raw_consumer(queue).await?;
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
            "raw-multiple" => {
                if count.is_multiple_of(MULTIPLE_EVERY) || count == n {
                    ch.basic_ack(delivery.delivery_tag, BasicAckOptions { multiple: true })
                        .await?;
                }
            }
            "raw-awaited" => {
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

/// The full stack as a user writes it: an `App` route over an `AmqpSource`, with
/// Bulk → Ack → Timeit → Retry → a no-op handler.
async fn drain_asyncworker(queue: &str, n: usize, bulk: usize, full: bool) -> Result<Run> {
    let prefetch: u16 = env_or("PREFETCH", 256u16);
    let config = AmqpConfig::builder()
        .url(&url())
        .prefetch(prefetch)
        .connection_name("asyncworker e2e bench")
        .build()?;
    let source = AmqpSource::builder(config, [queue]).build()?;
    let mut app = App::new();
    app.with_settings(Settings::from_lookup(|_| None)?)
        .handle_signals(false);
    let stop = app.shutdown_handle();
    let first: Arc<OnceLock<Mark>> = Arc::default();
    let seen = Arc::new(AtomicUsize::new(0));
    let (first2, seen2) = (first.clone(), seen.clone());
    app.route_stack("bench", source, move |cx| {
        let handler = service_fn(|batch: Vec<AmqpMessage>| async move {
            std::hint::black_box(batch.len());
            Ok::<(), BoxError>(())
        });
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
            .layer(cx.bulk_layer::<AmqpMessage>(bulk)?)
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
// The parent: queues, children, table
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

/// Run `--child mode queue n`; the child's CPU and RSS are its own, the broker's CPU time is
/// taken around it.
fn run_child(mode: &str, queue: &str, n: usize) -> Result<Run> {
    let broker = broker_pid();
    let broker_before = broker.as_deref().and_then(cpu_secs);
    let out = Command::new(std::env::current_exe()?)
        .args(["--child", mode, queue, &n.to_string()])
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

fn median(mut runs: Vec<Run>) -> Run {
    runs.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    runs[runs.len() / 2]
}

async fn parent() -> Result<()> {
    let n: usize = env_or("MESSAGES", 200_000usize);
    let rounds: usize = env_or("ROUNDS", 1usize).max(1);
    let prefetch: u16 = env_or("PREFETCH", 256u16);
    let arms: Vec<String> = match std::env::var("ARMS") {
        Ok(list) if !list.trim().is_empty() => list
            .split(',')
            .map(|a| a.trim().to_owned())
            .filter(|a| !a.is_empty())
            .collect(),
        _ => DRAIN_ARMS.iter().map(|a| (*a).to_owned()).collect(),
    };
    for arm in &arms {
        if !DRAIN_ARMS.contains(&arm.as_str()) && !EXTRA_ARMS.contains(&arm.as_str()) {
            return Err(format!("unknown arm {arm:?}; arms: {}", DRAIN_ARMS.join(", ")).into());
        }
    }
    let url = url();
    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .map_err(|e| format!("cannot reach the broker at AMQP_URL ({e}); start one with scripts/rabbitmq.sh start"))?;
    let ch = conn.create_channel().await?;
    let load_before = load_average();
    println!(
        "e2e: {n} persistent messages of {} bytes per arm, prefetch {prefetch}, {rounds} round(s); \
         load average {load_before}",
        env_or("BODY_BYTES", 100usize)
    );

    let mut drains: Vec<(String, Vec<Run>)> = arms.iter().map(|a| (a.clone(), vec![])).collect();
    let mut fills = Vec::new();
    let mut publishes: [(&str, Vec<Run>); 2] = [("pub-raw", vec![]), ("pub-aw", vec![])];
    for round in 1..=rounds {
        // Publishing: both publishers into one queue, purged after each.
        let queue = unique_queue("publish");
        declare(&ch, &queue).await?;
        let outcome = async {
            for (mode, runs) in &mut publishes {
                let run = run_child(mode, &queue, n)?;
                let ready = declare(&ch, &queue).await?;
                if ready as usize != n {
                    return Err(
                        format!("{queue}: {ready} messages after {mode}, expected {n}").into(),
                    );
                }
                ch.queue_purge(queue.as_str().into(), QueuePurgeOptions::default())
                    .await?;
                eprintln!(
                    "round {round} {mode:>12}: {:>8.0} msgs/s ({:.2} CPU µs/msg); load {}",
                    run.rate(),
                    run.cpu_us_per_msg(),
                    load_average()
                );
                runs.push(run);
            }
            Ok::<_, BoxError>(())
        }
        .await;
        ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await?;
        outcome?;
        for (arm, runs) in &mut drains {
            let queue = unique_queue(arm);
            declare(&ch, &queue).await?;
            let outcome = async {
                let fill = run_child("pub-raw", &queue, n)?;
                let ready = declare(&ch, &queue).await?;
                if ready as usize != n {
                    return Err(
                        format!("{queue}: {ready} messages after the fill, expected {n}").into(),
                    );
                }
                let drain = run_child(arm, &queue, n)?;
                let left = declare(&ch, &queue).await?;
                if left != 0 {
                    return Err(format!("{queue}: {left} messages left after {arm}").into());
                }
                Ok::<_, BoxError>((fill, drain))
            }
            .await;
            ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await?;
            let (fill, drain) = outcome?;
            eprintln!(
                "round {round} {arm:>12}: {:>8.0} msgs/s drain ({:.2} CPU µs/msg, {:.1} MiB, \
                 broker {:.2} s), {:>8.0} msgs/s fill; load {}",
                drain.rate(),
                drain.cpu_us_per_msg(),
                drain.rss_mib(),
                drain.broker_cpu_secs,
                fill.rate(),
                load_average(),
            );
            fills.push(fill);
            runs.push(drain);
        }
    }
    let load_after = load_average();
    conn.close(200, "OK".into()).await?;

    let drains: Vec<(String, Run)> = drains
        .into_iter()
        .map(|(arm, runs)| (arm, median(runs)))
        .collect();
    let base = drains
        .iter()
        .find(|(arm, _)| arm == "raw-multiple")
        .map(|(_, r)| *r);
    let [(_, raw_pub), (_, aw_pub)] = publishes;
    let publish = [
        ("raw-confirms", median(raw_pub)),
        ("asyncworker", median(aw_pub)),
        ("raw (fills)", median(fills)),
    ];
    println!("{}", table(&drains, base, &publish));
    println!("load average: before {load_before}, after {load_after}");
    Ok(())
}

fn target(arm: &str) -> Option<f64> {
    match arm {
        "aw-bulk256" => Some(0.95),
        "aw-bulk1" => Some(0.9),
        _ => None,
    }
}

/// The header line of a table of runs, `first` naming its first column.
fn header(s: &mut String, first: &str) {
    let _ = writeln!(
        s,
        "\n{:<14} {:>9} {:>7} {:>7} {:>8} {:>8} {:>8} {:>7} {:>8} {:>6}  verdict",
        first,
        "msgs/s",
        "wall s",
        "CPU s",
        "CPU µs/m",
        "RSS MiB",
        "broker s",
        "×thru",
        "×CPU/m",
        "×RSS"
    );
}

/// One run's line: its figures, its (throughput, CPU per message, RSS) ratios to the
/// baseline, and the verdict.
fn row(s: &mut String, name: &str, r: &Run, (thru, cpu, rss): (f64, f64, f64), verdict: &str) {
    let _ = writeln!(
        s,
        "{:<14} {:>9.0} {:>7.2} {:>7.2} {:>8.2} {:>8.1} {:>8.2} {:>7.3} {:>8.3} {:>6.3}  {verdict}",
        name,
        r.rate(),
        r.secs,
        r.cpu_secs,
        r.cpu_us_per_msg(),
        r.rss_mib(),
        r.broker_cpu_secs,
        thru,
        cpu,
        rss,
    );
}

fn table(drains: &[(String, Run)], base: Option<Run>, publish: &[(&str, Run)]) -> String {
    let mut s = String::new();
    header(&mut s, "drain");
    for (arm, r) in drains {
        let (thru, cpu, rss) = match base {
            Some(b) => (
                r.rate() / b.rate(),
                r.cpu_us_per_msg() / b.cpu_us_per_msg(),
                r.rss_mib() / b.rss_mib(),
            ),
            None => (f64::NAN, f64::NAN, f64::NAN),
        };
        let verdict = match target(arm) {
            Some(t) => {
                let mut misses = Vec::new();
                if thru.is_nan() || thru < t {
                    misses.push(format!("thru<{t}"));
                }
                if cpu.is_nan() || cpu > 1.3 {
                    misses.push("CPU>1.3".to_owned());
                }
                if rss.is_nan() || rss > 1.5 {
                    misses.push("RSS>1.5".to_owned());
                }
                if misses.is_empty() {
                    "ok".to_owned()
                } else {
                    format!("MISS {}", misses.join(" "))
                }
            }
            None if arm == "raw-multiple" => "baseline".to_owned(),
            None => String::new(),
        };
        row(&mut s, arm, r, (thru, cpu, rss), &verdict);
    }
    header(&mut s, "publish");
    let raw = publish[0].1;
    for (name, r) in publish {
        let thru = r.rate() / raw.rate();
        let verdict = match *name {
            "raw-confirms" => "baseline".to_owned(),
            "asyncworker" if thru >= 0.8 => "ok".to_owned(),
            "asyncworker" => "MISS thru<0.8".to_owned(),
            _ => String::new(),
        };
        let ratios = (
            thru,
            r.cpu_us_per_msg() / raw.cpu_us_per_msg(),
            r.rss_mib() / raw.rss_mib(),
        );
        row(&mut s, name, r, ratios, &verdict);
    }
    s
}
