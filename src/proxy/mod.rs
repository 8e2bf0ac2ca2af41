//! The request path: in → parse → route → forward → tap → record → out.
//!
//! [`Gateway::handle`] is the only place that sequences the steps; each step is one module:
//!
//! | step | module | what it does |
//! |---|---|---|
//! | parse | [`request`] | borrow `model`, `stream`, `stream_options` from the body bytes |
//! | route | [`route`] | model → route → pool → replica (+ in-flight guard) |
//! | forward | [`forward`] | send the original bytes over a keep-alive [`upstream`] connection |
//! | tap | [`tap`] | forward frames untouched, time the stream, record once |
//!
//! Errors before a response exists become OpenAI-shaped JSON with the right status and are
//! recorded through the same [`Telemetry::record`] as every other request.

pub mod discovery;
pub mod forward;
pub mod headers;
pub mod health;
pub mod models;
pub mod pool;
pub mod request;
pub mod route;
pub mod scrape;
pub mod tap;
pub mod upstream;
pub mod usage;
pub mod withhold;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::proxy::upstream::UpstreamBody;
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full, Limited};
use tokio::time::Instant;

use crate::config::{BackendAddr, ConfigError, GatewayConfig};
use crate::error::{ErrorKind, GatewayError};
use crate::openai::Endpoint;
use crate::proxy::forward::Upstream;
use crate::proxy::pool::{BackendRegistry, InflightGuard, Pool, RouteKey};
use crate::proxy::request::InferenceRequest;
use crate::proxy::route::RoutingTable;
use crate::proxy::tap::{RecordContext, TapBody, TapError};
use crate::routing::ring::ReplicaSet;
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
    /// The config it was built from (DNS refreshes rebuild from it).
    pub config: Arc<GatewayConfig>,
}

/// The gateway: routing state plus the telemetry sinks.
#[derive(Debug)]
pub struct Gateway {
    snapshot: ArcSwap<Snapshot>,
    telemetry: Arc<Telemetry>,
    registry: BackendRegistry,
    /// Current addresses of pools with DNS discovery.
    resolved: Mutex<HashMap<String, Vec<BackendAddr>>>,
    /// Unix time of start (`created` of model cards).
    started: u64,
}

/// The response body type of the gateway.
#[derive(Debug)]
pub enum ProxyBody {
    /// A body produced by the gateway itself (errors, model list).
    Full(Full<Bytes>),
    /// A backend's body, streaming through the tap.
    Tap(Box<TapBody<UpstreamBody>>),
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

/// What is known of a request while it is being routed (for its record if it fails).
struct Attempt {
    arrived: Instant,
    ts: SystemTime,
    request_id: HeaderValue,
    labels: RequestLabels,
    model: Option<String>,
    /// Where the record goes if the request ends here.
    telemetry: Arc<Telemetry>,
    /// Nobody has taken over recording yet (neither a refusal nor the tap).
    open: bool,
}

impl Attempt {
    fn request_id(&self) -> String {
        self.request_id.to_str().unwrap_or_default().to_string()
    }

    /// Someone else records this request (the tap), or it is not recorded (model list).
    fn hand_over(&mut self) {
        self.open = false;
    }

