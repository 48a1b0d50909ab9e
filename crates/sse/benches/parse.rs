//! Parse time of a 1 MiB event in 64-byte chunks against the same event in one chunk: the
//! parser is linear, so the two should be close (target: at most 2×).
//!
//! Run with: `cargo bench -p asyncworker-sse --bench parse`

use std::hint::black_box;

use asyncworker_sse::parse::{Frame, Parser};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn event(size: usize) -> Vec<u8> {
    let mut input = b"id: 1\nevent: big\ndata: ".to_vec();
    input.extend(std::iter::repeat_n(b'x', size));
    input.extend_from_slice(b"\n\n");
    input
}

fn parse(chunks: &[&[u8]], max: usize) -> usize {
    let mut parser = Parser::with_max_event_size(max);
    let mut out = Vec::new();
    for chunk in chunks {
        parser.feed(chunk, &mut out).expect("parses");
    }
    match &out[..] {
        [Frame::Event(event)] => event.data.len(),
        other => panic!("{other:?}"),
    }
}

fn bench(c: &mut Criterion) {
    let size = 1024 * 1024;
    let input = event(size);
    let mut group = c.benchmark_group("parse_1mib_event");
    group.throughput(Throughput::Bytes(input.len() as u64));
    let one: Vec<&[u8]> = vec![&input];
    group.bench_function("one_chunk", |b| b.iter(|| parse(black_box(&one), size)));
    let small: Vec<&[u8]> = input.chunks(64).collect();
    group.bench_function("64_byte_chunks", |b| {
        b.iter(|| parse(black_box(&small), size))
    });
    group.finish();
}

/// The same event through eventsource-stream 0.2.3, which re-scans its buffer per chunk:
/// at 64 KiB (1 MiB takes seconds per iteration there), beside ours at 64 KiB.
fn reference(c: &mut Criterion) {
    use eventsource_stream::Eventsource;
    use futures::StreamExt;
    let size = 64 * 1024;
    let input = event(size);
    let mut group = c.benchmark_group("parse_64kib_event_in_64_byte_chunks");
    group.throughput(Throughput::Bytes(input.len() as u64));
    group.sample_size(10);
    let small: Vec<&[u8]> = input.chunks(64).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    group.bench_function("ours", |b| b.iter(|| parse(black_box(&small), size)));
    group.bench_function("eventsource_stream", |b| {
        b.iter(|| {
            let chunks = small
                .iter()
                .map(|c| Ok::<_, std::convert::Infallible>(c.to_vec()));
            let events: Vec<_> = rt.block_on(futures::stream::iter(chunks).eventsource().collect());
            assert_eq!(events.len(), 1);
        })
    });
    group.finish();
}

criterion_group!(benches, bench, reference);
criterion_main!(benches);
