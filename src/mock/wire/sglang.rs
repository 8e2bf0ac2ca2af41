//! SGLang 0.5's bytes: msgspec content chunks (`reasoning_content` always present, `role` and
//! `content` only when set, `matched_stop`), finish chunks for every choice after all content,
//! the pydantic usage chunk with every key, top-level `{"object":"error",...}` HTTP errors,
//! Python-`json.dumps` mid-stream errors with an HTTPStatus-name `type`, and the native
//! `/generate` events (cumulative `text` and `output_ids`, orjson `meta_info`).
//!
//! SGLang's non-streaming chat body is not among the captured fixtures; its shape here follows
//! `ChatCompletionResponse` in SGLang's protocol (message with `reasoning_content` and
//! `tool_calls`, `matched_stop`, usage with `reasoning_tokens`).

use std::collections::BTreeMap;

use bytes::Bytes;
use tokio::time::Instant;

use crate::mock::wire::{
    chunk_head, done, http_status_name, js, python_json, sse, ChoiceResult, Ctx, PyValue, Wire,
};
use crate::openai::FinishReason;

/// The EOS token id SGLang reports in `matched_stop` / `output_ids` (Qwen's `<|im_end|>`).
pub const EOS_ID: u64 = 151645;

/// SGLang's OpenAI-compatible writer (chat and completions).
#[derive(Debug, Default)]
pub struct Sglang {
    finished: BTreeMap<u32, FinishReason>,
}

fn matched_stop(finish: FinishReason) -> String {
    match finish {
        FinishReason::Stop => EOS_ID.to_string(),
        _ => "null".to_string(),
    }
}

