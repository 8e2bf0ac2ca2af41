//! The OpenAI-compatible wire vocabulary shared by the gateway, the mock and the bench client:
//! endpoints, error bodies, and the reading of response chunks.
//!
//! Nothing here does IO. The gateway uses it to *look at* bytes it forwards untouched; the mock
//! and the bench client use it to write and read the same formats.

pub mod chunk;

use serde::Serialize;

pub use chunk::{classify, ChunkInfo, FinishReason, GenerateInfo, Payload, Usage};

/// The inference endpoints the gateway knows (a closed label set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// `POST /v1/chat/completions`.
    ChatCompletions,
    /// `POST /v1/completions`.
    Completions,
    /// `POST /v1/embeddings`.
    Embeddings,
    /// `GET /v1/models`.
    Models,
    /// SGLang's native `POST /generate`.
    Generate,
}

impl Endpoint {
    /// Every endpoint, for label pre-registration and docs.
    pub const ALL: [Endpoint; 5] = [
        Self::ChatCompletions,
        Self::Completions,
        Self::Embeddings,
        Self::Models,
        Self::Generate,
    ];

    /// Recognises a request path (query string excluded).
    pub fn from_path(path: &str) -> Option<Self> {
        Some(match path {
            "/v1/chat/completions" => Self::ChatCompletions,
            "/v1/completions" => Self::Completions,
            "/v1/embeddings" => Self::Embeddings,
            "/v1/models" => Self::Models,
            "/generate" => Self::Generate,
            _ => return None,
        })
    }

    /// The request path.
    pub fn path(self) -> &'static str {
        match self {
            Self::ChatCompletions => "/v1/chat/completions",
            Self::Completions => "/v1/completions",
            Self::Embeddings => "/v1/embeddings",
            Self::Models => "/v1/models",
            Self::Generate => "/generate",
        }
    }

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ChatCompletions => "chat_completions",
            Self::Completions => "completions",
            Self::Embeddings => "embeddings",
            Self::Models => "models",
            Self::Generate => "generate",
        }
    }

    /// The HTTP method the endpoint takes.
    pub fn method(self) -> http::Method {
        match self {
            Self::Models => http::Method::GET,
            _ => http::Method::POST,
        }
    }
}

/// An OpenAI-shaped error body: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    /// The error object.
    pub error: ErrorObject<'a>,
}

/// The inner error object of [`ErrorBody`].
#[derive(Debug, Serialize)]
pub struct ErrorObject<'a> {
    /// Human-readable explanation.
    pub message: &'a str,
    /// OpenAI error type, e.g. `invalid_request_error`.
    #[serde(rename = "type")]
    pub kind: &'a str,
    /// The offending parameter, when there is one.
    pub param: Option<&'a str>,
    /// A short machine-readable code, e.g. `model_not_found`.
    pub code: &'a str,
}

impl ErrorBody<'_> {
    /// Serialises to bytes (infallible for these field types).
    pub fn to_bytes(&self) -> bytes::Bytes {
        serde_json::to_vec(self)
            .map(bytes::Bytes::from)
            .unwrap_or_else(|_| bytes::Bytes::from_static(br#"{"error":{"message":"internal error","type":"server_error","param":null,"code":"internal_error"}}"#))
    }
}
