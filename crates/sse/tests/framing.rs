//! Framing over a real HTTP connection: what the source dispatches from scripted bodies.

mod support;

use asyncworker_core::{Action, Message};
use asyncworker_sse::{SseError, SseSource, parse::ParseError};
use support::{Direct, Gate, Part, Server, stream, text, triple};

fn t(name: &str, id: Option<&str>, data: &str) -> (String, Option<String>, String) {
    (name.to_owned(), id.map(str::to_owned), data.to_owned())
}

async fn direct(server: &Server, paths: &[&str]) -> Direct {
    let config = server.config().build().unwrap();
    Direct::start(SseSource::new(&config, paths).unwrap())
}

#[tokio::test]
async fn multi_line_data_comments_ids_and_a_retry_only_block() {
    let server = Server::start().await;
    let lines: Vec<String> = (0..12)
        .map(|i| format!("{}l{i}", " ".repeat(i % 3)))
        .collect();
    let mut body = String::from(": hello\n\nretry: 10\n\n");
    for line in &lines {
        body.push_str(&format!("data: {line}\n"));
    }
    body.push_str("id: 1\nevent: deployment_info\n\n: comment\nid: 2\ndata: {\"id\": 2}\n\n");
    server.script("/v2/events", [stream(vec![text(&body)])]);
    let mut d = direct(&server, &["/v2/events"]).await;
    let first = d.event().await;
    assert_eq!(
        triple(&first),
        t("deployment_info", Some("1"), &lines.join("\n"))
    );
    let second = d.event().await;
    assert_eq!(triple(&second), t("message", Some("2"), "{\"id\": 2}"));
    assert_eq!(second.body().unwrap()["id"], 2);
    assert_eq!(second.json::<serde_json::Value>().unwrap()["id"], 2);
    assert_eq!(second.path(), "/v2/events");
    assert!(first.body().is_err());
}

#[tokio::test]
async fn cr_lf_and_crlf_line_endings() {
    let server = Server::start().await;
    for (i, eol) in ["\r", "\n", "\r\n"].iter().enumerate() {
        let body = format!("id: {i}{eol}data: a{eol}data: b{eol}{eol}");
        server.script(&format!("/{i}"), [stream(vec![text(&body)])]);
    }
    for i in 0..3 {
        let mut d = direct(&server, &[&format!("/{i}")]).await;
        let event = d.event().await;
        assert_eq!(
            triple(&event),
            t("message", Some(&i.to_string()), "a\nb"),
            "{i}"
        );
    }
}

#[tokio::test]
async fn an_event_is_dispatched_when_its_blank_line_arrives() {
    // The server sends an event and then nothing until the test opens the gate: the event
    // must arrive before that (else this test hangs and fails on its patience).
    let server = Server::start().await;
    let gate = Gate::new();
    server.script(
        "/e",
        [stream(vec![
            text("data: first\n\n"),
            Part::Gate(gate.clone()),
            // A CR-only blank line at the end of a write: no LF follows until the gate opens.
            text("data: second\r\r"),
            Part::Gate(Gate::new()),
        ])],
    );
    let mut d = direct(&server, &["/e"]).await;
    assert_eq!(d.acked().await.data(), "first");
    gate.open();
    assert_eq!(d.acked().await.data(), "second");
}

#[tokio::test]
async fn events_written_one_byte_at_a_time() {
    let server = Server::start().await;
    let body = "\u{feff}id: 1\r\nevent: e\rdata: h\u{e9}llo\n: c\n\ndata: x\r\n\r\n";
    let parts = body
        .as_bytes()
        .iter()
        .map(|b| Part::Bytes(bytes::Bytes::copy_from_slice(&[*b])))
        .collect();
    server.script("/b", [stream(parts)]);
    let mut d = direct(&server, &["/b"]).await;
    assert_eq!(triple(&d.acked().await), t("e", Some("1"), "h\u{e9}llo"));
    assert_eq!(triple(&d.acked().await), t("message", Some("1"), "x"));
}

