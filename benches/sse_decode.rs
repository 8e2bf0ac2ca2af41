//! The per-event cost on the hot path: SSE decoding plus chunk classification, the work the tap
//! adds to every frame it forwards.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use servelens::openai::classify;
use servelens::sse::{BlockKind, Decoder};

const STREAM: &[u8] = include_bytes!("../tests/fixtures/vllm_chat_stream_usage.sse");
const CONTENT_CHUNK: &[u8] = br#"{"id":"chatcmpl-8c1f5e2a9d3b4f70","object":"chat.completion.chunk","created":1763800000,"model":"meta-llama/Llama-3.1-8B-Instruct","choices":[{"index":0,"delta":{"content":" Paris"},"logprobs":null,"finish_reason":null,"token_ids":null}]}"#;

fn decode_all(pieces: &[&[u8]]) -> usize {
    let mut decoder = Decoder::new();
    let mut content = 0;
    for piece in pieces {
        decoder.feed(piece, |block| {
            if let BlockKind::Data { data, .. } = block.kind {
                if let servelens::openai::Payload::Chunk(info) = classify(data) {
                    content += usize::from(info.content);
                }
            }
        });
    }
    content
}

fn bench_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("sse_decode_classify");
    group.throughput(Throughput::Bytes(STREAM.len() as u64));
    for size in [16usize, 256, STREAM.len()] {
        let pieces: Vec<&[u8]> = STREAM.chunks(size).collect();
        group.bench_with_input(BenchmarkId::from_parameter(size), &pieces, |b, pieces| {
            b.iter(|| black_box(decode_all(black_box(pieces))))
        });
    }
    group.finish();
}

fn bench_classify(c: &mut Criterion) {
    c.bench_function("classify_content_chunk", |b| {
        b.iter(|| black_box(classify(black_box(CONTENT_CHUNK))))
    });
}

criterion_group!(benches, bench_decode, bench_classify);
criterion_main!(benches);
