//! Reading an inference request the way the engines do: owned serde types (the mock's own,
//! deliberately not the gateway's borrowing parser), the prompt rendered to text, and the same
//! validation errors vLLM and SGLang answer with.

use serde::Deserialize;
use serde_json::Value;

use crate::mock::text::{count_tokens, render_chat};

/// Which inference endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Completions,
    /// SGLang's `/generate`.
    Generate,
}

/// A request refused before generation (status, message, offending parameter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status.
    pub status: u16,
    /// Message in the engine's words.
    pub message: String,
    /// The parameter at fault.
    pub param: Option<&'static str>,
}

impl Refusal {
    fn bad(message: impl Into<String>, param: Option<&'static str>) -> Self {
        Self {
            status: 400,
            message: message.into(),
            param,
        }
    }
}

/// One parsed inference request.
#[derive(Debug, Clone)]
pub struct MockRequest {
    /// The endpoint.
    pub kind: Kind,
    /// The `model` field.
    pub model: Option<String>,
    /// The prompt as the engine would see it.
    pub prompt: String,
    /// Its simulated token count.
    pub prompt_tokens: u64,
    /// `stream`.
    pub stream: bool,
    /// `stream_options.include_usage`.
    pub include_usage: bool,
    /// `stream_options.continuous_usage_stats`.
    pub continuous_usage: bool,
    /// `n` (choices).
    pub n: u32,
    /// `max_tokens` / `max_completion_tokens` / `sampling_params.max_new_tokens`.
    pub max_tokens: Option<u64>,
    /// `ignore_eos`: generate exactly `max_tokens`.
    pub ignore_eos: bool,
    /// `seed`.
    pub seed: Option<u64>,
    /// A client-chosen request id (`request_id` / SGLang `rid`).
    pub request_id: Option<String>,
}

#[derive(Deserialize)]
struct Body {
    model: Option<String>,
    messages: Option<Vec<Message>>,
    prompt: Option<Value>,
    text: Option<Value>,
    input_ids: Option<Value>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    n: Option<u32>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    ignore_eos: bool,
    seed: Option<u64>,
    request_id: Option<String>,
    rid: Option<String>,
    sampling_params: Option<SamplingParams>,
}

#[derive(Deserialize)]
struct Message {
    role: String,
    #[serde(default)]
    content: Option<Value>,
}

#[derive(Deserialize, Default)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
    #[serde(default)]
    continuous_usage_stats: Option<bool>,
}

#[derive(Deserialize, Default)]
struct SamplingParams {
    max_new_tokens: Option<u64>,
    #[serde(default)]
    ignore_eos: bool,
}

/// The text of a message `content`: a string, or the `text` parts of a list.
fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// A prompt given as text, a list of texts (first one used), or token ids.
fn prompt_text(value: &Value) -> Option<(String, Option<u64>)> {
    match value {
        Value::String(s) => Some((s.clone(), None)),
        Value::Array(items) => match items.first() {
            Some(Value::String(s)) => Some((s.clone(), None)),
            Some(Value::Number(_)) => {
                let ids: Vec<String> = items.iter().map(Value::to_string).collect();
                Some((ids.join(" "), Some(items.len() as u64)))
            }
            Some(Value::Array(first)) => prompt_text(&Value::Array(first.clone())),
            _ => None,
        },
        _ => None,
    }
}

