//! Byte-exact writers of vLLM's and SGLang's responses: the same key order, `null`
//! conventions, spacing and framing as the real servers (see `tests/fixtures/` and
//! `../shared/spec/wire-formats.md`). The generation loop reports what happened (first output,
//! tokens per choice, finish, errors); a [`Wire`] turns that into the bytes its framework sends.

pub mod sglang;
pub mod vllm;

use bytes::Bytes;

use crate::openai::FinishReason;

/// What is fixed for the whole response.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// Response id (`chatcmpl-…`, `cmpl-…`, or SGLang's 32-hex rid).
    pub id: String,
    /// Unix seconds, fixed for the stream.
    pub created: u64,
    /// The `model` field written back.
    pub model: String,
    /// vLLM's `system_fingerprint`.
    pub fingerprint: String,
    /// `stream_options.include_usage`.
    pub include_usage: bool,
    /// `stream_options.continuous_usage_stats` (vLLM honours it only with `include_usage`).
    pub continuous_usage: bool,
    /// Prompt tokens of the request.
    pub prompt_tokens: u64,
    /// Cached prompt tokens, when the server reports them.
    pub cached_tokens: Option<u64>,
    /// Prompt tokens newly written to the prefix cache (vLLM's `created_cache_tokens`).
    pub created_cache_tokens: Option<u64>,
    /// Chat completions (vs text completions).
    pub chat: bool,
}

/// A choice's final state.
#[derive(Debug, Clone)]
pub struct ChoiceResult {
    /// The whole generated text.
    pub text: String,
    /// Why it stopped.
    pub finish: FinishReason,
    /// Tokens generated (EOS included).
    pub tokens: u64,
    /// Generated token ids (SGLang `/generate`).
    pub ids: Vec<u64>,
}

/// One framework's response writer.
pub trait Wire: Send {
    /// Chunks sent when the first output exists (vLLM/SGLang chat: the role chunks).
    fn first_output(&mut self, ctx: &Ctx, choices: u32) -> Vec<Bytes>;
    /// A chunk for choice `index` carrying `text` (`tokens` new tokens); `finish` when this is
    /// its last step. `so_far` is the choice's cumulative token count after this step.
    fn tokens(
        &mut self,
        ctx: &Ctx,
        index: u32,
        text: &str,
        so_far: u64,
        finish: Option<FinishReason>,
    ) -> Vec<Bytes>;
    /// Everything after the last token chunk, `[DONE]` included.
    fn end(&mut self, ctx: &Ctx, results: &[ChoiceResult]) -> Vec<Bytes>;
    /// A mid-stream error event (and what follows it).
    fn stream_error(&mut self, message: &str, status: u16) -> Vec<Bytes>;
    /// The non-streaming body.
    fn body(&self, ctx: &Ctx, results: &[ChoiceResult]) -> String;
    /// An HTTP error body in the framework's shape.
    fn error_body(&self, message: &str, status: u16, param: Option<&str>) -> String;
}

/// The opening of a stream chunk up to its `choices` array, the same in vLLM and SGLang:
/// `{"id":…,"object":…,"created":…,"model":…,"choices":[`.
pub fn chunk_head(ctx: &Ctx) -> String {
    let object = if ctx.chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    format!(
        r#"{{"id":{},"object":"{object}","created":{},"model":{},"choices":["#,
        js(&ctx.id),
        ctx.created,
        js(&ctx.model)
    )
}

/// `data: <payload>\n\n`.
pub fn sse(payload: &str) -> Bytes {
    let mut out = String::with_capacity(payload.len() + 8);
    out.push_str("data: ");
    out.push_str(payload);
    out.push_str("\n\n");
    Bytes::from(out)
}

/// `data: [DONE]\n\n`.
pub fn done() -> Bytes {
    Bytes::from_static(b"data: [DONE]\n\n")
}

/// A JSON string literal (raw UTF-8, as pydantic, msgspec and orjson write).
pub fn js(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

/// `null` or a JSON string.
pub fn js_opt(s: Option<&str>) -> String {
    s.map_or_else(|| "null".to_string(), js)
}

/// Python's `json.dumps` default output for an error object: `", "` and `": "` separators and
/// ASCII escapes (`ensure_ascii`), which is how vLLM and SGLang write mid-stream errors.
pub fn python_json(pairs: &[(&str, PyValue<'_>)]) -> String {
    let mut out = String::from("{");
    for (i, (key, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&ascii_js(key));
        out.push_str(": ");
        match value {
            PyValue::Str(s) => out.push_str(&ascii_js(s)),
            PyValue::Int(n) => out.push_str(&n.to_string()),
            PyValue::Null => out.push_str("null"),
            PyValue::Object(inner) => out.push_str(&python_json(inner)),
        }
    }
    out.push('}');
    out
}

/// A value in [`python_json`].
#[derive(Debug, Clone)]
pub enum PyValue<'a> {
    /// A string.
    Str(&'a str),
    /// An integer.
    Int(i64),
    /// `null`.
    Null,
    /// A nested object.
    Object(Vec<(&'a str, PyValue<'a>)>),
}

fn ascii_js(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The OpenAI `type` vLLM writes for a status code.
pub fn vllm_error_type(status: u16) -> &'static str {
    match status {
        400 => "BadRequestError",
        401 => "AuthenticationError",
        404 => "NotFoundError",
        429 => "RateLimitError",
        503 => "ServiceUnavailableError",
        _ => "InternalServerError",
    }
}

/// Python's `HTTPStatus(code).name`, which SGLang writes as the error `type` for aborts.
pub fn http_status_name(status: u16) -> &'static str {
    match status {
        400 => "BAD_REQUEST",
        404 => "NOT_FOUND",
        429 => "TOO_MANY_REQUESTS",
        500 => "INTERNAL_SERVER_ERROR",
        503 => "SERVICE_UNAVAILABLE",
        _ => "INTERNAL_SERVER_ERROR",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_json_matches_json_dumps() {
        let s = python_json(&[(
            "error",
            PyValue::Object(vec![
                ("message", PyValue::Str("caf\u{e9} \"x\"")),
                ("param", PyValue::Null),
                ("code", PyValue::Int(500)),
            ]),
        )]);
        assert_eq!(
            s,
            r#"{"error": {"message": "caf\u00e9 \"x\"", "param": null, "code": 500}}"#
        );
    }
}
