//! The per-request cost of routing: prefix key over a chat with a 2 KiB system prompt, ring
//! pick with bounded loads, key placement, A/B assignment.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::value::RawValue;
use servelens::routing::affinity::AffinityTable;
use servelens::routing::prefix::{prefix_keys, PrefixSpec, PromptSource};
use servelens::routing::ring::{Bound, Ring};
use servelens::routing::split::{assign, Arm};

fn chat_messages() -> Box<RawValue> {
    let system = "You are a careful assistant that answers briefly. ".repeat(40);
    let json = format!(
        r#"[{{"role":"system","content":"{system}"}},{{"role":"user","content":"What is the capital of France?"}},{{"role":"assistant","content":"Paris."}},{{"role":"user","content":"And of Italy?"}}]"#
    );
    RawValue::from_string(json).expect("valid JSON")
}

fn bench_prefix(c: &mut Criterion) {
    let messages = chat_messages();
    let source = PromptSource {
        messages: Some(&messages),
        ..PromptSource::default()
    };
    c.bench_function("prefix_keys_chat_2k_system", |b| {
        b.iter(|| black_box(prefix_keys(black_box(&source), "m", PrefixSpec::default())))
    });
}

fn bench_ring(c: &mut Criterion) {
    let names: Vec<String> = (0..8).map(|i| format!("replica-{i}")).collect();
    let ring = Ring::new(&names, 160);
    let loads = [3u64, 4, 2, 5, 3, 4, 6, 1];
    let bound = Bound {
        factor: 1.25,
        floor: 4.0,
    };
    let mut key = 0u64;
    c.bench_function("ring_pick_8_replicas", |b| {
        b.iter(|| {
            key = key.wrapping_add(0x9E37_79B9_7F4A_7C15);
            black_box(ring.pick(key, |r| loads[r], |_| true, bound))
        })
    });
    let mut table = AffinityTable::new(8, u64::MAX / 2, 100_000);
    for k in 0..1000u64 {
        table.place(k.wrapping_mul(0x9E37_79B9_7F4A_7C15), &ring, |_| true, 0);
    }
    let mut i = 0u64;
    c.bench_function("affinity_place_known_key", |b| {
        b.iter(|| {
            i = (i + 1) % 1000;
            black_box(table.place(i.wrapping_mul(0x9E37_79B9_7F4A_7C15), &ring, |_| true, 1))
        })
    });
}

fn bench_split(c: &mut Criterion) {
    let arms = [
        Arm {
            name: "vllm",
            weight: 70.0,
        },
        Arm {
            name: "sglang",
            weight: 30.0,
        },
    ];
    c.bench_function("ab_assign_two_arms", |b| {
        b.iter(|| black_box(assign("experiment", black_box(b"session-12345"), &arms)))
    });
}

criterion_group!(benches, bench_prefix, bench_ring, bench_split);
criterion_main!(benches);
