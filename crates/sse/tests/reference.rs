//! Our parser against eventsource-stream 0.2.3, the reference the design names: on every
//! input both accept, in one chunk and in chunks of every size, they dispatch the same
//! events (eventsource-stream's empty id is our `None`).

use asyncworker_sse::parse::{Frame, Parser};
use eventsource_stream::Eventsource;
use futures::StreamExt;

const INPUTS: &[&str] = &[
    "data: Hello, world!\n\n",
    "data: Hello,\ndata: world!\n\n",
    "data: Hello,\n\ndata: world!\n\n",
    "data: This is the first message.\n\ndata: This is the second message, it\ndata: has two lines.\n\ndata: This is the third message.\n\n",
    "event: add\ndata: 73857293\n\nevent: remove\ndata: 2153\n\nevent: add\ndata: 113411\n\n",
    "data: YHOO\ndata: +2\ndata: 10\n\n",
    ": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n",
    "data\n\ndata\ndata\n\ndata:\n",
    "data:test\n\ndata: test\n\n",
    "id: 1\ndata: a\n\ndata: b\n\nid: 2\0x\ndata: c\n\n",
    "event: e\r\nid: 7\r\ndata: crlf\r\n\r\n",
    "retry: 100\ndata: r\n\nfoo: bar\ndata: unknown field ignored\n\n",
    "event: only a type\n\ndata: next\n\n",
    "data: cut off at the end",
];

// Not in the list: a stream starting with a BOM, which eventsource-stream 0.2.3 panics on
// (it slices `&s[1..]` through the 3-byte U+FEFF); our parser's unit tests cover it.

type Triple = (String, Option<String>, String);

fn ours(input: &str, chunk: usize) -> Vec<Triple> {
    let mut parser = Parser::new();
    let mut frames = Vec::new();
    for piece in input.as_bytes().chunks(chunk) {
        parser.feed(piece, &mut frames).unwrap();
    }
    frames
        .into_iter()
        .filter_map(|f| match f {
            Frame::Event(e) => Some((
                e.name.to_string(),
                e.id.map(|id| id.to_string()),
                String::from_utf8(e.data.to_vec()).unwrap(),
            )),
            _ => None,
        })
        .collect()
}

async fn reference(input: &str, chunk: usize) -> Vec<Triple> {
    let chunks: Vec<Result<Vec<u8>, std::convert::Infallible>> = input
        .as_bytes()
        .chunks(chunk)
        .map(|c| Ok(c.to_vec()))
        .collect();
    futures::stream::iter(chunks)
        .eventsource()
        .map(|e| {
            let e = e.unwrap();
            (e.event, (!e.id.is_empty()).then_some(e.id), e.data)
        })
        .collect()
        .await
}

#[tokio::test]
async fn same_events_as_eventsource_stream() {
    for input in INPUTS {
        let expected = reference(input, input.len().max(1)).await;
        // Ours in chunks of every size against the reference in one chunk (its way of
        // parsing re-scans the buffer per chunk, which is the cost we avoid).
        for size in 1..=input.len().max(1) {
            assert_eq!(ours(input, size), expected, "{input:?} in chunks of {size}");
        }
    }
}
