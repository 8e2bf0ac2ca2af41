//! Reads one response payload (an SSE `data` event or a whole JSON body) for what the gateway
//! measures: is it `[DONE]`, an error, a token-bearing chunk; its finish reason and `usage`.
//!
//! One pass of `serde_json` over borrowed views: unknown keys are skipped, text fields are kept as
//! `&RawValue` (the raw JSON token, so a non-empty check needs no unescaping and no allocation),
//! and `choices` is folded into a summary as it is visited rather than collected into a `Vec`.
//! The same view reads vLLM/SGLang/TGI/llama.cpp/Ollama chunks, non-streaming bodies and SGLang's
//! native `/generate` events (`text`, `output_ids`, `meta_info`).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Why generation stopped, as the backends spell it (closed set; anything else is `Other`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// Natural stop: EOS or a stop string (TGI's `eos_token` maps here too).
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The model called tools.
    ToolCalls,
    /// OpenAI's legacy `function_call`.
    FunctionCall,
    /// Filtered output.
    ContentFilter,
    /// Aborted by the engine (vLLM/SGLang `abort`).
    Abort,
    /// TGI's `stop_sequence`.
    StopSequence,
    /// Any other non-empty value.
    Other,
}

impl FinishReason {
    /// Maps a backend's string; `None` for the empty string (TGI's intermediate chunks).
    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "" => return None,
            "stop" | "eos_token" => Self::Stop,
            "length" => Self::Length,
            "tool_calls" => Self::ToolCalls,
            "function_call" => Self::FunctionCall,
            "content_filter" => Self::ContentFilter,
            "abort" => Self::Abort,
            "stop_sequence" => Self::StopSequence,
            _ => Self::Other,
        })
    }

    /// The label / JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::ToolCalls => "tool_calls",
            Self::FunctionCall => "function_call",
            Self::ContentFilter => "content_filter",
            Self::Abort => "abort",
            Self::StopSequence => "stop_sequence",
            Self::Other => "other",
        }
    }
}

impl fmt::Display for FinishReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Token counts as the backend reported them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// `usage.prompt_tokens` (SGLang native: `meta_info.prompt_tokens`).
    pub prompt_tokens: Option<u64>,
    /// `usage.completion_tokens` (SGLang native: `meta_info.completion_tokens`).
    pub completion_tokens: Option<u64>,
    /// `usage.total_tokens`.
    pub total_tokens: Option<u64>,
    /// `usage.prompt_tokens_details.cached_tokens` (SGLang native: `meta_info.cached_tokens`).
    pub cached_tokens: Option<u64>,
}

/// What one payload is.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// `data: [DONE]`.
    Done,
    /// A JSON object with a top-level `error` and no `choices`: a mid-stream error event.
    Error,
    /// A chunk or body the gateway understands.
    Chunk(ChunkInfo),
    /// Not JSON, or JSON of a shape we do not read (still forwarded untouched).
    Other,
}

/// The measured facts of one chunk (or one non-streaming body).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChunkInfo {
    /// Number of entries in `choices`; `None` when there is no `choices` key.
    pub choices: Option<u32>,
    /// Some choice carries non-empty `content`, `reasoning_content`, `reasoning`, `tool_calls`
    /// or (completions) `text`.
    pub content: bool,
    /// First finish reason in the chunk, with its choice index.
    pub finish: Option<(u32, FinishReason)>,
    /// `usage`, when present and not null.
    pub usage: Option<Usage>,
    /// SGLang native `/generate` event facts, when the payload has `meta_info`.
    pub generate: Option<GenerateInfo>,
}

impl ChunkInfo {
    /// `choices: []` plus `usage`: the extra event `stream_options.include_usage` adds.
    pub fn is_usage_only(&self) -> bool {
        self.choices == Some(0) && self.usage.is_some()
    }
}

/// Facts of one SGLang native `/generate` event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GenerateInfo {
    /// Length of the raw JSON token of `text` (monotonic in the text when cumulative).
    pub text_len: usize,
    /// Number of `output_ids`.
    pub output_ids: usize,
}

impl GenerateInfo {
    /// True when `text`/`output_ids` hold everything so far (the default) rather than a delta
    /// (`--incremental-streaming-output`): the id list is as long as the cumulative count.
    pub fn is_cumulative(&self, completion_tokens: Option<u64>) -> bool {
        completion_tokens.is_some_and(|c| c == self.output_ids as u64)
    }
}

