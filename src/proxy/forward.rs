//! Step 3, *forward*: send the request bytes to the chosen replica over the pool's keep-alive
//! client and wait (bounded) for the response head.
//!
//! The body goes out exactly as received (`Full<Bytes>`, a refcount, no copy), so a retry or a
//! mirror sends the same bytes again. Only the response *head* is awaited here, under
//! `timeouts.first_byte`; the body streams through the tap, which owns the idle and total
//! timeouts from then on.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri, Version};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::error::GatewayError;
use crate::proxy::headers;
use crate::proxy::pool::{Backend, Pool};

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

/// Sends the request to `backend` and returns its response head and streaming body.
pub async fn send(
    pool: &Pool,
    backend: &Backend,
    upstream: &Upstream,
    head_timeout: Duration,
) -> Result<Response<Incoming>, GatewayError> {
    let uri = format!("{}{}", backend.base, upstream.path)
        .parse::<Uri>()
        .map_err(|e| GatewayError::BackendFailed {
            backend: backend.name.to_string(),
            detail: format!("bad upstream URI: {e}"),
        })?;
    let mut request = Request::new(Full::new(upstream.body.clone()));
    *request.method_mut() = upstream.method.clone();
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = upstream.headers.clone();
    if let Some(key) = &pool.api_key {
        request
            .headers_mut()
            .insert(http::header::AUTHORIZATION, key.clone());
    }
    match tokio::time::timeout(head_timeout, pool.client.request(request)).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(e)) if e.is_connect() => Err(GatewayError::BackendConnect {
            backend: backend.name.to_string(),
            detail: error_chain(&e),
        }),
        Ok(Err(e)) => Err(GatewayError::BackendFailed {
            backend: backend.name.to_string(),
            detail: error_chain(&e),
        }),
        Err(_) => Err(GatewayError::Timeout {
            backend: backend.name.to_string(),
            seconds: head_timeout.as_secs_f64(),
        }),
    }
}

/// An error and its sources, `: `-joined (hyper's top-level messages alone say little).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
