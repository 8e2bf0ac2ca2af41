//! The timeline of one response: when each event arrived and what it carried, turned into the
//! measurements of DESIGN.md §3 (TTFB, TTFT, ITLs, TPOT, E2E, tokens).
//!
//! Definitions (the same on the client side in `bench`):
//! - TTFB: arrival → first data event with `choices` (the role chunk), or first body byte for a
//!   non-streaming response;
//! - TTFT: arrival → first event carrying non-empty `content`, `reasoning_content`, `reasoning`,
//!   `tool_calls` or completions `text` (SGLang `/generate`: the first event whose text grows);
//! - ITL: one sample per content event after the first, the gap to the previous content event;
//! - E2E: arrival → last byte; TPOT: (E2E − TTFT) / (output_tokens − 1);
//! - output tokens from `usage` when the backend sent it, else the count of content events,
//!   flagged as estimated.
//!
//! All instants are `tokio::time::Instant`, so tests on paused time assert exact values.

use std::time::Duration;

use tokio::time::Instant;

use crate::openai::{ChunkInfo, FinishReason, Payload, Usage};

/// What a response has shown so far.
#[derive(Debug, Clone)]
pub struct Timeline {
    /// When the request reached the gateway.
    arrived: Instant,
    /// First data event with choices (streams) or first body byte (other bodies).
    first_byte: Option<Instant>,
    /// First content-bearing event.
    first_token: Option<Instant>,
    /// Latest content-bearing event.
    last_token: Option<Instant>,
    /// Gaps between consecutive content-bearing events.
    itl: Vec<Duration>,
    /// Data events with a non-empty `choices` (or `/generate` events).
    chunks: u32,
    /// Content-bearing events.
    content_events: u32,
    /// Latest `usage` seen (the final usage event wins over continuous usage).
    usage: Option<Usage>,
    /// Finish reason of choice 0 (or of the first choice that finished).
    finish: Option<(u32, FinishReason)>,
    /// `data: [DONE]` was seen.
    done: bool,
    /// A mid-stream `{"error": ...}` event was seen.
    error_event: bool,
    /// Raw length of the last cumulative `/generate` text.
    generate_text_len: usize,
}

/// The measurements of one finished request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Measurements {
    /// Arrival → first byte / role chunk.
    pub ttfb: Option<Duration>,
    /// Arrival → first content event (streams only).
    pub ttft: Option<Duration>,
    /// Arrival → last byte (or → the moment the request ended).
    pub e2e: Duration,
    /// (E2E − TTFT) / (output_tokens − 1), when output_tokens > 1.
    pub tpot: Option<Duration>,
    /// Every inter-token (inter-content-event) gap.
    pub itl: Vec<Duration>,
    /// `usage.prompt_tokens`.
    pub prompt_tokens: Option<u64>,
    /// `usage.prompt_tokens_details.cached_tokens`.
    pub cached_tokens: Option<u64>,
    /// `usage.completion_tokens`, or the content-event count when the backend sent no usage.
    pub output_tokens: Option<u64>,
    /// `output_tokens` is a count of content events, not the backend's figure.
    pub output_tokens_estimated: bool,
    /// Data events with choices.
    pub chunks: u32,
    /// Content-bearing events.
    pub content_events: u32,
    /// Why generation stopped.
    pub finish_reason: Option<FinishReason>,
    /// `[DONE]` was seen.
    pub done: bool,
    /// A mid-stream error event was seen.
    pub error_event: bool,
}

impl Timeline {
    /// A timeline for a request that arrived at `arrived`.
    pub fn new(arrived: Instant) -> Self {
        Self {
            arrived,
            first_byte: None,
            first_token: None,
            last_token: None,
            itl: Vec::new(),
            chunks: 0,
            content_events: 0,
            usage: None,
            finish: None,
            done: false,
            error_event: false,
            generate_text_len: 0,
        }
    }

    /// When the request arrived.
    pub fn arrived(&self) -> Instant {
        self.arrived
    }

    /// Marks the first body byte of a non-SSE response.
    pub fn first_byte(&mut self, now: Instant) {
        self.first_byte.get_or_insert(now);
    }

    /// Whether `[DONE]` was seen.
    pub fn saw_done(&self) -> bool {
        self.done
    }

    /// Whether a mid-stream error event was seen.
    pub fn saw_error_event(&self) -> bool {
        self.error_event
    }

    /// Takes in one SSE data payload that arrived at `now`.
    pub fn observe(&mut self, payload: &Payload, now: Instant) {
        match payload {
            Payload::Done => self.done = true,
            Payload::Error => self.error_event = true,
            Payload::Chunk(info) => self.observe_chunk(info, now),
            Payload::Other => {}
        }
    }

    /// Takes in a whole non-streaming body: only its usage and finish reason count.
    pub fn observe_body(&mut self, payload: &Payload) {
        match payload {
            Payload::Chunk(info) => {
                self.take_usage_and_finish(info);
            }
            Payload::Error => self.error_event = true,
            Payload::Done | Payload::Other => {}
        }
    }

