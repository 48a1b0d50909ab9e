//! Soak: many messages through the full stack (an `App` route over an `AmqpSource`:
//! Bulk → Ack → Retry → a handler that decodes each body) against a real RabbitMQ, watching
//! this process's memory.
//!
//! Run with: `cargo bench -p asyncworker-amqp --bench soak` (1 000 000 messages), or at any
//! size: `MESSAGES=100000 cargo bench -p asyncworker-amqp --bench soak`.
//!
//! Needs a broker (`scripts/rabbitmq.sh start`). A publisher task in the same process feeds a
//! unique, transient, auto-deleted queue with small non-persistent messages, staying at most
//! `BACKLOG` messages ahead of the handler (so neither the broker nor the client buffers the
//! whole run), while the route consumes at prefetch `PREFETCH`. The RSS (`VmRSS`) is printed
//! at 10 %, 50 % and 100 % of the messages handled, and the peak (`VmHWM`) after the warm-up
//! (10 %) and at the end: the target is a peak under 64 MiB, flat after the warm-up. The
//! process exits non-zero when a message is missing or the queue is not drained.
//!
//! | variable | default | |
//! |---|---|---|
//! | `MESSAGES` | `1000000` | messages through the route |
//! | `PREFETCH` | `256` | `basic.qos` of the consumer |
//! | `BULK` | `256` | the route's bulk size |
//! | `BACKLOG` | `20000` | how far the publisher may run ahead of the handler |
//! | `AMQP_URL` | `amqp://guest:guest@127.0.0.1:5672/%2f` | the broker |

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use asyncworker_amqp::lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use asyncworker_amqp::lapin::types::FieldTable;
use asyncworker_amqp::lapin::{BasicProperties, Connection, ConnectionProperties};
use asyncworker_amqp::{AmqpConfig, AmqpMessage, AmqpSource};
use asyncworker_core::retry::{RetryConfig, RetryLayer};
use asyncworker_core::{App, BoxError, Settings};
use tower::{ServiceBuilder, service_fn};

type Result<T, E = BoxError> = std::result::Result<T, E>;

const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const TARGET_MIB: u64 = 64;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not valid")),
        _ => default,
    }
}

/// (`VmRSS`, `VmHWM`) of this process, in KiB.
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[derive(serde::Deserialize)]
struct Body {
    n: u64,
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; nothing else is understood.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(soak())
}

