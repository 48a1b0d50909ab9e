//! A linear parser for the `text/event-stream` format (WHATWG HTML, "Server-sent events",
//! §9.2.6 "Interpreting an event stream").
//!
//! [`Parser::feed`] takes the body chunk by chunk, as it comes off the socket, and reports
//! [`Frame`]s as soon as the bytes that complete them arrive:
//!
//! - lines end in CR, LF or CRLF; a CR at the very end of a chunk ends its line at once, and
//!   an LF at the start of the next chunk is then skipped, so an event is dispatched when its
//!   blank line arrives, never when the next bytes do;
//! - `event`, `data`, `id` and `retry` fields; several `data` lines are joined with `\n`;
//!   only one space after the colon is stripped; a line without a colon is a field with an
//!   empty value; unknown fields are ignored;
//! - a line starting with `:` is a comment: never dispatched, reported as [`Frame::Comment`]
//!   (proof of liveness);
//! - a blank line dispatches the event; a block without `data` dispatches nothing (a block
//!   that only sets `id` is reported as [`Frame::Id`]);
//! - an `id` containing NUL is ignored, and so is one with any other control character
//!   but tab (it could not be sent back in a `Last-Event-ID` header); the last event id carries over to later events
//!   until the server sets another, as the spec says;
//! - `retry` with only ASCII digits is reported as [`Frame::Retry`] (and stored on the event
//!   of its block);
//! - a UTF-8 byte-order mark at the start of the stream is skipped;
//! - an event whose blank line never comes (the connection dropped) is never dispatched: the
//!   parser only dispatches on a blank line and has no "finish".
//!
//! # Why our own parser
//!
//! The design names eventsource-stream; we keep it as the reference (its test cases are
//! ported below and the benchmarks compare against it) but do not parse with it, because:
//!
//! - it appends every chunk to one `String` and re-parses that string from its start, so a
//!   large event in many chunks costs quadratic time (its issue #11: a 1 MiB event in 64-byte
//!   chunks takes seconds). A line splitter in front of it would fix that, but would then
//!   hand it complete lines it re-scans and copies again (`split_off`), for no gain;
//! - its line parser waits for the byte after a trailing CR, so an event ending in CR at a
//!   chunk boundary is only dispatched when more bytes come — the spec, and our tests, want
//!   it at once;
//! - it has no limit on an event's size, and it reports UTF-8 errors per chunk, not per line;
//! - it panics on a stream that starts with a byte-order mark (it slices one byte off a
//!   three-byte character).
//!
//! This parser scans each byte once (with `memchr`), copies a line only when it straddles a
//! chunk boundary, and keeps at most [`Parser::max_event_size`] bytes: cost and memory are
//! linear in the input whatever the chunking (see `benches/parse.rs`).
//!
//! # Limits
//!
//! The maximum event size bounds what the parser holds at once: the data buffer of the
//! current event holds at most that many bytes, and any one line (a comment, an `event:` or
//! `id:` line too) at most that plus 1 KiB (room for the field name), whether it came in one
//! chunk or many. A larger event or line is [`ParseError::EventTooLarge`]. Bytes that are not UTF-8 in any line are
//! [`ParseError::Utf8`] (the spec would replace them; a worker decoding JSON is better told).
//! After an error the parser has dropped its buffers; the caller drops the connection, and
//! [`Parser::reset`] prepares it for the next one.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use eol::Eol;

mod eol;
mod fields;

use fields::append_data_line;
pub(crate) use fields::fits_a_header;

/// The default maximum event size: 1 MiB.
pub const DEFAULT_MAX_EVENT_SIZE: usize = 1024 * 1024;

/// An event as the stream framed it, before it becomes an [`SseEvent`](crate::SseEvent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEvent {
    /// The event type: the last `event` field of the block, `message` when there was none.
    pub name: Arc<str>,
    /// The last event id when the event was dispatched (an earlier block's id carries over);
    /// `None` when no id was set, or it was set to the empty string.
    pub id: Option<Arc<str>>,
    /// The `data` lines joined with `\n` (UTF-8).
    pub data: Bytes,
    /// The `retry` field of this event's block, if it had a valid one.
    pub retry: Option<Duration>,
}

/// What a chunk of the stream produced.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Frame {
    /// A complete event (its blank line arrived).
    Event(RawEvent),
    /// A block without data that set the last event id (a position without an event).
    Id(Option<Arc<str>>),
    /// A `retry` field: the server's reconnection time.
    Retry(Duration),
    /// A comment line: not an event, but proof that the server is alive.
    Comment,
}