    /// Records the request as ended before any backend response reached the client (a
    /// refusal, a failure, or the client leaving); nothing records it again.
    fn record_unanswered(&mut self, status: u16, outcome: Outcome, error: Option<ErrorKind>) {
        self.open = false;
        self.telemetry.record(RequestRecord {
            ts: self.ts,
            request_id: self.request_id(),
            model: self.model.take(),
            labels: self.labels.clone(),
            status,
            outcome,
            error,
            usage_injected: false,
            mirrored: false,
            measurements: Measurements {
                e2e: self.arrived.elapsed(),
                ..Measurements::default()
            },
        });
    }
}

/// The handler was dropped before a response existed: hyper drops it when the client goes
/// away while the backend has not answered yet (a queue, a long prefill). Dropping it also
/// dropped the upstream connection, so the engine aborts; this records the request once.
impl Drop for Attempt {
    fn drop(&mut self) {
        if self.open {
            self.record_unanswered(CLIENT_CLOSED_REQUEST, Outcome::ClientCancelled, None);
        }
    }
}

/// Status recorded for a client that left before any response (nginx's convention).
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

/// The request after parsing and routing, ready to be sent.
struct Routed {
    pool: Arc<Pool>,
    key: Option<RouteKey>,
    upstream: Upstream,
    usage_injected: bool,
}

impl Gateway {
    /// A gateway serving `config`.
    pub fn new(config: &GatewayConfig, telemetry: Arc<Telemetry>) -> Result<Self, ConfigError> {
        let registry = BackendRegistry::new();
        let snapshot = build_snapshot(config, &HashMap::new(), &registry, &telemetry)?;
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Ok(Self {
            snapshot: ArcSwap::from_pointee(snapshot),
            telemetry,
            registry,
            resolved: Mutex::new(HashMap::new()),
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

    /// Validates `config`, builds a new routing table and swaps it in; requests in flight
    /// finish on the old one. On error the old table stays.
    pub fn reload(&self, config: &GatewayConfig) -> Result<(), ConfigError> {
        let resolved = self
            .resolved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let snapshot = build_snapshot(config, &resolved, &self.registry, &self.telemetry)?;
        self.snapshot.store(Arc::new(snapshot));
        Ok(())
    }

    /// Current addresses of DNS-discovered pools.
    pub fn resolved(&self) -> HashMap<String, Vec<BackendAddr>> {
        self.resolved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the resolved addresses of DNS-discovered pools and rebuilds the table if they
    /// changed.
    pub fn set_resolved(
        &self,
        resolved: HashMap<String, Vec<BackendAddr>>,
    ) -> Result<bool, ConfigError> {
        {
            let mut current = self.resolved.lock().unwrap_or_else(|p| p.into_inner());
            if *current == resolved {
                return Ok(false);
            }
            *current = resolved;
        }
        let config = self.snapshot().config.clone();
        self.reload(&config)?;
        Ok(true)
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
            telemetry: self.telemetry.clone(),
            open: true,
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
            attempt.hand_over();
            return Ok(json_response(StatusCode::OK, body, &attempt.request_id));
        }

        // in: the body, once, size-limited.
        let (parts, body) = req.into_parts();
        let body = read_body(body, snapshot.max_request_bytes).await?;

        // parse → route
        let routed = self.route(&snapshot, parts, body, attempt)?;

        // forward (with retries before any byte reaches the client)
        let (response, guard) = self.forward(&routed, attempt).await?;

        // tap → record → out
        let (mut head, body) = response.into_parts();
        let sse = is_event_stream(&head.headers);
        let withhold = routed.usage_injected && sse;
        headers::prepare_response(&mut head.headers, &attempt.request_id, withhold);
        let record = RecordContext {
            telemetry: self.telemetry.clone(),
            labels: attempt.labels.clone(),
            request_id: attempt.request_id(),
            model: attempt.model.take(),
            ts: attempt.ts,
            status: head.status.as_u16(),
            usage_injected: withhold,
            mirrored: false,
            guard: Some(guard),
            ejection: routed.pool.ejection,
        };
        let tap = TapBody::new(
            body,
            record,
            attempt.arrived,
            routed.pool.timeouts,
            sse,
            withhold,
        );
        attempt.hand_over();
        Ok(Response::from_parts(head, ProxyBody::Tap(Box::new(tap))))
    }

    /// Parses the body, chooses route, arm and pool, computes the routing key, prepares the
    /// upstream request and starts the mirror copy if the route mirrors this request.
    fn route(
        &self,
        snapshot: &Snapshot,
        parts: http::request::Parts,
        body: Bytes,
        attempt: &mut Attempt,
    ) -> Result<Routed, GatewayError> {
        let inference = InferenceRequest::parse(attempt.labels.endpoint, &body)?;
        attempt.labels.stream = inference.stream;
        let choice =
            snapshot
                .table
                .choose(&inference, &parts.headers, attempt.request_id.as_bytes())?;
        attempt.model = inference.model().map(str::to_owned);
        attempt.labels.route = choice.route.name.clone();
        attempt.labels.pool = choice.pool.name.clone();
        attempt.labels.arm = choice.arm.clone();
        attempt.labels.framework = Some(choice.pool.framework);
        let key = choice.pool.routing_key(&inference, &parts.headers);
        let injected =
            if snapshot.inject_usage && choice.pool.framework.usage_injection_is_invisible() {
                usage::inject_include_usage(&body, &inference)
            } else {
                None
            };
        let mirror = choice
            .route
            .mirror
            .as_ref()
            .filter(|m| m.selects(attempt.request_id.as_bytes()))
            .map(|m| {
                (
                    m.pool.clone(),
                    m.pool.routing_key(&inference, &parts.headers),
                )
            });
        let pool = choice.pool.clone();
        drop(inference);
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let usage_injected = injected.is_some();
        let upstream = Upstream::new(
            parts.method,
            path,
            parts.headers,
            injected.unwrap_or(body),
            &attempt.request_id,
        );
        if let Some((shadow, shadow_key)) = mirror {
            self.mirror(
                shadow,
                shadow_key,
                upstream.clone(),
                attempt,
                usage_injected,
            );
        }
        Ok(Routed {
            pool,
            key,
            upstream,
            usage_injected,
        })
    }

    /// Sends to the chosen replica; on a connect error, 5xx or 429 before any byte has reached
    /// the client, tries the next replica (bounded by `retries.attempts` and the budget).
    async fn forward(
        &self,
        routed: &Routed,
        attempt: &mut Attempt,
    ) -> Result<(Response<UpstreamBody>, InflightGuard), GatewayError> {
        let pool = &routed.pool;
        pool.budget.deposit();
        let mut tried = ReplicaSet::new();
        let mut retries = 0;
        loop {
            let picked = pool.pick(routed.key, &tried)?;
            tried.insert(picked.index);
            let backend = picked.guard.backend().clone();
            attempt.labels.backend = backend.name.clone();
            let timeout = head_timeout(pool, attempt.arrived);
            let result = forward::send(pool, &backend, &routed.upstream, timeout).await;
            let retryable = match &result {
                Ok(response) => {
                    let status = response.status();
                    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS
                }
                Err(e) => matches!(
                    e.kind(),
                    ErrorKind::BackendConnect | ErrorKind::BackendFailed
                ),
            };
            let failed_backend = match &result {
                Ok(response) => matches!(response.status().as_u16(), 502..=504),
                Err(_) => true,
            };
            if failed_backend {
                backend.record_failure(&pool.ejection);
            }
            let may_retry = retryable
                && retries < pool.retries.attempts
                && tried.len() < pool.backends.len()
                && pool.budget.try_withdraw();
            if may_retry {
                retries += 1;
                pool.count_retry();
                tracing::debug!(backend = %backend.name, retries, "retrying on another replica");
                continue;
            }
            return result.map(|response| (response, picked.guard));
        }
    }

    /// Sends a shadow copy to `pool`, reads and times the whole response, records it with
    /// `mirrored = true`. Runs on its own task: it never reaches or slows the client.
    fn mirror(
        &self,
        pool: Arc<Pool>,
        key: Option<RouteKey>,
        upstream: Upstream,
        attempt: &Attempt,
        usage_injected: bool,
    ) {
        let telemetry = self.telemetry.clone();
        let mut labels = attempt.labels.clone();
        labels.pool = pool.name.clone();
        labels.framework = Some(pool.framework);
        let (request_id, model, ts, arrived) = (
            attempt.request_id(),
            attempt.model.clone(),
            attempt.ts,
            attempt.arrived,
        );
        tokio::spawn(async move {
            let Ok(picked) = pool.pick(key, &ReplicaSet::new()) else {
                return;
            };
            let backend = picked.guard.backend().clone();
            labels.backend = backend.name.clone();
            let timeout = head_timeout(&pool, arrived);
            let response = match forward::send(&pool, &backend, &upstream, timeout).await {
                Ok(response) => response,
                Err(err) => {
                    telemetry.record(RequestRecord {
                        ts,
                        request_id,
                        model,
                        labels,
                        status: err.status().as_u16(),
                        outcome: if err.kind() == ErrorKind::Timeout {
                            Outcome::Timeout
                        } else {
                            Outcome::UpstreamError
                        },
                        error: Some(err.kind()),
                        usage_injected: false,
                        mirrored: true,
                        measurements: Measurements {
                            e2e: arrived.elapsed(),
                            ..Measurements::default()
                        },
                    });
                    return;
                }
            };
            let (head, body) = response.into_parts();
            let sse = is_event_stream(&head.headers);
            let record = RecordContext {
                telemetry,
                labels,
                request_id,
                model,
                ts,
                status: head.status.as_u16(),
                usage_injected: usage_injected && sse,
                mirrored: true,
                guard: Some(picked.guard),
                ejection: pool.ejection,
            };
            let mut tap = TapBody::new(body, record, arrived, pool.timeouts, sse, false);
            while let Some(frame) = tap.frame().await {
                if frame.is_err() {
                    break;
                }
            }
        });
    }

    /// Turns a pre-response failure into its OpenAI-shaped response, and records it.
    fn reject(&self, err: GatewayError, mut attempt: Attempt) -> Response<ProxyBody> {
        let kind = err.kind();
        let status = err.status();
        let outcome = match kind {
            k if k.is_rejection() => Outcome::Rejected,
            ErrorKind::Timeout => Outcome::Timeout,
            _ => Outcome::UpstreamError,
        };
        if status.is_server_error() {
            tracing::warn!(request_id = ?attempt.request_id, error = %err, "request failed");
        } else {
            tracing::debug!(request_id = ?attempt.request_id, error = %err, "request refused");
        }
        attempt.record_unanswered(status.as_u16(), outcome, Some(kind));
        json_response(status, err.body(), &attempt.request_id)
    }
}

fn build_snapshot(
    config: &GatewayConfig,
    resolved: &HashMap<String, Vec<BackendAddr>>,
    registry: &BackendRegistry,
    telemetry: &Telemetry,
) -> Result<Snapshot, ConfigError> {
    Ok(Snapshot {
        table: RoutingTable::build(config, resolved, registry, &telemetry.metrics)?,
        max_request_bytes: config.server.max_request_bytes,
        inject_usage: config.usage.inject,
        config: Arc::new(config.clone()),
    })
}

/// The time left for a response head: `first_byte`, within what remains of `total`.
fn head_timeout(pool: &Pool, arrived: Instant) -> Duration {
    let left = pool.timeouts.total.saturating_sub(arrived.elapsed());
    pool.timeouts
        .first_byte
        .min(left)
        .max(Duration::from_millis(1))
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
