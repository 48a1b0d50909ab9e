//! Reconnecting against a real RabbitMQ (start it with `scripts/rabbitmq.sh start`): a
//! connection or a consumer that the broker ends right after it started is retried with a
//! growing backoff, not at once; refusals keep the broker's reason.

mod support;

use std::time::{Duration, Instant};

use asyncworker_amqp::{AmqpConfig, AmqpError, AmqpSource, AmqpStream};
use asyncworker_core::{Backoff, Jitter, Message, Shutdown, Source, SourceContext};
use futures::StreamExt;
use support::*;

fn start(source: AmqpSource, route: &str) -> (AmqpStream, Shutdown) {
    init_tracing();
    let shutdown = Shutdown::new();
    let cx = SourceContext::new(route.to_owned(), shutdown.clone());
    (source.into_stream(cx), shutdown)
}

/// 100 ms, doubling, capped at `max`, no jitter: delays the tests can bound from below.
fn backoff(max: Duration) -> Backoff {
    Backoff::builder()
        .initial_delay(Duration::from_millis(100))
        .max_delay(max)
        .jitter(Jitter::None)
        .build()
        .unwrap()
}

/// The stream's errors for `period`, each with when it arrived.
async fn errors_for(stream: &mut AmqpStream, period: Duration) -> Vec<(Instant, AmqpError)> {
    let mut errors = Vec::new();
    let deadline = tokio::time::Instant::now() + period;
    while let Ok(item) = tokio::time::timeout_at(deadline, stream.next()).await {
        match item {
            Some(Ok(msg)) => panic!("unexpected message {:?}", msg.text()),
            Some(Err(e)) => errors.push((Instant::now(), e)),
            None => panic!("the stream ended; errors: {errors:?}"),
        }
    }
    errors
}

/// Every item of a stream that gives up after its one attempt: all errors, no message.
async fn errors_until_the_end(stream: AmqpStream) -> Vec<AmqpError> {
    tokio::time::timeout(Duration::from_secs(10), stream.collect::<Vec<_>>())
        .await
        .expect("the stream ends after its one attempt")
        .into_iter()
        .map(|item| item.expect_err("no message"))
        .collect()
}

/// Asserts that failure `i + 1` came at least `backoff.delay(i)` after failure `i` (10 %
/// slack for when the test saw them): each retry waited, and the wait grew.
fn assert_backoff_between(failures: &[Instant], backoff: &Backoff) {
    for (i, pair) in failures.windows(2).enumerate() {
        let gap = pair[1] - pair[0];
        let delay = backoff.scheduled_delay(u32::try_from(i + 1).unwrap());
        assert!(
            gap >= delay.mul_f64(0.9),
            "failure {} came {gap:?} after failure {}, sooner than the backoff's {delay:?}; \
             gaps: {:?}",
            i + 2,
            i + 1,
            failures.windows(2).map(|p| p[1] - p[0]).collect::<Vec<_>>()
        );
    }
}

/// The host label of this test's connections (`asyncworker_amqp_reconnects_total{host}`),
/// used by no other test of this binary.
const NO_CHANNELS_HOST: &str = "localhost";

/// A user may not open a single channel (`max-channels` 0): every connection of the source
/// is closed by the broker as soon as the queue task opens its channel. The source used to
/// reconnect at once, hundreds of times a second; now it waits the backoff, growing, before
/// each reconnect, and the reconnects metric counts each of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_lost_right_after_connecting_is_retried_with_a_growing_backoff() {
    install_metrics();
    let conn = connect().await;
    let q = TestQueue::declare(&conn, "no-channels").await;
    let user = TestUser::create("no-channels").await;
    user.set_limits(r#"{"max-channels": 0}"#).await;
    let schedule = backoff(Duration::from_secs(1));
    let config = AmqpConfig::builder()
        .url(&amqp_url())
        .host(NO_CHANNELS_HOST)
        .user(user.name())
        .password(user.password())
        .reconnect(schedule)
        .build()
        .unwrap();
    let src = AmqpSource::builder(config, [q.as_str()]).build().unwrap();
    let reconnects = || {
        counter(
            "asyncworker_amqp_reconnects_total",
            &[("host", NO_CHANNELS_HOST)],
        )
    };
    let before = reconnects();
    let (mut stream, shutdown) = start(src, "no-channels");
    let errors = errors_for(&mut stream, Duration::from_secs(3)).await;
    shutdown.trigger();
    drain_to_end(&mut stream, 10).await;
    let reconnected = reconnects() - before;

    let lost: Vec<_> = errors
        .iter()
        .filter(|(_, e)| e.kind() == "connection_lost")
        .collect();
    assert!(
        lost.len() >= 2,
        "the broker ends every connection: {errors:?}"
    );
    // 100 + 200 + 400 + 800 ms of backoff fill 1.5 s; then one reconnect a second.
    assert!(
        lost.len() <= 8,
        "{} connections lost in 3 s: the source reconnects without waiting",
        lost.len()
    );
    assert!(
        (lost.len() as u64).abs_diff(reconnected) <= 1,
        "{reconnected} reconnects counted for {} lost connections",
        lost.len()
    );
    let text = lost[0].1.to_string();
    assert!(text.contains("channel"), "the loss says why: {text}");
    let times: Vec<_> = lost.iter().map(|(t, _)| *t).collect();
    assert_backoff_between(&times, &schedule);
}