/// Classifies one payload (an SSE `data` field or a whole JSON body).
pub fn classify(payload: &[u8]) -> Payload {
    let payload = payload.trim_ascii();
    if payload == b"[DONE]" {
        return Payload::Done;
    }
    // One UTF-8 check of the whole payload (fast on ASCII) lets serde_json skip validating
    // every key and borrowed value on its own.
    let Ok(payload) = std::str::from_utf8(payload) else {
        return Payload::Other;
    };
    let Ok(view) = serde_json::from_str::<ChunkView<'_>>(payload) else {
        return Payload::Other;
    };
    if view.error.is_some() && view.choices.is_none() {
        return Payload::Error;
    }
    let recognised = view.choices.is_some() || view.usage.is_some() || view.meta_info.is_some();
    if !recognised {
        return Payload::Other;
    }
    let mut info = ChunkInfo {
        choices: view.choices.as_ref().map(|c| c.count),
        usage: merge_timings(view.usage.map(UsageView::into_usage), view.timings),
        ..ChunkInfo::default()
    };
    if let Some(choices) = view.choices {
        info.content = choices.content;
        info.finish = choices.finish;
    }
    if let Some(meta) = view.meta_info {
        let text_len = view.text.map_or(0, |t| t.get().len().saturating_sub(2));
        info.generate = Some(GenerateInfo {
            text_len,
            output_ids: view.output_ids.map_or(0, |s| s.0),
        });
        info.usage = Some(Usage {
            prompt_tokens: meta.prompt_tokens,
            completion_tokens: meta.completion_tokens,
            total_tokens: meta
                .prompt_tokens
                .zip(meta.completion_tokens)
                .map(|(p, c)| p + c),
            cached_tokens: meta.cached_tokens,
        });
        if let Some(reason) = meta.finish_reason.and_then(|f| f.kind) {
            info.finish = Some((0, reason));
        }
    }
    Payload::Chunk(info)
}

// === borrowed views ===

#[derive(Deserialize)]
struct ChunkView<'a> {
    #[serde(default)]
    choices: Option<Choices>,
    #[serde(default)]
    usage: Option<UsageView>,
    #[serde(default)]
    error: Option<IgnoredAny>,
    #[serde(default, borrow)]
    text: Option<&'a RawValue>,
    #[serde(default)]
    output_ids: Option<SeqLen>,
    #[serde(default)]
    meta_info: Option<MetaInfo>,
    #[serde(default)]
    timings: Option<Timings>,
}

/// llama.cpp's non-standard `timings` object, on the last chunk of every stream (and on the
/// usage chunk when there is one): its token counts are exact, so a llama.cpp stream is counted
/// without asking for `include_usage` (which would move `timings` to a new event).
#[derive(Deserialize)]
struct Timings {
    /// Prompt tokens served from the slot's cache.
    #[serde(default)]
    cache_n: Option<u64>,
    /// Prompt tokens evaluated (excludes `cache_n`).
    #[serde(default)]
    prompt_n: Option<u64>,
    /// Generated tokens.
    #[serde(default)]
    predicted_n: Option<u64>,
}

/// `usage` as reported, completed from llama.cpp `timings` where it is missing.
fn merge_timings(usage: Option<Usage>, timings: Option<Timings>) -> Option<Usage> {
    let Some(t) = timings else {
        return usage;
    };
    let prompt = t.prompt_n.map(|p| p + t.cache_n.unwrap_or(0));
    let mut merged = usage.unwrap_or_default();
    merged.prompt_tokens = merged.prompt_tokens.or(prompt);
    merged.completion_tokens = merged.completion_tokens.or(t.predicted_n);
    merged.cached_tokens = merged.cached_tokens.or(t.cache_n);
    merged.total_tokens = merged.total_tokens.or_else(|| {
        merged
            .prompt_tokens
            .zip(merged.completion_tokens)
            .map(|(p, c)| p + c)
    });
    Some(merged)
}

#[derive(Deserialize)]
struct UsageView {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    total_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
}

impl UsageView {
    fn into_usage(self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            total_tokens: self.total_tokens,
            cached_tokens: self.prompt_tokens_details.and_then(|d| d.cached_tokens),
        }
    }
}

#[derive(Deserialize)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct MetaInfo {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    cached_tokens: Option<u64>,
    #[serde(default)]
    finish_reason: Option<GenerateFinish>,
}

