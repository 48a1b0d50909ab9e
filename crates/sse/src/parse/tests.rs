//! The parser against eventsource-stream 0.2.3's own cases, the WHATWG spec's examples, and
//! the framing rules of the issue; every case also at every chunk boundary.

use std::time::Duration;

use std::sync::Arc;

use super::*;

fn feed_all(chunks: &[&[u8]], max: usize) -> Result<Vec<Frame>, ParseError> {
    let mut parser = Parser::with_max_event_size(max);
    let mut out = Vec::new();
    for chunk in chunks {
        parser.feed(chunk, &mut out)?;
    }
    Ok(out)
}

/// Parse `input` in one chunk, then split in two at every byte boundary, then byte by byte,
/// and require the same frames each time.
fn frames(input: &str) -> Vec<Frame> {
    frames_bytes(input.as_bytes())
}

fn frames_bytes(input: &[u8]) -> Vec<Frame> {
    let whole = feed_all(&[input], DEFAULT_MAX_EVENT_SIZE).expect("parses");
    for i in 0..=input.len() {
        let split = feed_all(&[&input[..i], &input[i..]], DEFAULT_MAX_EVENT_SIZE).expect("parses");
        assert_eq!(split, whole, "split at byte {i} of {input:?}");
    }
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    let by_byte = feed_all(&bytes, DEFAULT_MAX_EVENT_SIZE).expect("parses");
    assert_eq!(by_byte, whole, "byte by byte: {input:?}");
    whole
}

/// The events only, as (name, id, data).
fn events(input: &str) -> Vec<(String, Option<String>, String)> {
    frames(input)
        .into_iter()
        .filter_map(|frame| match frame {
            Frame::Event(e) => Some((
                e.name.to_string(),
                e.id.map(|id| id.to_string()),
                String::from_utf8(e.data.to_vec()).expect("utf-8"),
            )),
            _ => None,
        })
        .collect()
}

fn msg(data: &str) -> (String, Option<String>, String) {
    ("message".to_owned(), None, data.to_owned())
}

fn named(name: &str, id: Option<&str>, data: &str) -> (String, Option<String>, String) {
    (name.to_owned(), id.map(str::to_owned), data.to_owned())
}

// eventsource-stream 0.2.3, `valid_data_fields`.
#[test]
fn eventsource_stream_valid_data_fields() {
    assert_eq!(
        events("data: Hello, world!\n\n"),
        vec![msg("Hello, world!")]
    );
    let chunked = feed_all(&[b"data: Hello,", b"", b" world!\n\n"], 1024).unwrap();
    assert_eq!(
        chunked,
        feed_all(&[b"data: Hello, world!\n\n"], 1024).unwrap()
    );
    assert_eq!(events("data: Hello, world!\n"), vec![]);
    assert_eq!(
        events("data: Hello,\ndata: world!\n\n"),
        vec![msg("Hello,\nworld!")]
    );
    assert_eq!(
        events("data: Hello,\n\ndata: world!\n\n"),
        vec![msg("Hello,"), msg("world!")]
    );
}

// eventsource-stream 0.2.3, `spec_examples`; they are the WHATWG spec's examples.
#[test]
fn spec_example_three_messages() {
    assert_eq!(
        events(
            "data: This is the first message.\n\n\
             data: This is the second message, it\n\
             data: has two lines.\n\n\
             data: This is the third message.\n\n"
        ),
        vec![
            msg("This is the first message."),
            msg("This is the second message, it\nhas two lines."),
            msg("This is the third message."),
        ]
    );
}

#[test]
fn spec_example_event_types() {
    assert_eq!(
        events(
            "event: add\ndata: 73857293\n\nevent: remove\ndata: 2153\n\nevent: add\ndata: 113411\n\n"
        ),
        vec![
            named("add", None, "73857293"),
            named("remove", None, "2153"),
            named("add", None, "113411"),
        ]
    );
}

#[test]
fn spec_example_stock_ticker() {
    assert_eq!(
        events("data: YHOO\ndata: +2\ndata: 10\n\n"),
        vec![msg("YHOO\n+2\n10")]
    );
}

#[test]
fn spec_example_ids_and_comment() {
    let input = ": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n";
    assert_eq!(
        events(input),
        vec![
            named("message", Some("1"), "first event"),
            // `id` with no value sets the last event id to the empty string.
            msg("second event"),
            msg(" third event"),
        ]
    );
    assert_eq!(frames(input)[0], Frame::Comment);
}

#[test]
fn spec_example_empty_data() {
    assert_eq!(
        events("data\n\ndata\ndata\n\ndata:\n"),
        vec![msg(""), msg("\n")]
    );
}