impl Sglang {
    fn usage_object(ctx: &Ctx, completion: u64) -> String {
        let details = match ctx.cached_tokens {
            Some(cached) => format!(r#"{{"cached_tokens":{cached}}}"#),
            None => "null".to_string(),
        };
        format!(
            r#"{{"prompt_tokens":{},"total_tokens":{},"completion_tokens":{completion},"prompt_tokens_details":{details},"reasoning_tokens":0,"completion_tokens_details":null}}"#,
            ctx.prompt_tokens,
            ctx.prompt_tokens + completion
        )
    }

    /// Per-chunk usage (`continuous_usage_stats`, honoured without `include_usage` in SGLang).
    fn chunk_usage(ctx: &Ctx, completion: u64) -> String {
        if ctx.continuous_usage {
            format!(r#","usage":{}"#, Self::usage_object(ctx, completion))
        } else {
            String::new()
        }
    }
}

impl Wire for Sglang {
    fn first_output(&mut self, ctx: &Ctx, choices: u32) -> Vec<Bytes> {
        if !ctx.chat {
            return Vec::new();
        }
        (0..choices)
            .map(|index| {
                sse(&format!(
                    r#"{}{{"index":{index},"delta":{{"reasoning_content":null,"role":"assistant","content":""}},"logprobs":null,"finish_reason":null,"matched_stop":null}}]{}}}"#,
                    chunk_head(ctx),
                    Self::chunk_usage(ctx, 0)
                ))
            })
            .collect()
    }

    fn tokens(
        &mut self,
        ctx: &Ctx,
        index: u32,
        text: &str,
        so_far: u64,
        finish: Option<FinishReason>,
    ) -> Vec<Bytes> {
        if ctx.chat {
            if let Some(finish) = finish {
                self.finished.insert(index, finish);
            }
            // SGLang sends content chunks only for non-empty deltas.
            if text.is_empty() {
                return Vec::new();
            }
            return vec![sse(&format!(
                r#"{}{{"index":{index},"delta":{{"reasoning_content":null,"content":{}}},"logprobs":null,"finish_reason":null,"matched_stop":null}}]{}}}"#,
                chunk_head(ctx),
                js(text),
                Self::chunk_usage(ctx, so_far)
            ))];
        }
        let (reason, stop) = match finish {
            Some(f) => (format!("\"{}\"", f.as_str()), matched_stop(f)),
            None => ("null".to_string(), "null".to_string()),
        };
        vec![sse(&format!(
            r#"{}{{"index":{index},"text":{},"logprobs":null,"finish_reason":{reason},"matched_stop":{stop}}}]{}}}"#,
            chunk_head(ctx),
            js(text),
            Self::chunk_usage(ctx, so_far)
        ))]
    }

    fn end(&mut self, ctx: &Ctx, results: &[ChoiceResult]) -> Vec<Bytes> {
        let mut out: Vec<Bytes> = std::mem::take(&mut self.finished)
            .into_iter()
            .map(|(index, finish)| {
                sse(&format!(
                    r#"{}{{"index":{index},"delta":{{"reasoning_content":null}},"logprobs":null,"finish_reason":"{}","matched_stop":{}}}]}}"#,
                    chunk_head(ctx),
                    finish.as_str(),
                    matched_stop(finish)
                ))
            })
            .collect();
        if ctx.include_usage {
            let completion: u64 = results.iter().map(|r| r.tokens).sum();
            out.push(sse(&format!(
                r#"{}],"usage":{}}}"#,
                chunk_head(ctx),
                Self::usage_object(ctx, completion)
            )));
        }
        out.push(done());
        out
    }

    fn stream_error(&mut self, message: &str, status: u16) -> Vec<Bytes> {
        let event = python_json(&[(
            "error",
            PyValue::Object(vec![
                ("object", PyValue::Str("error")),
                ("message", PyValue::Str(message)),
                ("type", PyValue::Str(http_status_name(status))),
                ("param", PyValue::Null),
                ("code", PyValue::Int(i64::from(status))),
            ]),
        )]);
        vec![sse(&event), done()]
    }

    fn body(&self, ctx: &Ctx, results: &[ChoiceResult]) -> String {
        let completion: u64 = results.iter().map(|r| r.tokens).sum();
        let choices: Vec<String> = results
            .iter()
            .enumerate()
            .map(|(index, r)| {
                if ctx.chat {
                    format!(
                        r#"{{"index":{index},"message":{{"role":"assistant","content":{},"reasoning_content":null,"tool_calls":null}},"logprobs":null,"finish_reason":"{}","matched_stop":{}}}"#,
                        js(&r.text),
                        r.finish.as_str(),
                        matched_stop(r.finish)
                    )
                } else {
                    format!(
                        r#"{{"index":{index},"text":{},"logprobs":null,"finish_reason":"{}","matched_stop":{}}}"#,
                        js(&r.text),
                        r.finish.as_str(),
                        matched_stop(r.finish)
                    )
                }
            })
            .collect();
        let object = if ctx.chat {
            "chat.completion"
        } else {
            "text_completion"
        };
        format!(
            r#"{{"id":{},"object":"{object}","created":{},"model":{},"choices":[{}],"usage":{},"metadata":{{"weight_version":"default"}}}}"#,
            js(&ctx.id),
            ctx.created,
            js(&ctx.model),
            choices.join(","),
            Self::usage_object(ctx, completion)
        )
    }

    fn error_body(&self, message: &str, status: u16, _param: Option<&str>) -> String {
        format!(
            r#"{{"object":"error","message":{},"type":"{}","param":null,"code":{status}}}"#,
            js(message),
            if status == 400 {
                "BadRequestError"
            } else {
                http_status_name(status)
            }
        )
    }
}

/// SGLang's native `/generate`: cumulative `text` and `output_ids` in every event.
#[derive(Debug)]
pub struct Generate {
    started: Instant,
    text: String,
    ids: Vec<u64>,
    events: u64,
    finish: Option<FinishReason>,
}

impl Generate {
    /// A writer for a request that arrived at `started`.
    pub fn new(started: Instant) -> Self {
        Self {
            started,
            text: String::new(),
            ids: Vec::new(),
            events: 0,
            finish: None,
        }
    }

    fn event(&self, ctx: &Ctx, last: bool) -> String {
        let finish = match self.finish {
            Some(FinishReason::Stop) => format!(r#"{{"type":"stop","matched":{EOS_ID}}}"#),
            Some(_) => format!(r#"{{"type":"length","length":{}}}"#, self.ids.len()),
            None => "null".to_string(),
        };
        let ids: Vec<String> = self.ids.iter().map(u64::to_string).collect();
        let mut meta = format!(
            r#"{{"id":{},"finish_reason":{finish},"prompt_tokens":{},"weight_version":"default","num_retractions":0,"reasoning_tokens":0,"completion_tokens":{},"cached_tokens":{}"#,
            js(&ctx.id),
            ctx.prompt_tokens,
            self.ids.len(),
            ctx.cached_tokens.unwrap_or(0)
        );
        if self.events == 1 {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            meta.push_str(&format!(r#","response_sent_to_client_ts":{now}"#));
        }
        if last {
            meta.push_str(&format!(
                r#","e2e_latency":{}"#,
                self.started.elapsed().as_secs_f64()
            ));
        }
        meta.push('}');
        format!(
            r#"{{"text":{},"output_ids":[{}],"meta_info":{meta}}}"#,
            js(&self.text),
            ids.join(",")
        )
    }

    fn take(&mut self, text: &str, so_far: u64, finish: Option<FinishReason>) {
        self.text.push_str(text);
        let before = self.ids.len() as u64;
        let eos = u64::from(finish == Some(FinishReason::Stop));
        for i in before..so_far.saturating_sub(eos) {
            let piece = xxhash_rust::xxh3::xxh3_64_with_seed(text.as_bytes(), i);
            self.ids.push(100 + piece % 150_000);
        }
        if eos == 1 {
            self.ids.push(EOS_ID);
        }
        self.finish = finish;
        self.events += 1;
    }
}

impl Wire for Generate {
    fn first_output(&mut self, _: &Ctx, _: u32) -> Vec<Bytes> {
        Vec::new()
    }

    fn tokens(
        &mut self,
        ctx: &Ctx,
        _index: u32,
        text: &str,
        so_far: u64,
        finish: Option<FinishReason>,
    ) -> Vec<Bytes> {
        self.take(text, so_far, finish);
        vec![sse(&self.event(ctx, finish.is_some()))]
    }

    fn end(&mut self, _: &Ctx, _: &[ChoiceResult]) -> Vec<Bytes> {
        vec![done()]
    }

    fn stream_error(&mut self, message: &str, status: u16) -> Vec<Bytes> {
        let kind = if status < 500 {
            "invalid_request_error"
        } else {
            "server_error"
        };
        vec![
            sse(&format!(
                r#"{{"error":{{"message":{},"type":"{kind}","code":{status},"retryable":{}}}}}"#,
                js(message),
                status >= 500
            )),
            done(),
        ]
    }

    fn body(&self, ctx: &Ctx, results: &[ChoiceResult]) -> String {
        let mut writer = Generate::new(self.started);
        writer.events = 1;
        if let Some(r) = results.first() {
            writer.take(&r.text, r.tokens, Some(r.finish));
        }
        writer.event(ctx, true)
    }

    fn error_body(&self, message: &str, status: u16, _param: Option<&str>) -> String {
        format!(
            r#"{{"error":{{"message":{},"type":"invalid_request_error","code":{status}}}}}"#,
            js(message)
        )
    }
}

/// `/v1/models`.
pub fn models(model: &str, created: u64, max_model_len: u64) -> String {
    format!(
        r#"{{"object":"list","data":[{{"id":{m},"object":"model","created":{created},"owned_by":"sglang","root":{m},"parent":null,"max_model_len":{max_model_len}}}]}}"#,
        m = js(model)
    )
}
