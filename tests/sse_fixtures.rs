//! Step *tap* (decoding): every wire fixture decodes to what its `.json` says, whether the
//! stream arrives whole, one byte at a time, or split in two at every possible position.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use servelens::openai::{classify, Payload};
use servelens::sse::{BlockKind, Decoder};
use servelens::telemetry::Timeline;
use support::fixtures::{self, Fixture};
use tokio::time::Instant;

/// What a stream decoded to, in the vocabulary of the fixture expectations.
#[derive(Debug, PartialEq, Default)]
struct Parse {
    data_events: u64,
    comment_events: u64,
    done: bool,
    chunks_with_choices: u64,
    content_events: u64,
    first_content_event_index: Option<u64>,
    content_text_by_index: BTreeMap<u64, String>,
    finish_reason: BTreeMap<u64, String>,
    usage: Option<(u64, u64, u64)>,
    usage_event_index: Option<u64>,
    error_event_index: Option<u64>,
    /// From the timeline: output tokens and ITL sample count.
    output_tokens: Option<u64>,
    itl_samples: usize,
}

fn decode(pieces: &[&[u8]]) -> Parse {
    let mut decoder = Decoder::new();
    let mut parse = Parse::default();
    let t0 = Instant::now();
    let mut timeline = Timeline::new(t0);
    let mut generate_text = String::new();
    for piece in pieces {
        decoder.feed(piece, |block| match block.kind {
            BlockKind::Comment => parse.comment_events += 1,
            BlockKind::Empty => {}
            BlockKind::Data { name: Some(_), .. } => {}
            BlockKind::Data { name: None, data } => {
                let index = parse.data_events;
                parse.data_events += 1;
                let payload = classify(data);
                // Each data event one millisecond apart.
                timeline.observe(&payload, t0 + Duration::from_millis(index + 1));
                match &payload {
                    Payload::Done => parse.done = true,
                    Payload::Error => parse.error_event_index = Some(index),
                    Payload::Chunk(info) => {
                        if info.choices.unwrap_or(0) > 0 {
                            parse.chunks_with_choices += 1;
                        }
                        let json: Value = serde_json::from_slice(data).expect("chunk is JSON");
                        let grows = match json.get("text").and_then(Value::as_str) {
                            Some(text) if json.get("meta_info").is_some() => {
                                let grew = text.len() > generate_text.len();
                                generate_text = text.to_string();
                                grew
                            }
                            _ => info.content,
                        };
                        if grows {
                            parse.content_events += 1;
                            parse.first_content_event_index.get_or_insert(index);
                        }
                        collect_text(&json, &mut parse.content_text_by_index);
                        collect_finish(&json, &mut parse.finish_reason);
                        if info.is_usage_only() {
                            parse.usage_event_index = Some(index);
                        }
                        if let Some(u) = info.usage {
                            parse.usage = u
                                .prompt_tokens
                                .zip(u.completion_tokens)
                                .zip(u.total_tokens)
                                .map(|((p, c), t)| (p, c, t));
                        }
                    }
                    Payload::Other => {}
                }
            }
        });
    }
    if !generate_text.is_empty() {
        parse.content_text_by_index.insert(0, generate_text);
    }
    let m = timeline.measure(t0 + Duration::from_secs(1));
    parse.output_tokens = m.output_tokens;
    parse.itl_samples = m.itl.len();
    parse
}

fn collect_text(json: &Value, out: &mut BTreeMap<u64, String>) {
    for choice in json
        .get("choices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let index = choice.get("index").and_then(Value::as_u64).unwrap_or(0);
        let text = choice
            .get("delta")
            .and_then(|d| d.get("content"))
            .or_else(|| choice.get("text"))
            .and_then(Value::as_str);
        if let Some(text) = text {
            out.entry(index).or_default().push_str(text);
        }
    }
}

fn collect_finish(json: &Value, out: &mut BTreeMap<u64, String>) {
    for choice in json
        .get("choices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            if !reason.is_empty() {
                let index = choice.get("index").and_then(Value::as_u64).unwrap_or(0);
                out.insert(index, reason.to_string());
            }
        }
    }
    let generate = json
        .get("meta_info")
        .and_then(|m| m.get("finish_reason"))
        .and_then(|f| f.get("type"))
        .and_then(Value::as_str);
    if let Some(reason) = generate {
        out.insert(0, reason.to_string());
    }
}

