//! Random streams against the parser's invariants: whatever a peer sends, in whatever
//! chunks, the parser never panics, never holds more than its limits allow, dispatches only
//! UTF-8 data, and produces the same frames (and the same success or failure) as for the
//! whole stream in one chunk.

use super::*;

/// xorshift64: deterministic, so a failure can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Pieces a stream is made of: field names, separators, line ends, a BOM, bytes that are not
/// UTF-8, NUL, and runs long enough to cross the limits.
fn random_stream(rng: &mut Rng, long: usize) -> Vec<u8> {
    const PIECES: &[&[u8]] = &[
        b"data",
        b"data:",
        b"data: ",
        b"id",
        b"id:",
        b"id: 7",
        b"event",
        b"event: e",
        b"retry",
        b"retry: 15",
        b"retry: 99999999999999999999999",
        b":",
        b": ",
        b" ",
        b"\r",
        b"\n",
        b"\r\n",
        b"\n\n",
        b"\r\r",
        b"\xEF\xBB\xBF",
        b"\xEF",
        b"\xBB\xBF",
        b"\xFF",
        b"\xC3\xA9",
        b"\xE2\x82",
        b"\0",
        b"x",
        b"yz",
        b"\xF0\x9F\x98\x80",
    ];
    let mut out = Vec::new();
    for _ in 0..rng.below(60) {
        if rng.below(40) == 0 {
            let byte = [b'a', b'd', b':', b' '][rng.below(4)];
            out.extend(std::iter::repeat_n(byte, rng.below(long)));
        } else {
            out.extend_from_slice(PIECES[rng.below(PIECES.len())]);
        }
    }
    out
}

/// Feed `chunks`, checking the memory bound after every chunk.
fn run(chunks: &[&[u8]], max: usize) -> (Vec<Frame>, bool) {
    let mut parser = Parser::with_max_event_size(max);
    let mut out = Vec::new();
    for chunk in chunks {
        let result = parser.feed(chunk, &mut out);
        let limit = parser.max_line();
        assert!(
            parser.partial.len() <= limit,
            "held line {}",
            parser.partial.len()
        );
        assert!(parser.data.len() <= max, "held data {}", parser.data.len());
        assert!(
            parser.name.len() <= limit,
            "held name {}",
            parser.name.len()
        );
        let id = parser.last_id.as_deref().map_or(0, str::len);
        assert!(id <= limit, "held id {id}");
        if result.is_err() {
            return (out, true);
        }
    }
    for frame in &out {
        if let Frame::Event(event) = frame {
            // `SseEvent::data` relies on it.
            assert!(std::str::from_utf8(&event.data).is_ok(), "{event:?}");
        }
    }
    (out, false)
}

fn random_chunks<'a>(rng: &mut Rng, input: &'a [u8]) -> Vec<&'a [u8]> {
    let mut chunks = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        let n = match rng.below(4) {
            0 => 1,
            1 => rng.below(8),
            _ => rng.below(rest.len() + 1),
        }
        .min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        chunks.push(chunk);
        rest = tail;
    }
    chunks
}

#[test]
fn random_streams_in_random_chunks() {
    for seed in 1..4000u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let max = [8, 64, 1024][rng.below(3)];
        let input = random_stream(&mut rng, 3 * max + 2 * LINE_SLACK);
        let whole = run(&[&input], max);
        for _ in 0..4 {
            let chunks = random_chunks(&mut rng, &input);
            let split = run(&chunks, max);
            assert_eq!(
                split,
                whole,
                "seed {seed}, max {max}, chunks {:?}",
                chunks.iter().map(|c| c.len()).collect::<Vec<_>>()
            );
        }
    }
}

#[test]
fn a_long_line_is_too_large_in_one_chunk_as_in_many() {
    let max = 16;
    for line in [
        format!("{}\n\n", "x".repeat(2000)),
        format!("event: {}\ndata: a\n\n", "e".repeat(2000)),
        format!("id: {}\n\n", "7".repeat(2000)),
        format!(":{}\n\n", " ".repeat(2000)),
    ] {
        let input = line.as_bytes();
        let chunks: Vec<&[u8]> = input.chunks(5).collect();
        assert!(run(&chunks, max).1, "in chunks: {line:.20}");
        assert!(run(&[input], max).1, "in one chunk: {line:.20}");
    }
}
