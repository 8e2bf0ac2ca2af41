//! Errors on the request path: one enum, each variant mapped to a status code, an OpenAI-shaped
//! body and a closed [`ErrorKind`] metric label.
//!
//! These are the failures that happen *before* a response exists (the request is refused or no
//! backend answered). Failures after the response started streaming are the tap's business: they
//! end the stream with an error event and are recorded as an outcome, never turned into a status.

use bytes::Bytes;
use http::StatusCode;
use serde::Serialize;

use crate::openai::{ErrorBody, ErrorObject};

/// A request the gateway could not serve.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// No route for the requested model.
    #[error("The model `{0}` does not exist.")]
    UnknownModel(String),
    /// The body has no `model` and no default route exists.
    #[error("you must provide a model parameter")]
    MissingModel,
    /// The body is not a JSON object.
    #[error("We could not parse the JSON body of your request: {0}")]
    BadJson(String),
    /// The body exceeds `server.max_request_bytes`.
    #[error("request body is larger than the limit of {limit} bytes")]
    BodyTooLarge {
        /// The configured limit.
        limit: u64,
    },
    /// The client's body could not be read.
    #[error("could not read the request body: {0}")]
    BodyRead(String),
    /// Unknown path.
    #[error("Invalid URL ({method} {path})")]
    NotFound {
        /// Request method.
        method: String,
        /// Request path.
        path: String,
    },
    /// Known path, wrong method.
    #[error("{method} is not allowed on {path}")]
    MethodNotAllowed {
        /// Request method.
        method: String,
        /// Request path.
        path: &'static str,
    },
    /// The pool has no replica that can take the request.
    #[error("no healthy backend in pool `{pool}`")]
    NoHealthyBackend {
        /// The pool.
        pool: String,
    },
    /// TCP connect to the chosen backend failed.
    #[error("could not connect to backend `{backend}`: {detail}")]
    BackendConnect {
        /// The backend's configured name.
        backend: String,
        /// The connect error.
        detail: String,
    },
    /// The backend failed before sending a response head.
    #[error("backend `{backend}` failed before responding: {detail}")]
    BackendFailed {
        /// The backend's configured name.
        backend: String,
        /// The transport error.
        detail: String,
    },
    /// The backend sent no response head within `timeouts.first_byte` (or `total`).
    #[error("backend `{backend}` did not respond within {seconds}s")]
    Timeout {
        /// The backend's configured name.
        backend: String,
        /// The timeout that expired, in seconds.
        seconds: f64,
    },
}

/// Closed label set for errors (`servelens_errors_total{kind}` and the JSONL `error` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// See [`GatewayError::UnknownModel`].
    UnknownModel,
    /// See [`GatewayError::MissingModel`].
    MissingModel,
    /// See [`GatewayError::BadJson`].
    BadJson,
    /// See [`GatewayError::BodyTooLarge`].
    BodyTooLarge,
    /// See [`GatewayError::BodyRead`].
    BodyRead,
    /// See [`GatewayError::NotFound`].
    NotFound,
    /// See [`GatewayError::MethodNotAllowed`].
    MethodNotAllowed,
    /// See [`GatewayError::NoHealthyBackend`].
    NoHealthyBackend,
    /// See [`GatewayError::BackendConnect`].
    BackendConnect,
    /// See [`GatewayError::BackendFailed`].
    BackendFailed,
    /// See [`GatewayError::Timeout`].
    Timeout,
}

impl ErrorKind {
    /// Every kind, for metric pre-registration.
    pub const ALL: [ErrorKind; 11] = [
        Self::UnknownModel,
        Self::MissingModel,
        Self::BadJson,
        Self::BodyTooLarge,
        Self::BodyRead,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::NoHealthyBackend,
        Self::BackendConnect,
        Self::BackendFailed,
        Self::Timeout,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownModel => "unknown_model",
            Self::MissingModel => "missing_model",
            Self::BadJson => "bad_json",
            Self::BodyTooLarge => "body_too_large",
            Self::BodyRead => "body_read",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::NoHealthyBackend => "no_healthy_backend",
            Self::BackendConnect => "backend_connect",
            Self::BackendFailed => "backend_failed",
            Self::Timeout => "timeout",
        }
    }

    /// Whether the gateway refused the request itself (vs. a backend failing it).
    pub fn is_rejection(self) -> bool {
        matches!(
            self,
            Self::UnknownModel
                | Self::MissingModel
                | Self::BadJson
                | Self::BodyTooLarge
                | Self::BodyRead
                | Self::NotFound
                | Self::MethodNotAllowed
                | Self::NoHealthyBackend
        )
    }
}

impl GatewayError {
    /// The closed label for this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::UnknownModel(_) => ErrorKind::UnknownModel,
            Self::MissingModel => ErrorKind::MissingModel,
            Self::BadJson(_) => ErrorKind::BadJson,
            Self::BodyTooLarge { .. } => ErrorKind::BodyTooLarge,
            Self::BodyRead(_) => ErrorKind::BodyRead,
            Self::NotFound { .. } => ErrorKind::NotFound,
            Self::MethodNotAllowed { .. } => ErrorKind::MethodNotAllowed,
            Self::NoHealthyBackend { .. } => ErrorKind::NoHealthyBackend,
            Self::BackendConnect { .. } => ErrorKind::BackendConnect,
            Self::BackendFailed { .. } => ErrorKind::BackendFailed,
            Self::Timeout { .. } => ErrorKind::Timeout,
        }
    }

    /// The HTTP status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::UnknownModel(_) | Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::MissingModel | Self::BadJson(_) | Self::BodyRead(_) => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::NoHealthyBackend { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::BackendConnect { .. } | Self::BackendFailed { .. } => StatusCode::BAD_GATEWAY,
            Self::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The OpenAI error `type`.
    fn openai_type(&self) -> &'static str {
        match self.status().as_u16() {
            404 if matches!(self, Self::NotFound { .. }) => "invalid_request_error",
            400..=499 => "invalid_request_error",
            _ => "server_error",
        }
    }

    /// The offending parameter, when there is one.
    fn param(&self) -> Option<&'static str> {
        match self {
            Self::UnknownModel(_) | Self::MissingModel => Some("model"),
            _ => None,
        }
    }

    /// The OpenAI-shaped JSON body.
    pub fn body(&self) -> Bytes {
        let message = self.to_string();
        let code = match self {
            Self::UnknownModel(_) => "model_not_found",
            _ => self.kind().as_str(),
        };
        ErrorBody {
            error: ErrorObject {
                message: &message,
                kind: self.openai_type(),
                param: self.param(),
                code,
            },
        }
        .to_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_match_the_contract() {
        let cases = [
            (GatewayError::UnknownModel("x".into()), 404),
            (GatewayError::BadJson("eof".into()), 400),
            (GatewayError::BodyTooLarge { limit: 1 }, 413),
            (GatewayError::NoHealthyBackend { pool: "p".into() }, 503),
            (
                GatewayError::BackendConnect {
                    backend: "b".into(),
                    detail: "refused".into(),
                },
                502,
            ),
            (
                GatewayError::Timeout {
                    backend: "b".into(),
                    seconds: 1.0,
                },
                504,
            ),
        ];
        for (err, status) in cases {
            assert_eq!(err.status().as_u16(), status, "{err}");
        }
    }

    #[test]
    fn body_is_openai_shaped() {
        let body = GatewayError::UnknownModel("gpt-x".into()).body();
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "model");
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("gpt-x")));
    }
}
