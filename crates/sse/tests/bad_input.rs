//! Bad input from a real HTTP server (axum): malformed lines, a line longer than the event
//! limit, a server that closes mid-event, one that trickles a byte a second, one that never
//! sends a newline. Each gives the events the spec says (or a clear error), never a hang or
//! unbounded memory, and the stream goes on after it.

mod support;

use std::time::Duration;

use asyncworker_core::Message;
use asyncworker_sse::{SseError, SseSource, parse::ParseError};
use bytes::Bytes;
use support::{Direct, Part, Server, stream, text, triple};

fn t(name: &str, id: Option<&str>, data: &str) -> (String, Option<String>, String) {
    (name.to_owned(), id.map(str::to_owned), data.to_owned())
}

/// `VmRSS` of this process, in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn too_large(error: &SseError, limit: usize) -> bool {
    matches!(
        error,
        SseError::Parse { source: ParseError::EventTooLarge { limit: l }, .. } if *l == limit
    )
}

#[tokio::test]
async fn malformed_lines_are_ignored_as_the_spec_says() {
    let server = Server::start().await;
    let body = concat!(
        "garbage without a colon\n",
        ":\n",
        "::::\n",
        "data\n", // a field with an empty value: data is ""
        "\n",
        "unknown: field\n",
        "Data: wrong case\n",
        " data: leading space\n",
        "retry: soon\n",
        "retry: -5\n",
        "id: a\0b\n",
        "event\n",
        "data:no space\n",
        "data:  two spaces\n",
        "\n",
        "\n\n\n",
        "id\n",
        "\n",
        "data: after\n\n",
    );
    server.script("/m", [stream(vec![text(body)])]);
    let config = server.config().build().unwrap();
    let mut d = Direct::start(SseSource::new(&config, ["/m"]).unwrap());
    assert_eq!(triple(&d.acked().await), t("message", None, ""));
    assert_eq!(
        triple(&d.acked().await),
        t("message", None, "no space\n two spaces")
    );
    assert_eq!(triple(&d.acked().await), t("message", None, "after"));
}

#[tokio::test]
async fn a_line_longer_than_the_limit_is_a_clear_error_and_the_stream_resumes() {
    // Not data: a comment and an unknown field, which an event's size does not count, still
    // may not grow a line without bound.
    let server = Server::start().await;
    let long = "c".repeat(64 * 1024);
    server.script(
        "/l",
        [
            stream(vec![
                text("id: 1\ndata: ok\n\n"),
                text(&format!(":{long}\n")),
            ]),
            stream(vec![text(&format!("x-unknown: {long}\n"))]),
            stream(vec![text("id: 2\ndata: after\n\n")]),
        ],
    );
    let config = server.config().max_event_size(4096).build().unwrap();
    let mut d = Direct::start(SseSource::new(&config, ["/l"]).unwrap());
    d.acked().await;
    let error = d.error().await;
    assert!(too_large(&error, 4096), "{error:?}");
    assert!(
        std::error::Error::source(&error)
            .unwrap()
            .to_string()
            .contains("maximum event size of 4096 bytes"),
        "{error}"
    );
    let error = d.error().await;
    assert!(too_large(&error, 4096), "{error:?}");
    assert_eq!(d.acked().await.data(), "after");
    let received = server.received();
    assert_eq!(received[1].last_event_id(), Some("1"));
    assert_eq!(received[2].last_event_id(), Some("1"));
}

#[tokio::test]
async fn a_server_that_closes_mid_event_dispatches_nothing_half_done() {
    let server = Server::start().await;
    server.script(
        "/c",
        [
            // Closed cleanly in the middle of a line, then in the middle of a block, then
            // broken (an I/O error) after a complete line of an unfinished block.
            stream(vec![text("id: 1\ndata: a\n\nid: 2\ndata: hal")]),
            stream(vec![text("id: 2\ndata: b\nid: 3\n")]),
            stream(vec![text("data: c\n"), Part::Abort]),
            stream(vec![text("id: 4\ndata: d\n\n")]),
        ],
    );
    let config = server.config().build().unwrap();
    let mut d = Direct::start(SseSource::new(&config, ["/c"]).unwrap());
    assert_eq!(triple(&d.acked().await), t("message", Some("1"), "a"));
    let mut seen = Vec::new();
    loop {
        match d.next().await {
            Some(Ok(event)) => {
                seen.push(triple(&event));
                event
                    .settlement()
                    .settle(asyncworker_core::Action::Ack)
                    .unwrap();
                if event.data() == "d" {
                    break;
                }
            }
            Some(Err(_)) => {}
            None => panic!("the stream ended"),
        }
    }
    assert_eq!(seen, [t("message", Some("4"), "d")]);
    let received = server.received();
    assert!(
        received[1..].iter().all(|r| r.last_event_id() == Some("1")),
        "a half-received block never moves the checkpoint: {received:?}"
    );
}

#[tokio::test]
async fn a_server_that_trickles_a_byte_a_second_is_not_idle() {
    // Every byte moves the idle deadline: with a 3 s idle timeout, an event sent one byte a
    // second arrives whole, and no idle error comes before it.
    let server = Server::start().await;
    let mut parts = Vec::new();
    for b in b"data:x\n\n" {
        parts.push(Part::Bytes(Bytes::copy_from_slice(&[*b])));
        parts.push(Part::Sleep(Duration::from_secs(1)));
    }
    parts.push(Part::Hang);
    server.script("/t", [stream(parts)]);
    let config = server
        .config()
        .idle_timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let mut d = Direct::start(SseSource::new(&config, ["/t"]).unwrap());
    assert_eq!(triple(&d.acked().await), t("message", None, "x"));
    // Then nothing at all: now the idle timeout ends the connection.
    let error = d.error().await;
    assert!(matches!(error, SseError::Idle { .. }), "{error:?}");
    assert_eq!(
        server.received().len(),
        1,
        "one connection carried the event"
    );
}

#[tokio::test]
async fn a_server_that_never_sends_a_newline_is_cut_off_with_bounded_memory() {
    // 256 MiB without a single line end, in 64 KiB writes (one shared buffer, so the server
    // costs nothing): the source gives up at the limit instead of buffering it.
    let server = Server::start().await;
    let chunk = Bytes::from(vec![b'n'; 64 * 1024]);
    let parts: Vec<Part> = std::iter::repeat_n(Part::Bytes(chunk), 4096).collect();
    server.script("/n", [stream(parts), stream(vec![text("data: after\n\n")])]);
    let before = rss_kib();
    let config = server.config().max_event_size(1024 * 1024).build().unwrap();
    let mut d = Direct::start(SseSource::new(&config, ["/n"]).unwrap());
    let error = d.error().await;
    assert!(too_large(&error, 1024 * 1024), "{error:?}");
    assert_eq!(d.acked().await.data(), "after");
    let grown = rss_kib().saturating_sub(before);
    println!("no newline: RSS grew {grown} KiB while 256 MiB were offered");
    assert!(grown < 64 * 1024, "RSS grew by {grown} KiB");
}
