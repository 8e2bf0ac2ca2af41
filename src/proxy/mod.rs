//! The request path: in → parse → route → forward → tap → record → out.
//!
//! [`Gateway::handle`] is the only place that sequences the steps; each step is one module:
//!
//! | step | module | what it does |
//! |---|---|---|
//! | parse | [`request`] | borrow `model`, `stream`, `stream_options` from the body bytes |
//! | route | [`route`] | model → route → pool → replica (+ in-flight guard) |
//! | forward | [`forward`] | send the original bytes over the pool's keep-alive client |
//! | tap | [`tap`] | forward frames untouched, time the stream, record once |
//!
//! Errors before a response exists become OpenAI-shaped JSON with the right status and are
//! recorded through the same [`Telemetry::record`] as every other request.

pub mod forward;
pub mod headers;
pub mod models;
pub mod request;
pub mod route;
pub mod tap;
pub mod usage;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::config::{ConfigError, GatewayConfig};
use crate::error::GatewayError;
use crate::openai::Endpoint;
use crate::proxy::request::InferenceRequest;
use crate::proxy::route::RoutingTable;
use crate::proxy::tap::{RecordContext, TapBody, TapError};
use crate::telemetry::{Measurements, Outcome, RequestLabels, RequestRecord, Telemetry};

/// Everything derived from one config generation; swapped whole on reload.
#[derive(Debug)]
pub struct Snapshot {
    /// Routes, pools, clients.
    pub table: RoutingTable,
    /// `server.max_request_bytes`.
    pub max_request_bytes: u64,
    /// `usage.inject`.
    pub inject_usage: bool,
}

impl Snapshot {
    /// Builds a snapshot from a config.
    pub fn build(config: &GatewayConfig, telemetry: &Telemetry) -> Result<Self, ConfigError> {
        Ok(Self {
            table: RoutingTable::build(config, &telemetry.metrics)?,
            max_request_bytes: config.server.max_request_bytes,
            inject_usage: config.usage.inject,
        })
    }
}

/// The gateway: routing state plus the telemetry sinks.
#[derive(Debug)]
pub struct Gateway {
    snapshot: ArcSwap<Snapshot>,
    telemetry: Arc<Telemetry>,
    /// Unix time of start (`created` of model cards).
    started: u64,
}

/// The response body type of the gateway.
#[derive(Debug)]
pub enum ProxyBody {
    /// A body produced by the gateway itself (errors, model list).
    Full(Full<Bytes>),
    /// A backend's body, streaming through the tap.
    Tap(Box<TapBody<Incoming>>),
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = TapError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, TapError>>> {
        match self.get_mut() {
            Self::Full(full) => Pin::new(full)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(|never| match never {}))),
            Self::Tap(tap) => Pin::new(tap.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(full) => full.is_end_stream(),
            Self::Tap(tap) => tap.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(full) => full.size_hint(),
            Self::Tap(tap) => tap.size_hint(),
        }
    }
}

/// What is known of a request when it fails before a response exists.
struct Attempt {
    arrived: Instant,
    ts: SystemTime,
    request_id: HeaderValue,
    labels: RequestLabels,
    model: Option<String>,
}

impl Gateway {
    /// A gateway serving `config`.
    pub fn new(config: &GatewayConfig, telemetry: Arc<Telemetry>) -> Result<Self, ConfigError> {
        let snapshot = Snapshot::build(config, &telemetry)?;
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Ok(Self {
            snapshot: ArcSwap::from_pointee(snapshot),
            telemetry,
            started,
        })
    }

