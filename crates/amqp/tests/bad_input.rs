//! Bad input through a whole AMQP route (App → Bulk → Ack → a typed handler using
//! `json_or_reject`): random bytes, truncated JSON, JSON of the wrong shape, a 10 MiB body and
//! header tables of every AMQP field type. Each poison message gets the route's decode-error
//! policy (reject → dead-lettered) with a clear log line, is delivered a bounded number of
//! times (no hot requeue loop), the worker handles a good message published after them, and
//! memory stays bounded. Its own test binary: it installs a global subscriber that records
//! the logs.

mod support;

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use asyncworker_amqp::lapin::BasicProperties;
use asyncworker_amqp::lapin::types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString,
};
use asyncworker_amqp::{AmqpMessage, AmqpSource};
use asyncworker_core::{App, BoxError, RouteOptions};

use support::*;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What the typed handler expects.
#[derive(Debug, serde::Deserialize)]
#[allow(dead_code)]
struct Order {
    id: u64,
    item: String,
}

/// The resident set size (`VmRSS`) and its peak (`VmHWM`) of this process, in KiB.
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A header table holding one value of every AMQP field type RabbitMQ takes in a table (every
/// type lapin knows but the short string, which RabbitMQ's tables do not have: see
/// `a_short_string_header_is_sent_as_a_long_string`).
fn every_field_type() -> FieldTable {
    let mut nested = FieldTable::default();
    nested.insert("inner".into(), AMQPValue::LongString("x".into()));
    let values: Vec<(&str, AMQPValue)> = vec![
        ("bool", AMQPValue::Boolean(true)),
        ("i8", AMQPValue::ShortShortInt(-8)),
        ("u8", AMQPValue::ShortShortUInt(8)),
        ("i16", AMQPValue::ShortInt(-16)),
        ("u16", AMQPValue::ShortUInt(16)),
        ("i32", AMQPValue::LongInt(-32)),
        ("u32", AMQPValue::LongUInt(32)),
        ("i64", AMQPValue::LongLongInt(-64)),
        ("f32", AMQPValue::Float(1.5)),
        ("f64", AMQPValue::Double(2.5)),
        (
            "decimal",
            AMQPValue::DecimalValue(DecimalValue {
                scale: 2,
                value: 314,
            }),
        ),
        (
            "long-string",
            AMQPValue::LongString(LongString::from("long\0with nul")),
        ),
        (
            "array",
            AMQPValue::FieldArray(FieldArray::from(vec![
                AMQPValue::LongInt(1),
                AMQPValue::LongString("two".into()),
                AMQPValue::Void,
            ])),
        ),
        ("timestamp", AMQPValue::Timestamp(1_700_000_000)),
        ("table", AMQPValue::FieldTable(nested)),
        (
            "bytes",
            AMQPValue::ByteArray(ByteArray::from(vec![0u8, 255, 1])),
        ),
        ("void", AMQPValue::Void),
    ];
    let mut table = FieldTable::default();
    for (k, v) in values {
        table.insert(k.into(), v);
    }
    table
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_get_the_policy_once_and_the_worker_goes_on() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let conn = connect().await;
    let (q, dlq) = TestQueue::declare_with_dlq(&conn, "bad-input").await;

    // The poison, each with a message id naming it.
    let mut poison: Vec<(String, Vec<u8>, BasicProperties)> = Vec::new();
    let plain = BasicProperties::default().with_delivery_mode(2);
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    for i in 0..1000 {
        let len = rng.usize(0..512);
        let body: Vec<u8> = std::iter::repeat_with(|| rng.u8(..)).take(len).collect();
        poison.push((format!("random-{i}"), body, plain.clone()));
    }
    let full = br#"{"id": 42, "item": "hammer"}"#;
    for cut in 0..full.len() {
        poison.push((
            format!("truncated-{cut}"),
            full[..cut].to_vec(),
            plain.clone(),
        ));
    }
    for (i, body) in [
        &br#"{"id": "42", "item": "hammer"}"#[..],
        br#"{"id": -1, "item": "hammer"}"#,
        br#"{"item": "hammer"}"#,
        br#"[42, "hammer", 1, 2]"#,
        br#""just a string""#,
        br#"null"#,
        br#"{"id": 18446744073709551616, "item": "x"}"#,
        br#"{"id": 1, "item": 2}"#,
    ]
    .iter()
    .enumerate()
    {
        poison.push((format!("wrong-shape-{i}"), body.to_vec(), plain.clone()));
    }
    // 10 MiB: an object whose string never ends.
    let mut big = br#"{"id": 1, "item": ""#.to_vec();
    big.resize(10 * 1024 * 1024, b'a');
    poison.push(("big-10mib".to_owned(), big, plain.clone()));
    // Every AMQP field type in the headers, with a body of the wrong shape...
    let headers = plain.clone().with_headers(every_field_type());
    poison.push(("headers-poison".to_owned(), b"{}".to_vec(), headers.clone()));

    // ... and with good bodies: handled and acked like any other.
    let good_with_headers = (
        "headers-good".to_owned(),
        br#"{"id": 7, "item": "headers"}"#.to_vec(),
        headers,
    );

    let (rss_before, _) = rss_kib();

    for (id, body, props) in poison.iter().chain([&good_with_headers]) {
        publish_with(
            &conn,
            "",
            &q,
            [body],
            props.clone().with_message_id(id.as_str().into()),
        )
        .await;
    }
    let poison_ids: Vec<String> = poison.iter().map(|(id, ..)| id.clone()).collect();
    let poison_count = poison_ids.len();
    drop(poison);

    let deliveries: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let handled: Arc<Mutex<Vec<(String, u64, usize)>>> = Arc::default();
    let (seen, ok) = (deliveries.clone(), handled.clone());
    let source = AmqpSource::builder(config().prefetch(64).build().unwrap(), [q.as_str()])
        .build()
        .unwrap();
    let mut app = App::new();
    app.handle_signals(false);
    app.route("bad-input", source, move |batch: Vec<AmqpMessage>| {
        let (seen, ok) = (seen.clone(), ok.clone());
        async move {
            for msg in &batch {
                let id = msg.message_id().unwrap_or("").to_owned();
                *seen.lock().unwrap().entry(id.clone()).or_default() += 1;
                let Ok(order) = msg.json_or_reject::<Order>() else {
                    continue;
                };
                let headers = msg.headers().map_or(0, |h| h.inner().len());
                ok.lock().unwrap().push((id, order.id, headers));
            }
            Ok::<_, BoxError>(())
        }
    })
    .options(
        RouteOptions::new()
            .bulk_size(16)
            .flush_interval(Duration::from_millis(20)),
    );
    let stop = app.shutdown_handle();
    let run = tokio::spawn(app.run());

    // Every poison message dead-lettered, the good one with headers handled.
    wait_until(Duration::from_secs(120), || async {
        message_count(&conn, &dlq).await as usize >= poison_count
            && !handled.lock().unwrap().is_empty()
    })
    .await
    .expect("every poison message dead-lettered");

    // The worker is alive: a good message published after the poison is handled.
    publish_with(
        &conn,
        "",
        &q,
        [br#"{"id": 1001, "item": "after"}"#],
        plain.clone().with_message_id("good-after".into()),
    )
    .await;
    wait_until(Duration::from_secs(30), || async {
        handled
            .lock()
            .unwrap()
            .iter()
            .any(|(id, ..)| id == "good-after")
    })
    .await
    .expect("the good message after the poison is handled");

    stop.trigger();
    let result = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the app stops")
        .expect("the app task does not panic");
    assert!(result.is_ok(), "{result:?}");
    let (rss_after, hwm) = rss_kib();

    // The policy: rejected (dead-lettered), nothing left ready or unacked, nothing requeued.
    assert_eq!(message_count(&conn, &dlq).await as usize, poison_count);
    let info = queue_info("/", &q).await.unwrap();
    assert_eq!((info.messages_ready, info.messages_unacknowledged), (0, 0));

    // No hot loop: each poison message delivered once (a bound of 2 allows one redelivery).
    let deliveries = deliveries.lock().unwrap().clone();
    let max = poison_ids
        .iter()
        .map(|id| {
            *deliveries
                .get(id)
                .unwrap_or_else(|| panic!("{id} never delivered"))
        })
        .max()
        .unwrap();
    assert!(max <= 2, "a poison message was delivered {max} times");
    let total: u32 = deliveries.values().sum();
    println!(
        "bad input: {poison_count} poison messages, {total} deliveries in all (max {max} per message)"
    );

    let handled = handled.lock().unwrap().clone();
    let mut ids: Vec<_> = handled.iter().map(|(id, ..)| id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["good-after", "headers-good"]);
    let (_, order_id, header_count) = handled
        .iter()
        .find(|(id, ..)| id == "headers-good")
        .unwrap();
    assert_eq!(
        (*order_id, *header_count),
        (7, every_field_type().inner().len())
    );

    // A clear log line for each: why, which queue, which message, what was done.
    let logs = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    let lines: Vec<_> = logs
        .lines()
        .filter(|l| l.contains("message body is not the JSON the handler expects"))
        .collect();
    assert_eq!(lines.len(), poison_count, "one warning per poison message");
    for id in [
        "random-0",
        "truncated-0",
        "wrong-shape-0",
        "big-10mib",
        "headers-poison",
    ] {
        let line = lines
            .iter()
            .find(|l| l.contains(&format!("message_id=\"{id}\"")))
            .unwrap_or_else(|| panic!("no warning for {id}"));
        assert!(
            line.contains("WARN")
                && line.contains(&format!("queue={}", q.as_str()))
                && line.contains("action=reject")
                && line.contains("error="),
            "{line}"
        );
    }
    println!("sample log line: {}", lines[0]);

    // Memory: generous (the 10 MiB body passes through lapin's buffers and the handler).
    let grown = rss_after.saturating_sub(rss_before);
    println!(
        "RSS before {rss_before} KiB, after {rss_after} KiB (grew {grown} KiB), peak {hwm} KiB"
    );
    assert!(grown < 256 * 1024, "RSS grew by {grown} KiB");
}

/// RabbitMQ's field tables have no short string (its `s` is a 16-bit integer): a header
/// holding lapin's `AMQPValue::ShortString` made the broker close the publisher's connection
/// with INTERNAL_ERROR, failing that publish and every one in flight beside it. The publisher
/// sends it as a long string, in nested tables and arrays too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_string_header_is_sent_as_a_long_string() {
    use asyncworker_amqp::lapin::options::BasicGetOptions;
    use asyncworker_amqp::lapin::types::ShortString;
    use asyncworker_amqp::{OutgoingMessage, Publisher};

    let conn = connect().await;
    let q = TestQueue::declare(&conn, "short-string").await;
    let publisher = Publisher::connect(&config().build().unwrap())
        .await
        .unwrap();
    let mut nested = FieldTable::default();
    nested.insert(
        "inner".into(),
        AMQPValue::ShortString(ShortString::from("in")),
    );
    let mut from_properties = FieldTable::default();
    from_properties.insert(
        "props".into(),
        AMQPValue::ShortString(ShortString::from("p")),
    );
    let message = OutgoingMessage::text("", q.as_str(), "x")
        .with_properties(BasicProperties::default().with_headers(from_properties))
        .header("kind", AMQPValue::ShortString(ShortString::from("short")))
        .header("table", AMQPValue::FieldTable(nested))
        .header(
            "array",
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::ShortString(
                ShortString::from("a"),
            )])),
        );
    publisher
        .publish(message)
        .await
        .expect("published and confirmed");
    // The connection survived: the next publish works too.
    publisher
        .publish(OutgoingMessage::text("", q.as_str(), "y"))
        .await
        .expect("the next publish");

    let channel = channel(&conn).await;
    let got = channel
        .basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the message arrived");
    let headers = got.properties.headers().clone().unwrap();
    let long = |s: &str| AMQPValue::LongString(LongString::from(s));
    assert_eq!(headers.inner().get("kind"), Some(&long("short")));
    assert_eq!(headers.inner().get("props"), Some(&long("p")));
    let Some(AMQPValue::FieldTable(table)) = headers.inner().get("table") else {
        panic!("{headers:?}");
    };
    assert_eq!(table.inner().get("inner"), Some(&long("in")));
    let Some(AMQPValue::FieldArray(array)) = headers.inner().get("array") else {
        panic!("{headers:?}");
    };
    assert_eq!(array.as_slice(), [long("a")]);
}