async fn soak() -> Result<()> {
    let n: usize = env_or("MESSAGES", 1_000_000usize);
    let prefetch: u16 = env_or("PREFETCH", 256u16);
    let bulk: usize = env_or("BULK", 256usize);
    let backlog: usize = env_or("BACKLOG", 20_000usize);
    let url = std::env::var("AMQP_URL")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| DEFAULT_URL.to_owned());
    let queue = format!(
        "asyncworker-soak-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos()
    );

    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .map_err(|e| {
            format!(
                "cannot reach the broker at {url} ({e}); start it with scripts/rabbitmq.sh start"
            )
        })?;
    let ch = conn.create_channel().await?;
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await?;
    println!("soak: {n} messages, prefetch {prefetch}, bulk {bulk}, queue {queue}");
    let (start_rss, _) = rss_kib();

    let handled = Arc::new(AtomicUsize::new(0));
    let bad = Arc::new(AtomicUsize::new(0));

    // The publisher: confirmed, at most `backlog` ahead of the handler.
    let publisher = {
        let (ch, queue, handled) = (conn.create_channel().await?, queue.clone(), handled.clone());
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        tokio::spawn(async move {
            let mut window = std::collections::VecDeque::new();
            for i in 0..n {
                while i >= handled.load(Ordering::Relaxed) + backlog {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                let body = format!("{{\"n\":{i}}}");
                let confirm = ch
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        body.as_bytes(),
                        BasicProperties::default(),
                    )
                    .await?;
                window.push_back(confirm);
                if window.len() >= 1024 {
                    window.pop_front().unwrap().await?;
                }
            }
            for confirm in window {
                confirm.await?;
            }
            Ok::<_, BoxError>(())
        })
    };

    let config = AmqpConfig::builder()
        .url(&url)
        .prefetch(prefetch)
        .connection_name("asyncworker soak")
        .build()?;
    let source = AmqpSource::builder(config, [queue.as_str()]).build()?;
    let mut app = App::new();
    app.with_settings(Settings::from_lookup(|_| None)?)
        .handle_signals(false);
    let stop = app.shutdown_handle();
    let (seen, wrong) = (handled.clone(), bad.clone());
    let started = Instant::now();
    let samples = Arc::new(std::sync::Mutex::new(Vec::new()));
    let marks = Arc::clone(&samples);
    app.route_stack("soak", source, move |cx| {
        let (seen, wrong, marks) = (seen.clone(), wrong.clone(), marks.clone());
        let (entered, stop) = (Arc::new(AtomicUsize::new(0)), stop.clone());
        let handler = service_fn(move |batch: Vec<AmqpMessage>| {
            let (seen, wrong, marks) = (seen.clone(), wrong.clone(), marks.clone());
            async move {
                for msg in &batch {
                    match msg.json_or_reject::<Body>() {
                        Ok(body) => {
                            std::hint::black_box(body.n);
                        }
                        Err(_) => {
                            wrong.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                let before = seen.fetch_add(batch.len(), Ordering::Relaxed);
                let after = before + batch.len();
                for pct in [10, 50, 100] {
                    let at = (n * pct).div_ceil(100);
                    if before < at && after >= at {
                        let (rss, hwm) = rss_kib();
                        marks.lock().unwrap().push((pct, after, rss, hwm));
                    }
                }
                Ok::<(), BoxError>(())
            }
        });
        Ok(ServiceBuilder::new()
            // Not part of the stack under test: once the last message is in, start the
            // graceful shutdown, which flushes the last partial batch and drains.
            .map_request(move |m: AmqpMessage| {
                if entered.fetch_add(1, Ordering::Relaxed) + 1 == n {
                    stop.trigger();
                }
                m
            })
            .layer(cx.bulk_layer::<AmqpMessage>(bulk)?)
            .layer(cx.ack_layer())
            .layer(RetryLayer::new(RetryConfig::default()).with_shutdown(cx.shutdown().clone()))
            .service(handler))
    });
    app.run().await?;
    let secs = started.elapsed().as_secs_f64();
    publisher.await??;
    let (end_rss, end_hwm) = rss_kib();

    let left = ch
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default().passive(),
            FieldTable::default(),
        )
        .await?
        .message_count();
    ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    let _ = conn.close(200, "soak done".into()).await;

    let handled = handled.load(Ordering::Relaxed);
    println!(
        "handled {handled} in {secs:.1} s ({:.0} msgs/s); RSS at start {:.1} MiB",
        handled as f64 / secs,
        mib(start_rss)
    );
    let samples = samples.lock().unwrap().clone();
    for (pct, count, rss, hwm) in &samples {
        println!(
            "  at {pct:>3}% ({count:>8} handled): RSS {:>6.1} MiB, peak so far {:>6.1} MiB",
            mib(*rss),
            mib(*hwm)
        );
    }
    let warm = samples.iter().find(|s| s.0 == 10).map_or(0, |s| s.3);
    println!(
        "peak RSS (VmHWM): {:.1} MiB after warm-up (10%), {:.1} MiB at the end \
         (grew {:.1} MiB after warm-up); RSS at the end {:.1} MiB; target < {TARGET_MIB} MiB: {}",
        mib(warm),
        mib(end_hwm),
        mib(end_hwm.saturating_sub(warm)),
        mib(end_rss),
        if end_hwm < TARGET_MIB * 1024 {
            "met"
        } else {
            "NOT met"
        }
    );
    let bad = bad.load(Ordering::Relaxed);
    if handled != n || bad != 0 || left != 0 {
        return Err(format!(
            "handled {handled} of {n} ({bad} undecodable), {left} left in the queue"
        )
        .into());
    }
    Ok(())
}