/// Why the stream could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// An event's data, or a single line, grew past the maximum event size.
    #[error("event larger than the maximum event size of {limit} bytes")]
    EventTooLarge {
        /// The limit that was passed.
        limit: usize,
    },
    /// A line is not valid UTF-8.
    #[error("line {line} of the stream is not valid UTF-8")]
    Utf8 {
        /// The 1-based number of the offending line in this stream.
        line: u64,
        /// The UTF-8 error, positions relative to the line.
        #[source]
        source: std::str::Utf8Error,
    },
}

/// A linear `text/event-stream` parser. See the [module docs](self).
///
/// ```
/// use asyncworker_sse::parse::{Frame, Parser};
///
/// let mut parser = Parser::new();
/// let mut frames = Vec::new();
/// parser.feed(b"id: 7\nevent: add\ndata: a\nda", &mut frames).unwrap();
/// assert!(frames.is_empty()); // no blank line yet
/// parser.feed(b"ta: b\r", &mut frames).unwrap();
/// parser.feed(b"\r", &mut frames).unwrap(); // the blank line: dispatched at once
/// let Frame::Event(event) = &frames[0] else { panic!() };
/// assert_eq!((&*event.name, event.id.as_deref()), ("add", Some("7")));
/// assert_eq!(&event.data[..], b"a\nb");
/// ```
pub struct Parser {
    max: usize,
    eol: Eol,
    /// The start of a line whose end has not arrived yet.
    partial: Vec<u8>,
    /// `partial` holds a colon, and is not a `data` line.
    partial_field_known: bool,
    /// A `data` line whose end has not arrived yet, streamed into `data`.
    data_line: Option<DataLine>,
    /// The previous chunk ended in CR: skip an LF at the start of the next one.
    skip_lf: bool,
    /// Nothing parsed yet: a BOM may still come.
    at_start: bool,
    /// Lines seen, for error messages.
    lines: u64,
    data: BytesMut,
    has_data: bool,
    name: String,
    /// The last name dispatched, shared by the events that repeat it (no allocation each).
    last_name: Arc<str>,
    /// The last event id buffer (persists across events).
    last_id: Option<Arc<str>>,
    /// An `id` field appeared in the current block.
    id_in_block: bool,
    retry: Option<Duration>,
}

impl fmt::Debug for Parser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Parser")
            .field("max_event_size", &self.max)
            .field("buffered", &(self.partial.len() + self.data.len()))
            .field("last_event_id", &self.last_id)
            .finish_non_exhaustive()
    }
}

impl Default for Parser {
    fn default() -> Self {
        Self::new()
    }
}

/// Where a streamed `data` line's value starts in the data buffer.
#[derive(Debug, Clone, Copy)]
struct DataLine {
    start: usize,
    /// Only the colon has come so far: a space that comes next is stripped.
    strip_space: bool,
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// How much longer than the maximum event size one line may be (its field name, `: `).
const LINE_SLACK: usize = 1024;

impl Parser {
    /// A parser with the [default maximum event size](DEFAULT_MAX_EVENT_SIZE).
    pub fn new() -> Self {
        Self::with_max_event_size(DEFAULT_MAX_EVENT_SIZE)
    }

    /// A parser that holds at most `max` bytes of one event (its data, or one line).
    pub fn with_max_event_size(max: usize) -> Self {
        Parser {
            max,
            eol: Eol::new(),
            partial: Vec::new(),
            partial_field_known: false,
            data_line: None,
            skip_lf: false,
            at_start: true,
            lines: 0,
            data: BytesMut::new(),
            has_data: false,
            name: String::new(),
            last_name: Arc::from("message"),
            last_id: None,
            id_in_block: false,
            retry: None,
        }
    }

    /// The maximum event size.
    pub fn max_event_size(&self) -> usize {
        self.max
    }

    /// The last event id buffer: what a reconnect would send as `Last-Event-ID`.
    pub fn last_event_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }

    /// Start a new stream (a new connection): drop any unfinished line and event, expect a
    /// BOM again, and take `last_event_id` as the last event id buffer.
    pub fn reset(&mut self, last_event_id: Option<Arc<str>>) {
        self.clear_partial();
        self.data_line = None;
        self.skip_lf = false;
        self.at_start = true;
        self.lines = 0;
        self.clear_event();
        self.last_id = last_event_id;
    }

    fn clear_event(&mut self) {
        self.data.clear();
        self.has_data = false;
        self.name.clear();
        self.id_in_block = false;
        self.retry = None;
    }