    fn observe_chunk(&mut self, info: &ChunkInfo, now: Instant) {
        let content = match info.generate {
            Some(generate) => {
                self.chunks += 1;
                self.first_byte.get_or_insert(now);
                let completion = info.usage.and_then(|u| u.completion_tokens);
                if generate.is_cumulative(completion) {
                    let grew = generate.text_len > self.generate_text_len;
                    self.generate_text_len = generate.text_len;
                    grew
                } else {
                    generate.text_len > 0
                }
            }
            None => {
                if info.choices.unwrap_or(0) > 0 {
                    self.chunks += 1;
                    self.first_byte.get_or_insert(now);
                }
                info.content
            }
        };
        if content {
            self.content_events += 1;
            match self.last_token {
                Some(last) => self.itl.push(now.saturating_duration_since(last)),
                None => self.first_token = Some(now),
            }
            self.last_token = Some(now);
        }
        self.take_usage_and_finish(info);
    }

    fn take_usage_and_finish(&mut self, info: &ChunkInfo) {
        if let Some(usage) = info.usage {
            self.usage = Some(usage);
        }
        if let Some((index, reason)) = info.finish {
            let replace = match self.finish {
                None => true,
                Some((current, _)) => index == 0 && current != 0,
            };
            if replace {
                self.finish = Some((index, reason));
            }
        }
    }

    /// The measurements, with the request ending at `ended`.
    pub fn measure(self, ended: Instant) -> Measurements {
        let since = |t: Instant| t.saturating_duration_since(self.arrived);
        let e2e = since(ended);
        let ttft = self.first_token.map(since);
        let usage = self.usage.unwrap_or_default();
        let (output_tokens, estimated) = match usage.completion_tokens {
            Some(n) => (Some(n), false),
            None if self.content_events > 0 => (Some(u64::from(self.content_events)), true),
            None => (None, false),
        };
        let tpot = match (ttft, output_tokens) {
            (Some(ttft), Some(n)) if n > 1 => {
                let decode = e2e.saturating_sub(ttft);
                u32::try_from(n - 1).ok().map(|steps| decode / steps)
            }
            _ => None,
        };
        Measurements {
            ttfb: self.first_byte.map(since),
            ttft,
            e2e,
            tpot,
            itl: self.itl,
            prompt_tokens: usage.prompt_tokens,
            cached_tokens: usage.cached_tokens,
            output_tokens,
            output_tokens_estimated: estimated,
            chunks: self.chunks,
            content_events: self.content_events,
            finish_reason: self.finish.map(|(_, r)| r),
            done: self.done,
            error_event: self.error_event,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::classify;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn role_chunk_is_ttfb_and_content_is_ttft() {
        let t0 = Instant::now();
        let mut tl = Timeline::new(t0);
        let events: [(&[u8], u64); 5] = [
            (
                br#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
                10,
            ),
            (br#"{"choices":[{"index":0,"delta":{"content":"a"}}]}"#, 30),
            (br#"{"choices":[{"index":0,"delta":{"content":"b"}}]}"#, 45),
            (
                br#"{"choices":[{"index":0,"delta":{"content":""},"finish_reason":"stop"}]}"#,
                50,
            ),
            (b"[DONE]", 51),
        ];
        for (payload, ms) in events {
            tl.observe(&classify(payload), at(t0, ms));
        }
        let m = tl.measure(at(t0, 52));
        assert_eq!(m.ttfb, Some(Duration::from_millis(10)));
        assert_eq!(m.ttft, Some(Duration::from_millis(30)));
        assert_eq!(m.itl, vec![Duration::from_millis(15)]);
        assert_eq!(m.e2e, Duration::from_millis(52));
        assert_eq!(m.output_tokens, Some(2));
        assert!(m.output_tokens_estimated);
        assert_eq!(m.tpot, Some(Duration::from_millis(22)));
        assert_eq!(m.chunks, 4);
        assert_eq!(m.finish_reason, Some(FinishReason::Stop));
        assert!(m.done);
    }

    #[test]
    fn usage_wins_over_counting() {
        let t0 = Instant::now();
        let mut tl = Timeline::new(t0);
        tl.observe(
            &classify(br#"{"choices":[{"delta":{"content":"abc"}}]}"#),
            at(t0, 5),
        );
        tl.observe(
            &classify(br#"{"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":3}}"#),
            at(t0, 6),
        );
        let m = tl.measure(at(t0, 7));
        assert_eq!(m.output_tokens, Some(3));
        assert!(!m.output_tokens_estimated);
        assert_eq!(m.prompt_tokens, Some(4));
        assert_eq!(m.chunks, 1, "the usage-only event is not a chunk");
    }

    #[test]
    fn finish_reason_prefers_choice_zero() {
        let t0 = Instant::now();
        let mut tl = Timeline::new(t0);
        tl.observe(
            &classify(br#"{"choices":[{"index":1,"delta":{},"finish_reason":"stop"}]}"#),
            t0,
        );
        tl.observe(
            &classify(br#"{"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}"#),
            t0,
        );
        assert_eq!(tl.measure(t0).finish_reason, Some(FinishReason::Length));
    }
}
