//! A backend that replays recorded responses byte for byte on a fixed schedule.
//!
//! Used by the integration tests (the fixtures in `tests/fixtures/` are real or reconstructed
//! vLLM/SGLang/TGI/... streams). Each request is answered by a caller-supplied function
//! returning a [`Script`]: status, headers and body pieces, each with
//! the offset from the request's arrival at which it is written. Under paused tokio time the
//! offsets are exact, so a test can assert the gateway measured precisely the scripted TTFT/ITL.
//!
//! The server remembers every request it received (to check byte-exact forwarding) and counts
//! responses abandoned before their last piece (to check that a client disconnect reached it).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

/// One scripted response.
#[derive(Debug, Clone)]
pub struct Script {
    /// Status code.
    pub status: StatusCode,
    /// Response headers.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Body pieces with their offset from the request's arrival.
    pub pieces: Vec<(Duration, Bytes)>,
}

impl Script {
    /// An SSE stream cut into its events (after each blank line); event `i` is written at
    /// `first + i * gap`.
    pub fn sse(stream: &[u8], first: Duration, gap: Duration) -> Self {
        let events = split_events(stream);
        let pieces = events
            .into_iter()
            .enumerate()
            .map(|(i, event)| (first + gap * u32::try_from(i).unwrap_or(u32::MAX), event))
            .collect();
        Self {
            status: StatusCode::OK,
            headers: vec![(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream; charset=utf-8"),
            )],
            pieces,
        }
    }

    /// A JSON body sent in one piece after `delay`.
    pub fn json(status: StatusCode, body: impl Into<Bytes>, delay: Duration) -> Self {
        let body = body.into();
        Self {
            status,
            headers: vec![
                (
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                ),
                (http::header::CONTENT_LENGTH, HeaderValue::from(body.len())),
            ],
            pieces: vec![(delay, body)],
        }
    }

    /// The same script with the body re-cut into pieces of at most `size` bytes, each piece
    /// keeping the offset of the piece it came from.
    pub fn rechunked(mut self, size: usize) -> Self {
        let size = size.max(1);
        self.pieces = self
            .pieces
            .into_iter()
            .flat_map(|(at, bytes)| {
                (0..bytes.len())
                    .step_by(size)
                    .map(|i| (at, bytes.slice(i..(i + size).min(bytes.len()))))
                    .collect::<Vec<_>>()
            })
            .collect();
        self
    }

    /// The whole body, concatenated.
    pub fn body(&self) -> Vec<u8> {
        self.pieces
            .iter()
            .flat_map(|(_, b)| b.iter().copied())
            .collect()
    }
}

/// Splits an SSE byte stream after every `\n\n` (the last piece keeps any unterminated tail).
pub fn split_events(stream: &[u8]) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + 1 < stream.len() {
        if stream[i] == b'\n' && stream[i + 1] == b'\n' {
            out.push(Bytes::copy_from_slice(&stream[start..i + 2]));
            start = i + 2;
            i += 2;
        } else {
            i += 1;
        }
    }
    if start < stream.len() {
        out.push(Bytes::copy_from_slice(&stream[start..]));
    }
    out
}

/// A request as the replay server received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// Method.
    pub method: Method,
    /// Path and query.
    pub path: String,
    /// Headers.
    pub headers: HeaderMap,
    /// The exact body bytes.
    pub body: Bytes,
}

type Responder = dyn Fn(&Received) -> Script + Send + Sync;

#[derive(Default)]
struct Shared {
    received: Mutex<Vec<Received>>,
    abandoned: AtomicUsize,
    abandoned_notify: Notify,
}

/// A running replay server.
#[derive(Clone)]
pub struct ReplayServer {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ReplayServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl ReplayServer {
    /// Starts a server on `127.0.0.1:0` answering every request with `respond(request)`.
    pub async fn spawn(
        respond: impl Fn(&Received) -> Script + Send + Sync + 'static,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let service = ReplayService {
            respond: Arc::new(respond),
            shared: shared.clone(),
        };
        tokio::spawn(crate::server::serve(
            listener,
            service,
            std::future::pending(),
            Duration::ZERO,
        ));
        Ok(Self { addr, shared })
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared
            .received
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Responses whose connection went away before their last piece was written.
    pub fn abandoned(&self) -> usize {
        self.shared.abandoned.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` responses have been abandoned.
    pub async fn wait_abandoned(&self, n: usize) {
        loop {
            let notified = self.shared.abandoned_notify.notified();
            if self.abandoned() >= n {
                return;
            }
            notified.await;
        }
    }
}

#[derive(Clone)]
struct ReplayService {
    respond: Arc<Responder>,
    shared: Arc<Shared>,
}

impl tower::Service<Request<hyper::body::Incoming>> for ReplayService {
    type Response = Response<ScriptBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<hyper::body::Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let arrived = Instant::now();
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let received = Received {
                method: parts.method,
                path: parts
                    .uri
                    .path_and_query()
                    .map_or_else(String::new, |p| p.to_string()),
                headers: parts.headers,
                body,
            };
            let script = (this.respond)(&received);
            if let Ok(mut all) = this.shared.received.lock() {
                all.push(received);
            }
            let mut response = Response::new(ScriptBody {
                pieces: script
                    .pieces
                    .into_iter()
                    .map(|(at, bytes)| (arrived + at, bytes))
                    .collect(),
                sleep: None,
                shared: this.shared.clone(),
            });
            *response.status_mut() = script.status;
            for (name, value) in script.headers {
                response.headers_mut().insert(name, value);
            }
            Ok(response)
        })
    }
}

/// A body that writes each piece at its instant.
pub struct ScriptBody {
    pieces: VecDeque<(Instant, Bytes)>,
    sleep: Option<Pin<Box<Sleep>>>,
    shared: Arc<Shared>,
}

impl Body for ScriptBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let Some(&(at, _)) = this.pieces.front() else {
            return Poll::Ready(None);
        };
        if Instant::now() < at {
            let sleep = this
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
            sleep.as_mut().reset(at);
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        Poll::Ready(this.pieces.pop_front().map(|(_, b)| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.pieces.is_empty()
    }
}

impl Drop for ScriptBody {
    fn drop(&mut self) {
        if !self.pieces.is_empty() {
            self.shared.abandoned.fetch_add(1, Ordering::SeqCst);
            self.shared.abandoned_notify.notify_waiters();
        }
    }
}