#[derive(Deserialize)]
struct GenerateFinish {
    #[serde(default, rename = "type", deserialize_with = "finish_reason")]
    kind: Option<FinishReason>,
}

#[derive(Deserialize)]
struct ChoiceView<'a> {
    #[serde(default)]
    index: u32,
    #[serde(default, borrow)]
    delta: Option<DeltaView<'a>>,
    #[serde(default, borrow)]
    text: Option<&'a RawValue>,
    #[serde(default, deserialize_with = "finish_reason")]
    finish_reason: Option<FinishReason>,
}

#[derive(Deserialize)]
struct DeltaView<'a> {
    #[serde(default, borrow)]
    content: Option<&'a RawValue>,
    #[serde(default, borrow)]
    reasoning_content: Option<&'a RawValue>,
    #[serde(default, borrow)]
    reasoning: Option<&'a RawValue>,
    #[serde(default)]
    tool_calls: Option<SeqLen>,
}

impl DeltaView<'_> {
    fn has_content(&self) -> bool {
        [self.content, self.reasoning_content, self.reasoning]
            .into_iter()
            .flatten()
            .any(is_non_empty_string)
            || self.tool_calls.is_some_and(|t| t.0 > 0)
    }
}

/// A raw JSON token is a non-empty string (not `""`, not `null`, not another type).
fn is_non_empty_string(raw: &RawValue) -> bool {
    let raw = raw.get().as_bytes();
    raw.len() > 2 && raw[0] == b'"'
}

/// Deserializes a finish reason string (or null) without allocating for the common spellings.
fn finish_reason<'de, D: Deserializer<'de>>(d: D) -> Result<Option<FinishReason>, D::Error> {
    let value: Option<Cow<'de, str>> = Option::deserialize(d)?;
    Ok(value.and_then(|v| FinishReason::parse(&v)))
}

/// `choices`, folded while visited: count, any content, first finish reason.
struct Choices {
    count: u32,
    content: bool,
    finish: Option<(u32, FinishReason)>,
}

