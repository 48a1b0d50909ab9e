//! Secrets of an SSE source: a basic-auth password and a secret header are sent, and never
//! show in the config's `Debug` or `Display`, the errors (with their whole chain) of a server
//! that answers 401, or the logs at any level (reqwest's and hyper's included). Its own test
//! binary: it installs a global subscriber that records everything.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use asyncworker_sse::{SseError, SseSource};
use support::{Direct, Server, status};

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

/// The error and each of its causes.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

/// Standard base64 (what basic auth sends), for the test's own check.
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_against_a_server_that_answers_401_shows_no_secret() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let password = "sse-pa55-9c1e77";
    let token = "tok-3e5d0b1a";
    let basic = base64(format!("svc:{password}").as_bytes());
    let server = Server::start().await;
    server.script("/s", [status(401), status(401)]);
    let config = server
        .config()
        .basic_auth("svc", password)
        .header("x-api-key", token)
        .build()
        .unwrap();
    let shown = format!("{config:?} {config:#?}");
    for secret in [password, token, basic.as_str()] {
        assert!(
            !shown.contains(secret),
            "the config's Debug shows a secret: {shown}"
        );
    }
    let source = SseSource::new(&config, ["/s"]).unwrap();
    let shown = format!("{source:?}");
    assert!(
        !shown.contains(password) && !shown.contains(token),
        "{shown}"
    );

    let mut d = Direct::start(source);
    let mut texts = Vec::new();
    for _ in 0..2 {
        let error = d.error().await;
        assert!(
            matches!(error, SseError::Status { status: 401, .. }),
            "{error:?}"
        );
        texts.push(format!("{} | {error:?}", chain(&error)));
    }
    assert!(texts[0].contains("401"), "{}", texts[0]);
    // The credentials did go out, as a header.
    let received = server.wait_requests(2).await;
    let auth = received[0]
        .headers
        .get("authorization")
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(auth, format!("Basic {basic}"));
    assert_eq!(received[0].headers.get("x-api-key").unwrap(), token);
    d.shutdown.trigger();

    let logs = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    assert!(
        logs.contains("TRACE") || logs.contains("DEBUG"),
        "the logs were captured"
    );
    for text in texts.iter().chain([&logs]) {
        for secret in [password, token, basic.as_str()] {
            assert!(!text.contains(secret), "a secret shows: {text}");
        }
    }
}
