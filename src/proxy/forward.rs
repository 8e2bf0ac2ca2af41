//! Step 3, *forward*: send the request bytes to the chosen replica over one of its keep-alive
//! connections ([`upstream`](crate::proxy::upstream)) and wait (bounded) for the response head.
//!
//! The body goes out exactly as received (`Full<Bytes>`, a refcount, no copy), so a retry or a
//! mirror sends the same bytes again. Only the response *head* is awaited here, under
//! `timeouts.first_byte`; the body streams through the tap, which owns the idle and total
//! timeouts from then on.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri, Version};
use http_body_util::Full;

use crate::error::GatewayError;
use crate::proxy::headers;
use crate::proxy::pool::{Backend, Pool};
use crate::proxy::upstream::{SendError, UpstreamBody};

/// What is sent upstream, kept whole so a retry or a mirror can send it again.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Method.
    pub method: Method,
    /// Path and query.
    pub path: String,
    /// Headers, prepared for the upstream hop (the pool's `Authorization` is added per send).
    pub headers: HeaderMap,
    /// The body bytes.
    pub body: Bytes,
}

impl Upstream {
    /// Prepares the client's request for forwarding.
    pub fn new(
        method: Method,
        path: String,
        mut headers: HeaderMap,
        body: Bytes,
        request_id: &HeaderValue,
    ) -> Self {
        headers::prepare_request(&mut headers, request_id, None);
        Self {
            method,
            path,
            headers,
            body,
        }
    }
}

/// Sends the request to `backend` over one of its keep-alive connections and returns the
/// response head and a body that streams (and drives the connection).
pub async fn send(
    pool: &Pool,
    backend: &Backend,
    upstream: &Upstream,
    head_timeout: Duration,
) -> Result<Response<UpstreamBody>, GatewayError> {
    let path = format!("{}{}", backend.path_prefix, upstream.path);
    let uri = path
        .parse::<Uri>()
        .map_err(|e| GatewayError::BackendFailed {
            backend: backend.name.to_string(),
            detail: format!("bad upstream URI: {e}"),
        })?;
    let host = backend
        .host
        .clone()
        .ok_or_else(|| GatewayError::BackendFailed {
            backend: backend.name.to_string(),
            detail: format!("bad upstream authority {:?}", backend.authority),
        })?;
    let build = || {
        let mut request = Request::new(Full::new(upstream.body.clone()));
        *request.method_mut() = upstream.method.clone();
        *request.uri_mut() = uri.clone();
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = upstream.headers.clone();
        request
            .headers_mut()
            .insert(http::header::HOST, host.clone());
        if let Some(key) = &pool.api_key {
            request
                .headers_mut()
                .insert(http::header::AUTHORIZATION, key.clone());
        }
        request
    };
    let sent = backend.conns.send(
        &backend.authority,
        build,
        pool.timeouts.connect,
        pool.max_idle,
    );
    match tokio::time::timeout(head_timeout, sent).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(SendError::Connect(detail))) => Err(GatewayError::BackendConnect {
            backend: backend.name.to_string(),
            detail,
        }),
        Ok(Err(SendError::Failed(detail))) => Err(GatewayError::BackendFailed {
            backend: backend.name.to_string(),
            detail,
        }),
        Err(_) => Err(GatewayError::Timeout {
            backend: backend.name.to_string(),
            seconds: head_timeout.as_secs_f64(),
        }),
    }
}
