//! Configuration edges against the real broker: values that would pass `build()` and then
//! fail (or panic) on every connect are errors before any I/O, and the values AMQP allows
//! still connect.

mod support;

use asyncworker_amqp::{AmqpConfig, PublishError, Publisher};

use support::*;

/// A vhost name longer than AMQP's 255-byte short string.
fn long_vhost() -> String {
    "v".repeat(300)
}

#[tokio::test]
async fn connecting_to_a_vhost_longer_than_255_bytes_is_an_error_not_a_panic() {
    let config = AmqpConfig::from_url(&amqp_url()).unwrap();
    let connect = tokio::spawn(async move { config.connect_vhost(&long_vhost()).await });
    let error = connect
        .await
        .expect("connect_vhost must not panic")
        .expect_err("no connection to a vhost AMQP cannot name");
    let chain = error_chain(&error);
    assert!(
        chain.contains("vhost") && chain.contains("255 bytes"),
        "{chain}"
    );
}

#[tokio::test]
async fn a_publisher_on_a_vhost_longer_than_255_bytes_is_invalid_options_not_a_panic() {
    let config = AmqpConfig::from_url(&amqp_url()).unwrap();
    let connect = tokio::spawn(async move {
        Publisher::builder()
            .vhost(long_vhost())
            .connect(&config)
            .await
    });
    let error = connect
        .await
        .expect("PublisherBuilder::connect must not panic")
        .expect_err("no publisher on a vhost AMQP cannot name");
    assert!(
        matches!(&error, PublishError::InvalidOptions(m) if m.contains("vhost") && m.contains("255 bytes")),
        "{error:?}"
    );
}

#[tokio::test]
async fn the_smallest_frame_max_amqp_allows_connects_and_a_smaller_one_fails_at_build() {
    let url = |frame_max: u32| {
        let sep = if amqp_url().contains('?') { '&' } else { '?' };
        format!("{}{sep}frame_max={frame_max}", amqp_url())
    };
    let config = AmqpConfig::from_url(&url(4096)).unwrap();
    let connection = config.connect().await.expect("frame_max=4096 connects");
    assert_eq!(connection.configuration().frame_max(), 4096);
    let _ = connection.close(200, "done".into()).await;
    let error = AmqpConfig::from_url(&url(4095)).expect_err("below AMQP's minimum");
    assert!(error.to_string().contains("4096"), "{error}");
}

#[tokio::test]
async fn channel_max_is_negotiated_down_to_the_brokers_limit() {
    let sep = if amqp_url().contains('?') { '&' } else { '?' };
    for (channel_max, negotiated_at_most) in [(0, 2047), (5000, 2047), (65535, 2047), (3, 3)] {
        let config =
            AmqpConfig::from_url(&format!("{}{sep}channel_max={channel_max}", amqp_url())).unwrap();
        let connection = config
            .connect()
            .await
            .unwrap_or_else(|e| panic!("channel_max={channel_max}: {}", error_chain(&e)));
        let negotiated = connection.configuration().channel_max();
        assert!(
            (1..=negotiated_at_most).contains(&negotiated),
            "channel_max={channel_max}: negotiated {negotiated}"
        );
        let _ = connection.close(200, "done".into()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_goes_to_the_first_endpoint_that_answers() {
    let broker = AmqpConfig::from_url(&amqp_url()).unwrap();
    let config = AmqpConfig::builder()
        .url(&amqp_url())
        .port(1)
        .endpoint(broker.host(), broker.port())
        .build()
        .unwrap();
    assert_eq!(config.port(), 1, "port() is the first endpoint's");
    let connection = config.connect().await.expect("the second endpoint answers");
    assert!(connection.status().connected());
    connection.close(200, "OK".into()).await.unwrap();
}
