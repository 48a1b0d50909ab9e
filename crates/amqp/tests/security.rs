//! Secrets and TLS, against the real broker: a wrong password never shows in the `Debug` or
//! the error messages (with their whole chain) of the config, the source and the publisher,
//! nor in the logs at any level (lapin's TRACE included, its frame-printing targets capped as
//! `asyncworker::init_logging` caps them); TLS with verification on works,
//! and a certificate that fails verification or a host name the certificate does not cover
//! is a clear error, never a plaintext fallback. Its own test binary: it installs a global
//! subscriber that records everything (`support::captured_logs`).

mod support;

use std::sync::Arc;
use std::time::Duration;

use asyncworker_amqp::{AmqpConfig, AmqpSource, Publisher};
use asyncworker_core::{Backoff, Shutdown, Source, SourceContext};
use futures::StreamExt;

use support::*;

fn assert_hidden(what: &str, text: &str, secret: &str) {
    assert!(
        !shows_secret(text, secret),
        "{what} shows the password: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_shows_nowhere() {
    captured_logs();
    let secret = format!("s3cret-{}", unique_name("pw"));
    let config = AmqpConfig::builder()
        .url(&amqp_url())
        .password(secret.as_str())
        .reconnect(
            Backoff::builder()
                .initial_delay(Duration::from_millis(20))
                .build()
                .unwrap(),
        )
        .max_reconnect_attempts(1)
        .build()
        .unwrap();
    assert_hidden(
        "the config's Debug",
        &format!("{config:?} {config:#?}"),
        &secret,
    );
    assert_hidden("the config's Display", &config.to_string(), &secret);
    // A URL carrying the password is no different.
    let from_url = AmqpConfig::from_url(&format!(
        "amqp://guest:{}@127.0.0.1:5672/%2f",
        percent_encode(&secret)
    ))
    .unwrap();
    assert_hidden("a URL config's Debug", &format!("{from_url:?}"), &secret);

    // The config's own connect.
    let error = config.connect().await.unwrap_err();
    let text = format!("{} | {error:?} | {error:#?}", error_chain(&error));
    assert_hidden("a connect error", &text, &secret);
    assert!(text.contains("authentication refused"), "{text}");

    // The source: its Debug, and every error its stream reports.
    let source = AmqpSource::builder(config.clone(), ["unused"])
        .build()
        .unwrap();
    assert_hidden("the source's Debug", &format!("{source:?}"), &secret);
    let shutdown = Shutdown::new();
    let errors: Vec<_> = tokio::time::timeout(
        Duration::from_secs(20),
        source
            .into_stream(SourceContext::new("security", shutdown))
            .collect::<Vec<_>>(),
    )
    .await
    .expect("the stream gives up");
    assert!(!errors.is_empty());
    for error in errors {
        let error = error.expect_err("no message with a wrong password");
        let text = format!("{} | {error:?}", error_chain(&error));
        assert_hidden("a source error", &text, &secret);
    }

    // The publisher.
    let error = Publisher::connect(&config).await.unwrap_err();
    let text = format!("{} | {error:?} | {error:#?}", error_chain(&error));
    assert_hidden("a publisher error", &text, &secret);
    assert!(text.contains("authentication refused"), "{text}");

    // And the logs, every level and target.
    let logs = captured_logs();
    assert!(logs.contains("TRACE"), "trace logging was captured");
    assert_hidden("the logs", &logs, &secret);
    assert_hidden("the logs", &logs, &percent_encode(&secret));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_verification_connects_and_a_good_publisher_keeps_its_password() {
    captured_logs();
    let config = AmqpConfig::builder()
        .url(&amqps_url())
        .tls_ca_file(tls_ca_cert())
        .build()
        .unwrap();
    assert!(config.tls());
    let publisher = Publisher::connect(&config)
        .await
        .expect("a verified TLS connection");
    assert_hidden(
        "a publisher's Debug",
        &format!("{publisher:?}"),
        "guest:guest",
    );
    drop(publisher);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_a_clear_error_and_no_plaintext_fallback() {
    captured_logs();
    // No test CA: the broker's certificate does not verify.
    let config = AmqpConfig::from_url(&amqps_url()).unwrap();
    let error = config.connect().await.unwrap_err();
    let chain = error_chain(&error);
    assert!(
        chain.contains("invalid peer certificate") && chain.contains("UnknownIssuer"),
        "{chain}"
    );
    let error = Publisher::connect(&config).await.unwrap_err();
    let chain = error_chain(&error);
    assert!(chain.contains("invalid peer certificate"), "{chain}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_name_the_certificate_does_not_cover_is_a_clear_error() {
    captured_logs();
    // The certificate covers `localhost` and 127.0.0.1 (scripts/rabbitmq.sh). 127.0.0.2 is
    // this machine too, and a proxy there reaches the TLS listener: the name is wrong, the
    // chain is trusted, so only the host-name check can refuse it.
    let proxy = std::net::TcpListener::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    let port = proxy.local_addr().unwrap().port();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    proxy.set_nonblocking(true).unwrap();
    let proxy = tokio::net::TcpListener::from_std(proxy).unwrap();
    let forward = tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = proxy.accept().await else {
                return;
            };
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect("127.0.0.1:5671").await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    let config = AmqpConfig::builder()
        .url(&format!("amqps://guest:guest@127.0.0.2:{port}/%2f"))
        .tls_ca_file(tls_ca_cert())
        .build()
        .unwrap();
    assert!(config.tls(), "amqps:// means TLS");
    let error = config.connect().await.unwrap_err();
    let chain = error_chain(&error);
    assert!(
        chain.contains("invalid peer certificate")
            && chain.contains("certificate not valid for name \"127.0.0.2\""),
        "{chain}"
    );
    let error = Publisher::connect(&config).await.unwrap_err();
    let chain = error_chain(&error);
    assert!(chain.contains("certificate not valid for name"), "{chain}");
    assert!(
        accepted.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "the connections went through the proxy"
    );
    forward.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_in_a_list_of_endpoints_shows_nowhere() {
    captured_logs();
    let secret = format!("s3cret-{}", unique_name("list"));
    let encoded = percent_encode(&secret);
    let broker = AmqpConfig::from_url(&amqp_url()).unwrap();
    let list = format!(
        "amqp://guest:{encoded}@127.0.0.1:1/%2f,amqp://guest:{encoded}@{}:{}/%2f",
        broker.host(),
        broker.port()
    );
    let config = AmqpConfig::builder()
        .url(&list)
        .reconnect(
            Backoff::builder()
                .initial_delay(Duration::from_millis(20))
                .build()
                .unwrap(),
        )
        .max_reconnect_attempts(2)
        .build()
        .unwrap();
    assert_eq!(config.endpoints().len(), 2);
    assert_hidden(
        "the config's Debug and Display",
        &format!("{config:?} {config:#?} {config}"),
        &secret,
    );
    // URLs that disagree only in the password: the error says so, without either.
    let other = format!("{list},amqp://guest:x{encoded}@h/%2f");
    let error = AmqpConfig::from_url(&other).unwrap_err();
    assert!(error.to_string().contains("password"), "{error}");
    assert_hidden("a list error", &format!("{error} {error:?}"), &secret);

    // The source tries the dead endpoint, then the broker (which refuses), then gives up.
    let source = AmqpSource::builder(config.clone(), ["unused"])
        .build()
        .unwrap();
    let errors: Vec<_> = tokio::time::timeout(
        Duration::from_secs(20),
        source
            .into_stream(SourceContext::new("security-list", Shutdown::new()))
            .collect::<Vec<_>>(),
    )
    .await
    .expect("the stream gives up");
    let texts: Vec<String> = errors
        .into_iter()
        .map(|e| {
            let e = e.expect_err("no message with a wrong password");
            format!("{} | {e:?}", error_chain(&e))
        })
        .collect();
    assert!(
        texts.iter().any(|t| t.contains("authentication refused")),
        "the second endpoint was tried: {texts:?}"
    );
    for text in &texts {
        assert_hidden("a source error", text, &secret);
    }
    let error = Publisher::connect(&config).await.unwrap_err();
    assert_hidden("a publisher error", &error_chain(&error), &secret);
    let logs = captured_logs();
    assert_hidden("the logs", &logs, &secret);
    assert_hidden("the logs", &logs, &encoded);
}