    /// Parse the next chunk of the stream, pushing what it completes onto `out`.
    ///
    /// # Errors
    ///
    /// [`ParseError::EventTooLarge`] or [`ParseError::Utf8`]; the frames completed before the
    /// error are in `out`. The parser must be [`reset`](Parser::reset) before further use.
    pub fn feed(&mut self, mut chunk: &[u8], out: &mut Vec<Frame>) -> Result<(), ParseError> {
        if self.skip_lf && !chunk.is_empty() {
            self.skip_lf = false;
            if chunk[0] == b'\n' {
                chunk = &chunk[1..];
            }
        }
        while !chunk.is_empty() {
            let found = self.eol.find(chunk);
            let piece = &chunk[..found.unwrap_or(chunk.len())];
            if self.data_line.is_some() {
                self.stream_data(piece)?;
                if found.is_none() {
                    return Ok(());
                }
                self.end_data_line()?;
            } else if found.is_none() {
                return self.hold(piece);
            } else {
                let result = if self.partial.is_empty() {
                    self.line(piece, out)
                } else {
                    if self.partial.len() + piece.len() > self.max_line() {
                        return Err(self.too_large());
                    }
                    self.partial.extend_from_slice(piece);
                    let line = std::mem::take(&mut self.partial);
                    let result = self.line(&line, out);
                    // Keep the allocation for the next straddling line.
                    self.partial = line;
                    self.clear_partial();
                    result
                };
                if let Err(error) = result {
                    self.reset(self.last_id.clone());
                    return Err(error);
                }
            }
            let cr = chunk[piece.len()] == b'\r';
            chunk = &chunk[piece.len() + 1..];
            if cr {
                match chunk.first() {
                    Some(b'\n') => chunk = &chunk[1..],
                    Some(_) => {}
                    None => self.skip_lf = true,
                }
            }
        }
        Ok(())
    }

    fn clear_partial(&mut self) {
        self.partial.clear();
        self.partial_field_known = false;
    }

    /// Hold the start of a line whose end has not come. Once it shows itself a `data` line,
    /// its value goes straight to the data buffer (no second copy of a large event).
    fn hold(&mut self, piece: &[u8]) -> Result<(), ParseError> {
        let before = self.partial.len();
        if before + piece.len() > self.max_line() {
            return Err(self.too_large());
        }
        self.partial.extend_from_slice(piece);
        if self.partial_field_known {
            return Ok(());
        }
        let Some(colon) = memchr::memchr(b':', &self.partial[before..]).map(|i| before + i) else {
            return Ok(());
        };
        self.partial_field_known = true;
        let mut field = &self.partial[..colon];
        if self.at_start {
            field = field.strip_prefix(BOM).unwrap_or(field);
        }
        if field != b"data" {
            return Ok(());
        }
        let mut value = &self.partial[colon + 1..];
        let strip_space = value.is_empty();
        if let Some(rest) = value.strip_prefix(b" ") {
            value = rest;
        }
        let Some(start) = append_data_line(&mut self.data, &mut self.has_data, self.max, value)
        else {
            return Err(self.too_large());
        };
        self.data_line = Some(DataLine { start, strip_space });
        self.clear_partial();
        Ok(())
    }

    /// Append more of a streamed `data` line's value.
    fn stream_data(&mut self, mut piece: &[u8]) -> Result<(), ParseError> {
        if let Some(line) = &mut self.data_line
            && line.strip_space
            && !piece.is_empty()
        {
            line.strip_space = false;
            piece = piece.strip_prefix(b" ").unwrap_or(piece);
        }
        if self.data.len() + piece.len() > self.max {
            return Err(self.too_large());
        }
        self.data.extend_from_slice(piece);
        Ok(())
    }

    /// A streamed `data` line ended: check it is UTF-8.
    fn end_data_line(&mut self) -> Result<(), ParseError> {
        let Some(line) = self.data_line.take() else {
            return Ok(());
        };
        self.lines += 1;
        self.at_start = false;
        if let Err(source) = std::str::from_utf8(&self.data[line.start..]) {
            let line = self.lines;
            self.reset(self.last_id.clone());
            return Err(ParseError::Utf8 { line, source });
        }
        Ok(())
    }

    /// The longest line held: the maximum event size plus room for a field name.
    fn max_line(&self) -> usize {
        self.max.saturating_add(LINE_SLACK)
    }

    fn too_large(&mut self) -> ParseError {
        let limit = self.max;
        self.reset(self.last_id.clone());
        ParseError::EventTooLarge { limit }
    }
}

/// The first CR or LF in `haystack` (for tests: the parser keeps its own [`Eol`]).
#[cfg(test)]
fn find_eol(haystack: &[u8]) -> Option<usize> {
    Eol::new().find(haystack)
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