/// Parses a request body for `kind`.
pub fn parse(kind: Kind, bytes: &[u8]) -> Result<MockRequest, Refusal> {
    let body: Body = serde_json::from_slice(bytes)
        .map_err(|e| Refusal::bad(format!("Invalid request body: {e}"), None))?;
    let (prompt, token_override) = match kind {
        Kind::Chat => {
            let messages = body
                .messages
                .as_ref()
                .ok_or_else(|| Refusal::bad("Field required: messages", Some("messages")))?;
            let contents: Vec<(String, String)> = messages
                .iter()
                .map(|m| (m.role.clone(), content_text(m.content.as_ref())))
                .collect();
            (
                render_chat(contents.iter().map(|(r, c)| (r.as_str(), c.as_str()))),
                None,
            )
        }
        Kind::Completions => body
            .prompt
            .as_ref()
            .and_then(prompt_text)
            .ok_or_else(|| Refusal::bad("Field required: prompt", Some("prompt")))?,
        Kind::Generate => body
            .text
            .as_ref()
            .or(body.input_ids.as_ref())
            .and_then(prompt_text)
            .ok_or_else(|| Refusal::bad("Either text or input_ids should be provided.", None))?,
    };
    let prompt_tokens = token_override
        .unwrap_or_else(|| count_tokens(&prompt))
        .max(1);
    let options = body.stream_options.unwrap_or_default();
    let sampling = body.sampling_params.unwrap_or_default();
    let max_tokens = match kind {
        // vLLM's CompletionRequest defaults max_tokens to 16; SGLang's max_new_tokens to 128.
        Kind::Completions => Some(body.max_tokens.unwrap_or(16)),
        Kind::Chat => body.max_completion_tokens.or(body.max_tokens),
        Kind::Generate => Some(sampling.max_new_tokens.unwrap_or(128)),
    };
    let n = body.n.unwrap_or(1);
    if n == 0 || n > 64 {
        return Err(Refusal::bad(
            format!("n must be between 1 and 64, got {n}"),
            Some("n"),
        ));
    }
    Ok(MockRequest {
        kind,
        model: body.model,
        prompt,
        prompt_tokens,
        stream: body.stream,
        include_usage: options.include_usage.unwrap_or(false),
        continuous_usage: options.continuous_usage_stats.unwrap_or(false),
        n,
        max_tokens,
        ignore_eos: body.ignore_eos || sampling.ignore_eos,
        seed: body.seed,
        request_id: body.request_id.or(body.rid),
    })
}

impl MockRequest {
    /// vLLM's context-length checks.
    pub fn check_context(&self, max_model_len: u64) -> Result<(), Refusal> {
        if let Some(max_tokens) = self.max_tokens {
            if max_tokens > max_model_len {
                return Err(Refusal::bad(
                    format!(
                        "max_tokens={max_tokens} cannot be greater than max_model_len={max_model_len}. Please request fewer output tokens. (parameter=max_tokens, value={max_tokens})"
                    ),
                    Some("max_tokens"),
                ));
            }
            if self.prompt_tokens + max_tokens > max_model_len {
                return Err(Refusal::bad(
                    format!(
                        "This model's maximum context length is {max_model_len} tokens. However, you requested {} tokens ({} in the messages, {max_tokens} in the completion). Please reduce the length of the messages or completion.",
                        self.prompt_tokens + max_tokens,
                        self.prompt_tokens
                    ),
                    Some("max_tokens"),
                ));
            }
        } else if self.prompt_tokens >= max_model_len {
            return Err(Refusal::bad(
                format!(
                    "This model's maximum context length is {max_model_len} tokens. However, your request has {} input tokens. Please reduce the length of the input messages.",
                    self.prompt_tokens
                ),
                Some("messages"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_prompt_is_rendered_and_counted() {
        let req = parse(
            Kind::Chat,
            br#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hello"}]}],"stream":true,"stream_options":{"include_usage":true},"max_tokens":7}"#,
        )
        .expect("valid");
        assert_eq!(req.prompt, "<|user|>\nhello\n<|assistant|>\n");
        assert_eq!(req.prompt_tokens, count_tokens(&req.prompt));
        assert!(req.stream && req.include_usage);
        assert_eq!(req.max_tokens, Some(7));
    }

    #[test]
    fn completions_and_generate_defaults() {
        let req = parse(Kind::Completions, br#"{"model":"m","prompt":[1,2,3]}"#).expect("valid");
        assert_eq!(req.prompt_tokens, 3);
        assert_eq!(req.max_tokens, Some(16));
        let req = parse(
            Kind::Generate,
            br#"{"text":"hi","sampling_params":{"max_new_tokens":5,"ignore_eos":true}}"#,
        )
        .expect("valid");
        assert_eq!(req.max_tokens, Some(5));
        assert!(req.ignore_eos);
    }

    #[test]
    fn refusals_name_the_problem() {
        assert_eq!(
            parse(Kind::Chat, br#"{"model":"m"}"#)
                .expect_err("no messages")
                .param,
            Some("messages")
        );
        assert_eq!(parse(Kind::Chat, b"{").expect_err("bad json").status, 400);
        let req = parse(Kind::Chat, br#"{"messages":[],"max_tokens":5000}"#).expect("valid");
        let err = req.check_context(1024).expect_err("too long");
        assert!(err
            .message
            .starts_with("max_tokens=5000 cannot be greater than max_model_len=1024"));
    }
}