#[tokio::test]
async fn a_cut_off_event_is_discarded_then_received_once_after_the_resume() {
    let server = Server::start().await;
    server.script(
        "/c",
        [
            stream(vec![text("id: 1\ndata: a\n\nid: 2\ndata: b")]),
            stream(vec![text("id: 2\ndata: b\n\nid: 3\ndata: c\n\n")]),
        ],
    );
    let mut d = direct(&server, &["/c"]).await;
    let a = d.event().await;
    assert_eq!(a.data(), "a");
    a.settlement().settle(Action::Ack).unwrap();
    let b = d.event().await;
    assert_eq!(triple(&b), t("message", Some("2"), "b"));
    assert_eq!(b.delivery(), 1);
    assert_eq!(d.acked().await.data(), "c");
    let requests = server.received();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].last_event_id(), None);
    assert_eq!(requests[1].last_event_id(), Some("1"));
}

#[tokio::test]
async fn a_1_mib_event_in_64_byte_writes() {
    // Each write is its own HTTP chunk, and the client reads chunk by chunk: the source gets
    // ~16 400 reads of at most 64 bytes (checked with a raw reqwest reader on this server).
    let server = Server::start().await;
    let data = "z".repeat(1024 * 1024 - 100);
    let body = format!("id: big\ndata: {data}\n\n");
    let parts = body
        .as_bytes()
        .chunks(64)
        .map(|c| Part::Bytes(bytes::Bytes::copy_from_slice(c)))
        .collect();
    server.script("/big", [stream(parts)]);
    let mut d = direct(&server, &["/big"]).await;
    let event = d.event().await;
    assert_eq!(event.id(), Some("big"));
    assert_eq!(event.payload().len(), data.len());
    assert!(event.data() == data, "the data arrived whole");
}

#[tokio::test]
async fn an_event_over_the_limit_is_an_error_and_the_stream_resumes() {
    let server = Server::start().await;
    let big = "q".repeat(2000);
    server.script(
        "/l",
        [
            stream(vec![
                text("id: 1\ndata: ok\n\n"),
                text(&format!("data: {big}\n\n")),
            ]),
            stream(vec![text("id: 3\ndata: after\n\n")]),
        ],
    );
    let config = server.config().max_event_size(1000).build().unwrap();
    let mut d = Direct::start(SseSource::new(&config, ["/l"]).unwrap());
    d.acked().await;
    let error = d.error().await;
    assert!(
        matches!(
            &error,
            SseError::Parse {
                source: ParseError::EventTooLarge { limit: 1000 },
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("/l"), "{error}");
    assert_eq!(d.acked().await.data(), "after");
    assert_eq!(server.received()[1].last_event_id(), Some("1"));
}

#[tokio::test]
async fn invalid_utf8_is_a_clear_error() {
    let server = Server::start().await;
    server.script(
        "/u",
        [stream(vec![Part::Bytes(bytes::Bytes::from_static(
            b"data: \xff\xfe\n\n",
        ))])],
    );
    let mut d = direct(&server, &["/u"]).await;
    let error = d.error().await;
    let source = std::error::Error::source(&error).expect("a cause");
    assert!(source.to_string().contains("not valid UTF-8"), "{source}");
}

#[tokio::test]
async fn a_dropped_unsettled_event_is_handed_out_again() {
    let server = Server::start().await;
    server.script("/q", [stream(vec![text("id: 1\ndata: a\n\n")])]);
    let mut d = direct(&server, &["/q"]).await;
    let first = d.event().await;
    assert_eq!(first.delivery(), 1);
    drop(first);
    let again = d.event().await;
    assert_eq!((again.data(), again.delivery()), ("a", 2));
}

#[tokio::test]
async fn an_id_that_cannot_go_back_in_a_header_is_ignored() {
    // A control character is valid UTF-8 but no valid header value: keeping it as the last
    // event id would make every reconnect fail before it is sent.
    let server = Server::start().await;
    server.script(
        "/x",
        [
            stream(vec![text("id: 1\ndata: a\n\nid: x\u{1}y\ndata: b\n\n")]),
            stream(vec![text("id: 2\ndata: c\n\n")]),
        ],
    );
    let mut d = direct(&server, &["/x"]).await;
    assert_eq!(triple(&d.acked().await), t("message", Some("1"), "a"));
    assert_eq!(triple(&d.acked().await), t("message", Some("1"), "b"));
    assert_eq!(triple(&d.acked().await), t("message", Some("2"), "c"));
    assert_eq!(server.received()[1].last_event_id(), Some("1"));
}