    /// The telemetry sinks (metrics registry, record subscribers).
    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.telemetry
    }

    /// The snapshot in effect.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Swaps in a new config generation; requests in flight finish on the old one.
    pub fn reload(&self, config: &GatewayConfig) -> Result<(), ConfigError> {
        let snapshot = Snapshot::build(config, &self.telemetry)?;
        self.snapshot.store(Arc::new(snapshot));
        Ok(())
    }

    /// Serves one request. Never fails: errors become OpenAI-shaped responses.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<ProxyBody>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut attempt = Attempt {
            arrived: Instant::now(),
            ts: SystemTime::now(),
            request_id: headers::request_id(req.headers()),
            labels: RequestLabels::unrouted(Endpoint::ChatCompletions, false),
            model: None,
        };
        match self.proxy(req, &mut attempt).await {
            Ok(response) => response,
            Err(err) => self.reject(err, attempt),
        }
    }

    async fn proxy<B>(
        &self,
        req: Request<B>,
        attempt: &mut Attempt,
    ) -> Result<Response<ProxyBody>, GatewayError>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let endpoint = endpoint_of(req.method(), req.uri().path())?;
        attempt.labels.endpoint = endpoint;
        let snapshot = self.snapshot.load_full();
        if endpoint == Endpoint::Models {
            let body = models::list(&snapshot.table, self.started).await;
            return Ok(json_response(StatusCode::OK, body, &attempt.request_id));
        }

        // in: the body, once, size-limited.
        let (parts, body) = req.into_parts();
        let body = read_body(body, snapshot.max_request_bytes).await?;

        // parse → route
        let inference = InferenceRequest::parse(endpoint, &body)?;
        attempt.labels.stream = inference.stream;
        let route = snapshot.table.route(&inference)?;
        attempt.model = inference.model().map(str::to_owned);
        attempt.labels.route = route.name.clone();
        attempt.labels.pool = route.pool.name.clone();
        attempt.labels.framework = Some(route.pool.framework);
        let guard = route.pool.pick()?;
        attempt.labels.backend = guard.backend().name.clone();
        let injected = if snapshot.inject_usage {
            usage::inject_include_usage(&body, &inference)
        } else {
            None
        };
        drop(inference);

        // forward
        let pool = &route.pool;
        let head_timeout = pool.timeouts.first_byte.min(pool.timeouts.total);
        let upstream_body = injected.clone().unwrap_or(body);
        let response = forward::send(
            pool,
            guard.backend(),
            parts,
            upstream_body,
            &attempt.request_id,
            head_timeout,
        )
        .await?;

        // tap → record → out
        let (mut head, body) = response.into_parts();
        let sse = is_event_stream(&head.headers);
        let withhold = injected.is_some() && sse;
        headers::prepare_response(&mut head.headers, &attempt.request_id, withhold);
        let record = RecordContext {
            telemetry: self.telemetry.clone(),
            labels: attempt.labels.clone(),
            request_id: attempt.request_id.to_str().unwrap_or_default().to_string(),
            model: attempt.model.take(),
            ts: attempt.ts,
            status: head.status.as_u16(),
            usage_injected: withhold,
            mirrored: false,
            guard: Some(guard),
        };
        let tap = TapBody::new(body, record, attempt.arrived, pool.timeouts, sse, withhold);
        Ok(Response::from_parts(head, ProxyBody::Tap(Box::new(tap))))
    }

    /// Turns a pre-response failure into its OpenAI-shaped response, and records it.
    fn reject(&self, err: GatewayError, attempt: Attempt) -> Response<ProxyBody> {
        let kind = err.kind();
        let status = err.status();
        let outcome = match kind {
            k if k.is_rejection() => Outcome::Rejected,
            crate::error::ErrorKind::Timeout => Outcome::Timeout,
            _ => Outcome::UpstreamError,
        };
        if status.is_server_error() {
            tracing::warn!(request_id = ?attempt.request_id, error = %err, "request failed");
        } else {
            tracing::debug!(request_id = ?attempt.request_id, error = %err, "request refused");
        }
        self.telemetry.record(RequestRecord {
            ts: attempt.ts,
            request_id: attempt.request_id.to_str().unwrap_or_default().to_string(),
            model: attempt.model,
            labels: attempt.labels,
            status: status.as_u16(),
            outcome,
            error: Some(kind),
            usage_injected: false,
            mirrored: false,
            measurements: Measurements {
                e2e: attempt.arrived.elapsed(),
                ..Measurements::default()
            },
        });
        json_response(status, err.body(), &attempt.request_id)
    }
}

/// Which endpoint a method + path is, or the 404/405 error.
fn endpoint_of(method: &Method, path: &str) -> Result<Endpoint, GatewayError> {
    match Endpoint::from_path(path) {
        Some(endpoint) if endpoint.method() == method => Ok(endpoint),
        Some(endpoint) => Err(GatewayError::MethodNotAllowed {
            method: method.to_string(),
            path: endpoint.path(),
        }),
        None => Err(GatewayError::NotFound {
            method: method.to_string(),
            path: path.chars().take(200).collect(),
        }),
    }
}

/// Reads the whole request body, refusing more than `limit` bytes.
async fn read_body<B>(body: B, limit: u64) -> Result<Bytes, GatewayError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if body.size_hint().lower() > limit {
        return Err(GatewayError::BodyTooLarge { limit });
    }
    let limit_usize = usize::try_from(limit).unwrap_or(usize::MAX);
    match Limited::new(body, limit_usize).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(GatewayError::BodyTooLarge { limit })
        }
        Err(e) => Err(GatewayError::BodyRead(e.to_string())),
    }
}

fn is_event_stream(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"))
}

fn json_response(status: StatusCode, body: Bytes, request_id: &HeaderValue) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::Full(Full::new(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(headers::X_REQUEST_ID.clone(), request_id.clone());
    response
}

// === impl tower::Service ===

/// A cloneable `tower::Service` over a shared [`Gateway`] (what the server and tests drive).
#[derive(Debug, Clone)]
pub struct GatewayService(pub Arc<Gateway>);

impl<B> tower::Service<Request<B>> for GatewayService
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let gateway = self.0.clone();
        Box::pin(async move { Ok(gateway.handle(req).await) })
    }
}
