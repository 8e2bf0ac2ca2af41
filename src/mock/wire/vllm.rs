//! vLLM 0.32's bytes: pydantic `model_dump_json(exclude_unset=True)` chunks (compact, raw UTF-8,
//! explicitly-set `None`s kept), the usage chunk with `choices: []`, Starlette JSON bodies with
//! every field, nested `{"error": ...}` bodies, and Python-`json.dumps` mid-stream errors.

use bytes::Bytes;

use crate::mock::wire::{
    chunk_head, done, js, python_json, sse, vllm_error_type, ChoiceResult, Ctx, PyValue, Wire,
};
use crate::openai::FinishReason;

/// vLLM's response writer.
#[derive(Debug, Default)]
pub struct Vllm;

impl Vllm {
    /// The per-chunk usage of `continuous_usage_stats` (only with `include_usage`, as in vLLM).
    fn chunk_usage(ctx: &Ctx, completion: u64) -> String {
        if ctx.include_usage && ctx.continuous_usage {
            format!(
                r#","usage":{{"prompt_tokens":{},"total_tokens":{},"completion_tokens":{completion},"completion_tokens_details":null}}"#,
                ctx.prompt_tokens,
                ctx.prompt_tokens + completion
            )
        } else {
            String::new()
        }
    }

    /// The usage chunk's object: chat adds `created_cache_tokens` to the details, completions
    /// does not (as vLLM 0.32 writes them).
    fn usage_object(ctx: &Ctx, completion: u64) -> String {
        let details = match (ctx.cached_tokens, ctx.chat) {
            (Some(cached), true) => format!(
                r#","prompt_tokens_details":{{"cached_tokens":{cached},"created_cache_tokens":{}}}"#,
                ctx.created_cache_tokens.unwrap_or(0)
            ),
            (Some(cached), false) => {
                format!(r#","prompt_tokens_details":{{"cached_tokens":{cached}}}"#)
            }
            (None, _) => String::new(),
        };
        format!(
            r#"{{"prompt_tokens":{},"total_tokens":{},"completion_tokens":{completion}{details}}}"#,
            ctx.prompt_tokens,
            ctx.prompt_tokens + completion
        )
    }
}

fn finish_json(finish: Option<FinishReason>) -> String {
    finish.map_or_else(|| "null".to_string(), |f| format!("\"{}\"", f.as_str()))
}

impl Wire for Vllm {
    fn first_output(&mut self, ctx: &Ctx, choices: u32) -> Vec<Bytes> {
        if !ctx.chat {
            return Vec::new();
        }
        (0..choices)
            .map(|index| {
                sse(&format!(
                    r#"{}{{"index":{index},"delta":{{"role":"assistant","content":""}},"logprobs":null,"finish_reason":null}}]{},"prompt_token_ids":null,"prompt_text":null}}"#,
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
        let stop_reason = if finish.is_some() {
            r#","stop_reason":null"#
        } else {
            ""
        };
        let choice = if ctx.chat {
            format!(
                r#"{{"index":{index},"delta":{{"content":{}}},"logprobs":null,"finish_reason":{}{stop_reason},"token_ids":null}}"#,
                js(text),
                finish_json(finish)
            )
        } else {
            format!(
                r#"{{"index":{index},"text":{},"logprobs":null,"finish_reason":{},"stop_reason":null,"prompt_token_ids":null,"token_ids":null}}"#,
                js(text),
                finish_json(finish)
            )
        };
        let fingerprint = if finish.is_some() && !ctx.include_usage {
            format!(r#","system_fingerprint":{}"#, js(&ctx.fingerprint))
        } else {
            String::new()
        };
        vec![sse(&format!(
            "{}{choice}]{}{fingerprint}}}",
            chunk_head(ctx),
            Self::chunk_usage(ctx, so_far)
        ))]
    }

    fn end(&mut self, ctx: &Ctx, results: &[ChoiceResult]) -> Vec<Bytes> {
        let mut out = Vec::new();
        if ctx.include_usage {
            let completion: u64 = results.iter().map(|r| r.tokens).sum();
            out.push(sse(&format!(
                r#"{}],"usage":{},"system_fingerprint":{}}}"#,
                chunk_head(ctx),
                Self::usage_object(ctx, completion),
                js(&ctx.fingerprint)
            )));
        }
        out.push(done());
        out
    }

    fn stream_error(&mut self, message: &str, status: u16) -> Vec<Bytes> {
        let event = python_json(&[(
            "error",
            PyValue::Object(vec![
                ("message", PyValue::Str(message)),
                ("type", PyValue::Str(vllm_error_type(status))),
                ("param", PyValue::Null),
                ("code", PyValue::Int(i64::from(status))),
            ]),
        )]);
        vec![sse(&event), done()]
    }

    fn body(&self, ctx: &Ctx, results: &[ChoiceResult]) -> String {
        let completion: u64 = results.iter().map(|r| r.tokens).sum();
        let created = match (ctx.chat, ctx.created_cache_tokens) {
            (true, Some(n)) => n.to_string(),
            _ => "null".to_string(),
        };
        let details = match ctx.cached_tokens {
            Some(cached) => format!(
                r#"{{"cached_tokens":{cached},"created_cache_tokens":{created},"multimodal_tokens":null}}"#
            ),
            None => "null".to_string(),
        };
        let usage = format!(
            r#"{{"prompt_tokens":{},"total_tokens":{},"completion_tokens":{completion},"prompt_tokens_details":{details},"completion_tokens_details":null}}"#,
            ctx.prompt_tokens,
            ctx.prompt_tokens + completion
        );
        let choices: Vec<String> = results
            .iter()
            .enumerate()
            .map(|(index, r)| {
                if ctx.chat {
                    format!(
                        r#"{{"index":{index},"message":{{"role":"assistant","content":{},"refusal":null,"annotations":null,"audio":null,"function_call":null,"reasoning":null}},"logprobs":null,"finish_reason":"{}","stop_reason":null,"token_ids":null,"routed_experts":null}}"#,
                        js(&r.text),
                        r.finish.as_str()
                    )
                } else {
                    format!(
                        r#"{{"index":{index},"text":{},"logprobs":null,"finish_reason":"{}","stop_reason":null,"token_ids":null,"prompt_logprobs":null,"prompt_token_ids":null,"routed_experts":null}}"#,
                        js(&r.text),
                        r.finish.as_str()
                    )
                }
            })
            .collect();
        if ctx.chat {
            format!(
                r#"{{"id":{},"object":"chat.completion","created":{},"model":{},"choices":[{}],"service_tier":null,"system_fingerprint":{},"usage":{usage},"prompt_logprobs":null,"prompt_token_ids":null,"prompt_text":null,"kv_transfer_params":null,"ec_transfer_params":null,"metrics":null}}"#,
                js(&ctx.id),
                ctx.created,
                js(&ctx.model),
                choices.join(","),
                js(&ctx.fingerprint)
            )
        } else {
            format!(
                r#"{{"id":{},"object":"text_completion","created":{},"model":{},"choices":[{}],"service_tier":null,"system_fingerprint":{},"usage":{usage},"kv_transfer_params":null,"ec_transfer_params":null,"metrics":null}}"#,
                js(&ctx.id),
                ctx.created,
                js(&ctx.model),
                choices.join(","),
                js(&ctx.fingerprint)
            )
        }
    }

    fn error_body(&self, message: &str, status: u16, param: Option<&str>) -> String {
        format!(
            r#"{{"error":{{"message":{},"type":"{}","param":{},"code":{status}}}}}"#,
            js(message),
            vllm_error_type(status),
            crate::mock::wire::js_opt(param)
        )
    }
}

/// `/v1/models`.
pub fn models(model: &str, created: u64, max_model_len: u64, perm_id: &str) -> String {
    format!(
        r#"{{"object":"list","data":[{{"id":{m},"object":"model","created":{created},"owned_by":"vllm","root":{m},"parent":null,"max_model_len":{max_model_len},"permission":[{{"id":"modelperm-{perm_id}","object":"model_permission","created":{created},"allow_create_engine":false,"allow_sampling":true,"allow_logprobs":true,"allow_search_indices":false,"allow_view":true,"allow_fine_tuning":false,"organization":"*","group":null,"is_blocking":false}}]}}]}}"#,
        m = js(model)
    )
}