#[test]
fn spec_example_space_after_colon() {
    assert_eq!(
        events("data:test\n\ndata: test\n\n"),
        vec![msg("test"), msg("test")]
    );
}

#[test]
fn twelve_data_lines_strip_only_one_space() {
    let lines: Vec<String> = (0..12)
        .map(|i| format!("{}line {i}", " ".repeat(i % 4)))
        .collect();
    let mut input = String::new();
    for line in &lines {
        input.push_str("data: ");
        input.push_str(line);
        input.push('\n');
    }
    input.push('\n');
    assert_eq!(events(&input), vec![msg(&lines.join("\n"))]);
}

#[test]
fn comments_are_reported_not_dispatched() {
    assert_eq!(
        frames(":ping\n: another\n\n"),
        vec![Frame::Comment, Frame::Comment]
    );
    // A comment inside an event does not end it.
    assert_eq!(events("data: a\n: mid\ndata: b\n\n"), vec![msg("a\nb")]);
}

#[test]
fn block_without_data_dispatches_nothing() {
    assert_eq!(frames("event: add\n\n"), vec![]);
    // The event type does not leak into the next event.
    assert_eq!(events("event: add\n\ndata: x\n\n"), vec![msg("x")]);
}

#[test]
fn id_only_block_reports_the_position() {
    assert_eq!(frames("id: 5\n\n"), vec![Frame::Id(Some("5".into()))]);
    assert_eq!(
        events("id: 5\n\ndata: x\n\n"),
        vec![named("message", Some("5"), "x")]
    );
}

#[test]
fn retry_only_block() {
    assert_eq!(
        frames("retry: 2500\n\n"),
        vec![Frame::Retry(Duration::from_millis(2500))]
    );
    assert_eq!(frames("retry: 25x\n\nretry:\n\nretry: -1\n\n"), vec![]);
    let all = frames("retry: 10\ndata: x\n\n");
    let Frame::Event(event) = &all[1] else {
        panic!("{all:?}")
    };
    assert_eq!(event.retry, Some(Duration::from_millis(10)));
}

#[test]
fn ids_carry_over_and_nul_is_ignored() {
    assert_eq!(
        events("id: 1\ndata: a\n\ndata: b\n\nid: 2\0x\ndata: c\n\nid:\ndata: d\n\n"),
        vec![
            named("message", Some("1"), "a"),
            named("message", Some("1"), "b"),
            named("message", Some("1"), "c"),
            msg("d"),
        ]
    );
}

#[test]
fn line_endings_cr_lf_crlf_and_mixed() {
    // The id carries over to the second event.
    let expected = vec![
        named("e", Some("1"), "a\nb"),
        named("message", Some("1"), "c"),
    ];
    assert_eq!(
        events("event: e\nid: 1\ndata: a\ndata: b\n\ndata: c\n\n"),
        expected
    );
    assert_eq!(
        events("event: e\rid: 1\rdata: a\rdata: b\r\rdata: c\r\r"),
        expected
    );
    assert_eq!(
        events("event: e\r\nid: 1\r\ndata: a\r\ndata: b\r\n\r\ndata: c\r\n\r\n"),
        expected
    );
    assert_eq!(
        events("event: e\rid: 1\r\ndata: a\ndata: b\r\n\rdata: c\n\r\n"),
        expected
    );
}

#[test]
fn cr_at_end_of_chunk_dispatches_at_once_and_skips_the_lf() {
    let mut parser = Parser::new();
    let mut out = Vec::new();
    parser.feed(b"data: a\r\r", &mut out).unwrap();
    assert_eq!(out.len(), 1, "dispatched without waiting for the next byte");
    out.clear();
    // The LF after the blank line's CR belongs to it: no extra blank line, no event.
    parser.feed(b"\ndata: b\r", &mut out).unwrap();
    assert!(out.is_empty());
    // The LF completing "data: b\r\n" is skipped, not a blank line: b and c join.
    parser.feed(b"\ndata: c\n\n", &mut out).unwrap();
    let Frame::Event(event) = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(&event.data[..], b"b\nc");
}

#[test]
fn bom_at_stream_start_only() {
    let input = "\u{feff}data: a\n\n\u{feff}data: b\n\ndata: c\n\n";
    // The second BOM makes the field name "\u{feff}data": ignored.
    assert_eq!(events(input), vec![msg("a"), msg("c")]);
    let mut parser = Parser::new();
    let mut out = Vec::new();
    parser.feed(b"\xEF", &mut out).unwrap();
    parser.feed(b"\xBB", &mut out).unwrap();
    parser.feed(b"\xBFdata: x\n\n", &mut out).unwrap();
    assert_eq!(out.len(), 1);
    // After a reset (a new connection) a BOM is expected again.
    parser.reset(None);
    parser.feed(b"\xEF\xBB\xBFdata: y\n\n", &mut out).unwrap();
    assert_eq!(out.len(), 2);
}

