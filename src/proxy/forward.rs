//! Step 3, *forward*: send the request bytes to the chosen replica over the pool's keep-alive
//! client and wait (bounded) for the response head.
//!
//! The body goes out exactly as received (`Full<Bytes>`, no copy). Only the response *head* is
//! awaited here, under `timeouts.first_byte`; the body streams through the tap, which owns the
//! idle and total timeouts from then on.

use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Request, Response, Uri, Version};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::error::GatewayError;
use crate::proxy::headers;
use crate::proxy::route::{Backend, Pool};

/// Sends the request to `backend` and returns its response head and streaming body.
pub async fn send(
    pool: &Pool,
    backend: &Backend,
    mut parts: Parts,
    body: Bytes,
    request_id: &HeaderValue,
    head_timeout: Duration,
) -> Result<Response<Incoming>, GatewayError> {
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = format!("{}{}", backend.base, path)
        .parse::<Uri>()
        .map_err(|e| GatewayError::BackendFailed {
            backend: backend.name.to_string(),
            detail: format!("bad upstream URI: {e}"),
        })?;
    parts.version = Version::HTTP_11;
    headers::prepare_request(&mut parts.headers, request_id, pool.api_key.as_ref());
    let request = Request::from_parts(parts, Full::new(body));
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
