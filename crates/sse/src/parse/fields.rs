//! The fields of a complete line, and the dispatch of a block at its blank line.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;

use super::{BOM, Frame, ParseError, Parser, RawEvent};

impl Parser {
    /// Interpret one complete line (without its terminator).
    pub(super) fn line(&mut self, mut line: &[u8], out: &mut Vec<Frame>) -> Result<(), ParseError> {
        // The same bound as on a line held across chunks, so the outcome does not depend on
        // how the stream was cut (and an `event:` or `id:` line cannot grow without bound).
        if line.len() > self.max_line() {
            return Err(ParseError::EventTooLarge { limit: self.max });
        }
        self.lines += 1;
        if self.at_start {
            self.at_start = false;
            if let Some(rest) = line.strip_prefix(BOM) {
                line = rest;
            }
        }
        if line.is_empty() {
            self.dispatch(out);
            return Ok(());
        }
        if line[0] == b':' {
            out.push(Frame::Comment);
            return Ok(());
        }
        let line = std::str::from_utf8(line).map_err(|source| ParseError::Utf8 {
            line: self.lines,
            source,
        })?;
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => {
                self.name.clear();
                self.name.push_str(value);
            }
            "data" => {
                let appended = append_data_line(
                    &mut self.data,
                    &mut self.has_data,
                    self.max,
                    value.as_bytes(),
                );
                if appended.is_none() {
                    return Err(ParseError::EventTooLarge { limit: self.max });
                }
            }
            "id" if fits_a_header(value) => {
                if self.last_id.as_deref() != Some(value) {
                    self.last_id = (!value.is_empty()).then(|| Arc::from(value));
                }
                self.id_in_block = true;
            }
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                // Digits only: a parse failure is an overflow; saturate.
                let ms = value.parse::<u64>().unwrap_or(u64::MAX);
                let retry = Duration::from_millis(ms);
                self.retry = Some(retry);
                out.push(Frame::Retry(retry));
            }
            _ => {}
        }
        Ok(())
    }

    fn dispatch(&mut self, out: &mut Vec<Frame>) {
        if !self.has_data {
            if self.id_in_block {
                out.push(Frame::Id(self.last_id.clone()));
            }
            self.clear_event();
            return;
        }
        let name = if self.name.is_empty() {
            "message"
        } else {
            &self.name
        };
        if *self.last_name != *name {
            self.last_name = Arc::from(name);
        }
        out.push(Frame::Event(RawEvent {
            name: Arc::clone(&self.last_name),
            id: self.last_id.clone(),
            data: self.data.split().freeze(),
            retry: self.retry,
        }));
        self.clear_event();
    }
}

/// Append a `data` line's value to the event's data (after a `\n` when it has data already);
/// returns where the value starts, or `None` when the data would pass `max` bytes.
pub(super) fn append_data_line(
    data: &mut BytesMut,
    has_data: &mut bool,
    max: usize,
    value: &[u8],
) -> Option<usize> {
    if data.len() + usize::from(*has_data) + value.len() > max {
        return None;
    }
    if *has_data {
        data.extend_from_slice(b"\n");
    }
    *has_data = true;
    let start = data.len();
    data.extend_from_slice(value);
    Some(start)
}

/// Whether `id` can be sent back as `Last-Event-ID`: no control character but tab (the spec
/// ignores an id with NUL; one with any other control character would make every reconnect
/// fail before it is sent, so it is ignored the same way).
pub(crate) fn fits_a_header(id: &str) -> bool {
    id.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}