/// Checks a parse against the fixture's `.json`.
fn check(fixture: &Fixture, parse: &Parse) {
    let e = &fixture.expected;
    let name = &fixture.name;
    let n = |key: &str| e.get(key).and_then(Value::as_u64);
    assert_eq!(
        Some(parse.data_events),
        n("data_events"),
        "{name}: data_events"
    );
    assert_eq!(
        Some(parse.comment_events),
        n("comment_events"),
        "{name}: comment_events"
    );
    assert_eq!(Some(parse.done), e["done"].as_bool(), "{name}: done");
    if let Some(expected) = n("chunks_with_choices") {
        assert_eq!(
            parse.chunks_with_choices, expected,
            "{name}: chunks_with_choices"
        );
    }
    if let Some(expected) = n("content_chunks") {
        let tools = n("tool_call_chunks").unwrap_or(0);
        assert_eq!(
            parse.content_events,
            expected + tools,
            "{name}: content chunks"
        );
    }
    if let Some(expected) = n("text_growth_events") {
        assert_eq!(parse.content_events, expected, "{name}: text growth events");
    }
    assert_eq!(
        parse.first_content_event_index,
        n("first_content_event_index"),
        "{name}: first_content_event_index"
    );
    if let Some(text) = e.get("content_text").and_then(Value::as_str) {
        let got = parse
            .content_text_by_index
            .get(&0)
            .map_or("", String::as_str);
        assert_eq!(got, text, "{name}: content_text");
    }
    if let Some(by_index) = e.get("content_text_by_index").and_then(Value::as_object) {
        for (index, text) in by_index {
            let index: u64 = index.parse().expect("index");
            assert_eq!(
                parse.content_text_by_index.get(&index).map(String::as_str),
                text.as_str(),
                "{name}: content_text_by_index[{index}]"
            );
        }
    }
    match e.get("finish_reason") {
        Some(Value::Object(map)) if map.contains_key("type") => {
            assert_eq!(
                parse.finish_reason.get(&0).map(String::as_str),
                map["type"].as_str(),
                "{name}: finish type"
            );
        }
        Some(Value::Object(map)) => {
            let expected: BTreeMap<u64, String> = map
                .iter()
                .map(|(k, v)| {
                    (
                        k.parse().expect("index"),
                        v.as_str().unwrap_or("").to_string(),
                    )
                })
                .collect();
            assert_eq!(parse.finish_reason, expected, "{name}: finish_reason");
        }
        _ => {}
    }
    assert_eq!(parse.usage, fixture.usage(), "{name}: usage");
    assert_eq!(
        parse.usage_event_index,
        n("usage_event_index"),
        "{name}: usage_event_index"
    );
    assert_eq!(
        parse.error_event_index,
        n("error_event_index"),
        "{name}: error_event_index"
    );
    // The timeline agrees: tokens from usage when present, one ITL per content event after the first.
    if let Some((_, completion, _)) = fixture.usage() {
        assert_eq!(
            parse.output_tokens,
            Some(completion),
            "{name}: timeline tokens"
        );
    }
    assert_eq!(
        parse.itl_samples as u64,
        parse.content_events.saturating_sub(1),
        "{name}: ITL samples"
    );
}

#[test]
fn every_fixture_decodes_whole() {
    for fixture in fixtures::all() {
        check(&fixture, &decode(&[&fixture.sse]));
    }
}

#[test]
fn every_fixture_decodes_byte_by_byte() {
    for fixture in fixtures::all() {
        let pieces: Vec<&[u8]> = fixture.sse.chunks(1).collect();
        check(&fixture, &decode(&pieces));
    }
}

#[test]
fn every_fixture_decodes_split_at_every_position() {
    for fixture in fixtures::all() {
        let whole = decode(&[&fixture.sse]);
        for at in 0..=fixture.sse.len() {
            let (a, b) = fixture.sse.split_at(at);
            let parse = decode(&[a, b]);
            assert_eq!(parse, whole, "{} split at {at}", fixture.name);
        }
        check(&fixture, &whole);
    }
}

#[test]
fn every_fixture_decodes_with_crlf_and_cr_line_endings() {
    for fixture in fixtures::all() {
        let text = fixture.sse.clone();
        for ending in [&b"\r\n"[..], b"\r"] {
            let converted: Vec<u8> = text
                .iter()
                .flat_map(|&b| if b == b'\n' { ending.to_vec() } else { vec![b] })
                .collect();
            let pieces: Vec<&[u8]> = converted.chunks(7).collect();
            check(&fixture, &decode(&pieces));
        }
    }
}