#[test]
fn field_rules() {
    assert_eq!(
        events("data: a:b\nfoo: bar\ndata\n:c\n\n"),
        vec![msg("a:b\n")]
    );
    assert_eq!(
        events("data:  two spaces\n\ndata:\ttab\n\n"),
        vec![msg(" two spaces"), msg("\ttab")]
    );
}

#[test]
fn cut_off_event_is_never_dispatched() {
    assert_eq!(events("data: complete\n\ndata: cut"), vec![msg("complete")]);
    assert_eq!(
        events("data: complete\n\ndata: cut\n"),
        vec![msg("complete")]
    );
    // A reset (the next connection) discards the unfinished event.
    let mut parser = Parser::new();
    let mut out = Vec::new();
    parser
        .feed(b"id: 1\ndata: a\n\ndata: cut\n", &mut out)
        .unwrap();
    parser.reset(parser.last_event_id().map(Arc::from));
    parser.feed(b"\n", &mut out).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(parser.last_event_id(), Some("1"));
}

#[test]
fn utf8_checked_per_line_even_when_split() {
    // A multi-byte character split across chunks is fine.
    assert_eq!(
        events("data: h\u{e9}llo \u{1F600}\n\n"),
        vec![msg("h\u{e9}llo \u{1F600}")]
    );
    let err = feed_all(&[b"data: ok\n\ndata: \xFF\n\n"], 1024).unwrap_err();
    assert!(matches!(err, ParseError::Utf8 { line: 3, .. }), "{err:?}");
    assert_eq!(err.to_string(), "line 3 of the stream is not valid UTF-8");
    assert!(std::error::Error::source(&err).is_some());
    // Comments are not decoded.
    assert_eq!(frames_bytes(b":\xFF\n\n"), vec![Frame::Comment]);
}

#[test]
fn max_event_size_bounds_data_and_lines() {
    let max = 16;
    let fits = format!("data: {}\n\n", "x".repeat(16));
    assert_eq!(feed_all(&[fits.as_bytes()], max).unwrap().len(), 1);
    let over = format!("data: {}\n\n", "x".repeat(17));
    let err = feed_all(&[over.as_bytes()], max).unwrap_err();
    assert_eq!(err, ParseError::EventTooLarge { limit: 16 });
    // Over the limit across many data lines, and in small chunks.
    let many = "data: 12345\n".repeat(4) + "\n";
    let chunks: Vec<&[u8]> = many.as_bytes().chunks(3).collect();
    assert!(feed_all(&chunks, max).is_err());
    // One unfinished line larger than the limit, never ending: bounded too.
    let long = "x".repeat(2000);
    let chunks: Vec<&[u8]> = long.as_bytes().chunks(5).collect();
    assert!(feed_all(&chunks, max).is_err());
    // Comments and events do not add up across blocks.
    let mut ok = String::new();
    for _ in 0..100 {
        ok.push_str(": keep-alive\ndata: 0123456789\n\n");
    }
    assert_eq!(feed_all(&[ok.as_bytes()], max).unwrap().len(), 200);
}

#[test]
fn parser_is_usable_after_an_error_and_reset() {
    let mut parser = Parser::with_max_event_size(4);
    let mut out = Vec::new();
    assert!(parser.feed(b"id: 9\ndata: 12345\n\n", &mut out).is_err());
    parser.reset(Some("9".into()));
    parser.feed(b"data: 1\n\n", &mut out).unwrap();
    let Frame::Event(event) = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(event.id.as_deref(), Some("9"));
}

#[test]
fn large_event_in_small_chunks() {
    let data = "y".repeat(DEFAULT_MAX_EVENT_SIZE - 10);
    let input = format!("id: big\ndata: {data}\n\n");
    let chunks: Vec<&[u8]> = input.as_bytes().chunks(64).collect();
    let out = feed_all(&chunks, DEFAULT_MAX_EVENT_SIZE).unwrap();
    let Frame::Event(event) = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(event.data.len(), data.len());
}

#[test]
fn find_eol_agrees_with_memchr() {
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for len in 0..300 {
        for _ in 0..20 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    match rng % 40 {
                        0 => b'\n',
                        1 => b'\r',
                        2 => 0x8a,
                        3 => 0x0b,
                        _ => (rng >> 8) as u8 | 0x20,
                    }
                })
                .collect();
            assert_eq!(
                super::find_eol(&bytes),
                memchr::memchr2(b'\n', b'\r', &bytes),
                "{bytes:?}"
            );
        }
    }
}