/// A queue that is deleted (and declared again) as soon as the source consumes it: the
/// broker cancels the consumer right after it started, every time. The queue task used to
/// consume again after the backoff's first delay every time; now the delay grows with each
/// failure in a row, whether the consume failed or the consumer ended soon after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_cancelled_right_after_consuming_is_retried_with_a_growing_backoff() {
    let conn = connect().await;
    let q = TestQueue::declare(&conn, "cancelled-at-once").await;
    let schedule = backoff(Duration::from_secs(5));
    let config = config().reconnect(schedule).build().unwrap();
    let src = AmqpSource::builder(config, [q.as_str()]).build().unwrap();
    let (mut stream, shutdown) = start(src, "cancelled-at-once");

    // Delete the queue whenever it has a consumer, and declare it again at once.
    let name = q.to_string();
    let canceller = tokio::spawn(async move {
        let conn = connect().await;
        loop {
            match queue_counts(&conn, &name).await {
                Ok(counts) if counts.consumers > 0 => {
                    delete_queue(&conn, &name).await;
                    declare_queue(&conn, &name).await;
                }
                Ok(_) => {}
                Err(_) => declare_queue(&conn, &name).await,
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let errors = errors_for(&mut stream, Duration::from_secs(4)).await;
    canceller.abort();
    shutdown.trigger();
    drain_to_end(&mut stream, 10).await;

    let failures: Vec<_> = errors
        .iter()
        .filter(|(_, e)| e.queue() == Some(q.as_str()))
        .collect();
    assert!(
        failures.iter().any(|(_, e)| e.kind() == "consumer_ended"),
        "the broker cancels the consumer: {errors:?}"
    );
    // 100 + 200 + 400 + 800 + 1600 ms of backoff fill 3.1 s.
    assert!(
        failures.len() <= 7,
        "{} consumer failures in 4 s: the queue is consumed again without a growing wait",
        failures.len()
    );
    let times: Vec<_> = failures.iter().map(|(t, _)| *t).collect();
    assert_backoff_between(&times, &schedule);
}

/// A vhost that allows no connection (`max-connections` 0): the broker refuses the
/// connection, 530 like a missing vhost, and the error says what the broker said, not "does
/// the vhost exist?".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_limit_refusal_shows_the_brokers_reason() {
    let vhost = TestVhost::create("no-connections").await;
    vhost.set_limits(r#"{"max-connections": 0}"#).await;
    let config = config().max_reconnect_attempts(1).build().unwrap();
    let src = AmqpSource::builder(config, ["q"])
        .vhost(vhost.name())
        .build()
        .unwrap();
    let (stream, _shutdown) = start(src, "no-connections");
    let errors = errors_until_the_end(stream).await;
    let kinds: Vec<_> = errors.iter().map(AmqpError::kind).collect();
    assert_eq!(kinds, ["broker_refused", "gave_up"], "{errors:?}");
    let text = errors[0].to_string();
    assert!(text.contains("connection limit"), "{text}");
    assert!(text.contains(vhost.name()), "{text}");
    assert!(!text.contains("does the vhost exist"), "{text}");
}

/// A wrong password is still an authentication refusal, and says what the broker said.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_an_authentication_refusal_with_the_brokers_reason() {
    let user = TestUser::create("wrong-password").await;
    let config = AmqpConfig::builder()
        .url(&amqp_url())
        .user(user.name())
        .password("not-the-password")
        .max_reconnect_attempts(1)
        .build()
        .unwrap();
    let src = AmqpSource::builder(config, ["q"]).build().unwrap();
    let (stream, _shutdown) = start(src, "wrong-password");
    let errors = errors_until_the_end(stream).await;
    let kinds: Vec<_> = errors.iter().map(AmqpError::kind).collect();
    assert_eq!(kinds, ["authentication_refused", "gave_up"], "{errors:?}");
    let text = errors[0].to_string();
    assert!(text.contains("user name and password"), "{text}");
    assert!(text.contains("Login was refused"), "{text}");
    assert!(!text.contains("not-the-password"), "{text}");
}
