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
    let errors: Vec<_> = tokio::time::timeout(Duration::from_secs(10), stream.collect::<Vec<_>>())
        .await
        .expect("the stream ends after its one attempt")
        .into_iter()
        .map(|item| item.expect_err("no message"))
        .collect();
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
    let errors: Vec<_> = tokio::time::timeout(Duration::from_secs(10), stream.collect::<Vec<_>>())
        .await
        .expect("the stream ends after its one attempt")
        .into_iter()
        .map(|item| item.expect_err("no message"))
        .collect();
    let kinds: Vec<_> = errors.iter().map(AmqpError::kind).collect();
    assert_eq!(kinds, ["authentication_refused", "gave_up"], "{errors:?}");
    let text = errors[0].to_string();
    assert!(text.contains("user name and password"), "{text}");
    assert!(text.contains("Login was refused"), "{text}");
    assert!(!text.contains("not-the-password"), "{text}");
}
