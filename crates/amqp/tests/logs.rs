//! The password never reaches the logs, at any level, of asyncworker or of lapin — while the
//! logs do name the host and vhost of a failing connection. Its own test binary: it installs
//! a global subscriber that records everything.

mod support;

use std::time::Duration;

use asyncworker_amqp::{AmqpConfig, AmqpSource};
use asyncworker_core::Backoff;
use asyncworker_core::{Action, Message, Shutdown, Source, SourceContext};
use futures::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_never_reach_the_logs() {
    support::captured_logs();

    // A wrong password: refused, retried, given up.
    let wrong = "wrong-pass-5f1d2c";
    let config = AmqpConfig::builder()
        .url(&support::amqp_url())
        .password(wrong)
        .reconnect(
            Backoff::builder()
                .initial_delay(Duration::from_millis(50))
                .build()
                .unwrap(),
        )
        .max_reconnect_attempts(2)
        .build()
        .unwrap();
    let shutdown = Shutdown::new();
    let mut stream = AmqpSource::builder(config, ["unused"])
        .build()
        .unwrap()
        .into_stream(SourceContext::new("logs-bad", shutdown.clone()));
    let errors: Vec<_> = tokio::time::timeout(Duration::from_secs(20), stream.by_ref().collect())
        .await
        .expect("the stream ends after two attempts");
    assert_eq!(errors.len(), 3, "{errors:?}");

    // A user of its own with a unique password, through a whole consume and settle.
    let user = support::unique_name("user");
    let right = format!("right-pass-{}", support::unique_name("p"));
    support::rabbitmqctl_ok(&["add_user", &user, &right]).await;
    support::rabbitmqctl_ok(&["set_permissions", "-p", "/", &user, ".*", ".*", ".*"]).await;
    let good = AmqpConfig::builder()
        .url(&support::amqp_url())
        .user(user.as_str())
        .password(right.as_str())
        .build()
        .unwrap();
    let conn = support::connect().await;
    let q = support::TestQueue::declare(&conn, "logs").await;
    support::publish_bodies(&conn, &q, [b"x"]).await;
    let mut stream = AmqpSource::builder(good, [q.as_str()])
        .build()
        .unwrap()
        .into_stream(SourceContext::new("logs-good", shutdown.clone()));
    let msg = loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
            Ok(Some(Ok(msg))) => break msg,
            Ok(Some(Err(_))) => {}
            other => panic!("no message: {other:?}"),
        }
    };
    msg.settlement().settle(Action::Ack).unwrap();
    shutdown.trigger();
    while tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("the stream ends")
        .is_some()
    {}

    support::rabbitmqctl_ok(&["delete_user", &user]).await;

    let logs = support::captured_logs();
    assert!(logs.contains("TRACE"), "trace logging was captured");
    assert!(
        logs.contains("cannot connect") && logs.contains("authentication refused"),
        "the failure is logged"
    );
    assert!(
        logs.lines()
            .any(|l| l.contains("host=127.0.0.1") && l.contains("vhost=/")),
        "the logs name host and vhost"
    );
    assert!(
        !support::shows_secret(&logs, wrong),
        "the wrong password was logged"
    );
    assert!(
        !support::shows_secret(&logs, &right),
        "the password was logged"
    );
    assert!(
        logs.contains(&user),
        "the good connection's logs were captured"
    );
}