impl<'de> Deserialize<'de> for Choices {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ChoicesVisitor;
        impl<'de> Visitor<'de> for ChoicesVisitor {
            type Value = Choices;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of choices")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Choices, A::Error> {
                let mut out = Choices {
                    count: 0,
                    content: false,
                    finish: None,
                };
                while let Some(choice) = seq.next_element::<ChoiceView<'de>>()? {
                    out.count += 1;
                    let text = choice.text.is_some_and(is_non_empty_string);
                    let delta = choice.delta.as_ref().is_some_and(DeltaView::has_content);
                    out.content |= text || delta;
                    if out.finish.is_none() {
                        out.finish = choice.finish_reason.map(|r| (choice.index, r));
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_seq(ChoicesVisitor)
    }
}

/// The length of a JSON array, counted without keeping its elements.
#[derive(Clone, Copy)]
struct SeqLen(usize);

impl<'de> Deserialize<'de> for SeqLen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct LenVisitor;
        impl<'de> Visitor<'de> for LenVisitor {
            type Value = SeqLen;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<SeqLen, A::Error> {
                let mut n = 0;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    n += 1;
                }
                Ok(SeqLen(n))
            }
            fn visit_unit<E: de::Error>(self) -> Result<SeqLen, E> {
                Ok(SeqLen(0))
            }
        }
        d.deserialize_any(LenVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(payload: &str) -> ChunkInfo {
        match classify(payload.as_bytes()) {
            Payload::Chunk(info) => info,
            other => panic!("expected a chunk, got {other:?}"),
        }
    }

    #[test]
    fn done_and_trailing_space() {
        assert_eq!(classify(b"[DONE]"), Payload::Done);
        assert_eq!(classify(b" [DONE] "), Payload::Done);
        let info = chunk(r#"{"choices":[{"index":0,"delta":{"content":"a"}}]} "#);
        assert!(info.content);
    }

    #[test]
    fn role_chunk_is_not_content() {
        let info = chunk(r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#);
        assert_eq!(info.choices, Some(1));
        assert!(!info.content);
        let info =
            chunk(r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":null}}]}"#);
        assert!(!info.content);
    }

    #[test]
    fn reasoning_and_tool_calls_are_content() {
        assert!(chunk(r#"{"choices":[{"delta":{"reasoning":"hm"}}]}"#).content);
        assert!(chunk(r#"{"choices":[{"delta":{"reasoning_content":"hm"}}]}"#).content);
        assert!(chunk(r#"{"choices":[{"delta":{"tool_calls":[{"index":0}]}}]}"#).content);
        assert!(!chunk(r#"{"choices":[{"delta":{"tool_calls":[]}}]}"#).content);
        assert!(!chunk(r#"{"choices":[{"delta":{"reasoning_content":null}}]}"#).content);
    }

    #[test]
    fn escaped_content_counts() {
        assert!(chunk(r#"{"choices":[{"delta":{"content":"\n"}}]}"#).content);
        assert!(chunk(r#"{"choices":[{"text":"\u0026"}]}"#).content);
    }

    #[test]
    fn llamacpp_timings_give_usage_when_it_is_missing() {
        let Payload::Chunk(info) = classify(
            br#"{"choices":[{"finish_reason":"length","index":0,"delta":{}}],"object":"chat.completion.chunk","timings":{"cache_n":3,"prompt_n":9,"prompt_ms":1.5,"predicted_n":12,"predicted_ms":30.0}}"#,
        ) else {
            panic!("a chunk");
        };
        assert!(!info.is_usage_only());
        let usage = info.usage.unwrap_or_default();
        assert_eq!(usage.prompt_tokens, Some(12));
        assert_eq!(usage.cached_tokens, Some(3));
        assert_eq!(usage.completion_tokens, Some(12));
        assert_eq!(usage.total_tokens, Some(24));
        // Where `usage` is present it wins; `timings` only fills the gaps.
        let Payload::Chunk(info) = classify(
            br#"{"choices":[],"usage":{"completion_tokens":10,"prompt_tokens":20,"total_tokens":30},"timings":{"cache_n":4,"prompt_n":16,"predicted_n":10}}"#,
        ) else {
            panic!("a chunk");
        };
        let usage = info.usage.unwrap_or_default();
        assert_eq!(usage.prompt_tokens, Some(20));
        assert_eq!(usage.cached_tokens, Some(4));
        assert!(info.is_usage_only());
    }

    #[test]
    fn usage_only_and_cached_tokens() {
        let info = chunk(
            r#"{"choices":[],"usage":{"prompt_tokens":5,"total_tokens":8,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":4}}}"#,
        );
        assert!(info.is_usage_only());
        let usage = info.usage.unwrap_or_default();
        assert_eq!(usage.prompt_tokens, Some(5));
        assert_eq!(usage.completion_tokens, Some(3));
        assert_eq!(usage.cached_tokens, Some(4));
    }

    #[test]
    fn errors_are_errors_only_without_choices() {
        assert_eq!(
            classify(br#"{"error": {"message": "x", "code": 500}}"#),
            Payload::Error
        );
        assert!(matches!(
            classify(br#"{"error": null, "choices": []}"#),
            Payload::Chunk(_)
        ));
    }

    #[test]
    fn finish_reasons() {
        let info = chunk(r#"{"choices":[{"index":1,"delta":{},"finish_reason":"length"}]}"#);
        assert_eq!(info.finish, Some((1, FinishReason::Length)));
        let info = chunk(r#"{"choices":[{"index":0,"text":"a","finish_reason":""}]}"#);
        assert_eq!(info.finish, None);
        let info = chunk(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"weird"}]}"#);
        assert_eq!(info.finish, Some((0, FinishReason::Other)));
    }

    #[test]
    fn sglang_generate_event() {
        let info = chunk(
            r#"{"text":"The cap","output_ids":[1,2],"meta_info":{"id":"x","finish_reason":{"type":"stop","matched":2},"prompt_tokens":7,"completion_tokens":2,"cached_tokens":3}}"#,
        );
        let generate = info.generate.unwrap_or_default();
        assert_eq!(generate.text_len, 7);
        assert!(generate.is_cumulative(Some(2)));
        assert_eq!(info.finish, Some((0, FinishReason::Stop)));
        let usage = info.usage.unwrap_or_default();
        assert_eq!(usage.total_tokens, Some(9));
        assert_eq!(usage.cached_tokens, Some(3));
    }

    #[test]
    fn garbage_is_other() {
        assert_eq!(classify(b"not json"), Payload::Other);
        assert_eq!(classify(b"{\"ids\":[1,2]}"), Payload::Other);
        assert_eq!(classify(b"[1,2]"), Payload::Other);
    }
}
