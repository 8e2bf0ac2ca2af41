//! Upstream HTTP/1.1 connections: a keep-alive pool per backend whose connections are driven
//! by the task that streams the response.
//!
//! Why not hyper-util's pooled client (which health probes and model listing still use): it
//! runs every connection on a task of its own and hands each body chunk to the response body
//! through a one-slot channel, so every SSE event costs two cross-task wake-ups and a write to
//! the client of its own. Here the connection future travels with the response body
//! ([`UpstreamBody`]) and is polled from its `poll_frame`: one wake-up of the streaming task
//! decodes everything the socket holds, and hyper's server writes those frames out together.
//!
//! Pooling: a connection whose response ended cleanly and that hyper reports ready for another
//! request goes back to its backend's idle list (LIFO, bounded, dropped after
//! [`IDLE_TIMEOUT`]). Idle connections are not polled; at checkout one is polled once, so a
//! connection the backend closed meanwhile is noticed and dropped, and a request that still
//! fails on a reused connection before any response arrived is sent once more on a fresh one.
//! Dropping an [`UpstreamBody`] before its end drops the connection: the backend sees the
//! disconnect at once and aborts the generation.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Idle connections older than this are closed instead of reused (backends commonly close
/// keep-alive connections after a minute or more; reusing one they just closed costs a retry).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// TCP keep-alive probes on upstream connections (long, silent prefills behind NATs).
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// Why an exchange failed before a response head arrived.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No TCP connection could be made.
    #[error("{0}")]
    Connect(String),
    /// The connection failed before the response head.
    #[error("{0}")]
    Failed(String),
}

/// One HTTP/1.1 connection: the request handle and the connection's IO future.
#[derive(Debug)]
struct Conn {
    sender: SendRequest<Full<Bytes>>,
    driver: Connection<TokioIo<TcpStream>, Full<Bytes>>,
}

impl Conn {
    async fn open(authority: &str, connect_timeout: Duration) -> Result<Self, SendError> {
        let stream =
            match tokio::time::timeout(connect_timeout, TcpStream::connect(authority)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return Err(SendError::Connect(format!("connect {authority}: {e}"))),
                Err(_) => {
                    return Err(SendError::Connect(format!(
                        "connect {authority}: no answer within {connect_timeout:?}"
                    )))
                }
            };
        // Best effort: a socket without these options still works.
        let _ = stream.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        let (sender, driver) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| SendError::Connect(format!("handshake with {authority}: {e}")))?;
        Ok(Self { sender, driver })
    }

    /// Polls the connection once without a waker of interest: true when it is still open and
    /// ready for a request (a backend that closed it meanwhile is noticed here).
    fn still_usable(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(&mut self.driver).poll(&mut cx).is_pending() && self.sender.is_ready()
    }

    /// Sends `request` and drives the connection until the response head arrives.
    async fn exchange(
        &mut self,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, hyper::Error> {
        let mut response = std::pin::pin!(self.sender.send_request(request));
        let driver = &mut self.driver;
        let mut driver_done = false;
        std::future::poll_fn(|cx| {
            if !driver_done {
                // The connection ending settles the response future too (with an error).
                driver_done = Pin::new(&mut *driver).poll(cx).is_ready();
            }
            response.as_mut().poll(cx)
        })
        .await
    }
}

/// The idle connections of one backend.
#[derive(Debug, Default)]
pub struct ConnPool {
    idle: Mutex<Vec<(Conn, Instant)>>,
}

impl ConnPool {
    /// Sends the request `build` makes over a pooled connection to `authority` (`host:port`),
    /// returning the response head and a body that drives the connection. `max_idle` bounds
    /// the idle list the connection may return to.
    pub async fn send(
        self: &Arc<Self>,
        authority: &str,
        build: impl Fn() -> Request<Full<Bytes>>,
        connect_timeout: Duration,
        max_idle: usize,
    ) -> Result<Response<UpstreamBody>, SendError> {
        if let Some(mut conn) = self.checkout() {
            match conn.exchange(build()).await {
                Ok(response) => return Ok(self.streaming(response, conn, max_idle)),
                // The backend closed the reused connection just before or while the request
                // went out: nothing was answered, so try once more on a fresh connection.
                Err(e) if stale(&e) => {
                    tracing::debug!(%authority, error = %e, "reused connection was closed")
                }
                Err(e) => return Err(SendError::Failed(error_chain(&e))),
            }
        }
        let mut conn = Conn::open(authority, connect_timeout).await?;
        match conn.exchange(build()).await {
            Ok(response) => Ok(self.streaming(response, conn, max_idle)),
            Err(e) => Err(SendError::Failed(error_chain(&e))),
        }
    }

    /// Connections now idle (tests, diagnostics).
    pub fn idle_len(&self) -> usize {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn streaming(
        self: &Arc<Self>,
        response: Response<Incoming>,
        conn: Conn,
        max_idle: usize,
    ) -> Response<UpstreamBody> {
        response.map(|body| UpstreamBody {
            body,
            conn: Some(conn),
            home: Some((self.clone(), max_idle)),
        })
    }

    fn checkout(&self) -> Option<Conn> {
        loop {
            let (mut conn, since) = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()?;
            if since.elapsed() < IDLE_TIMEOUT && conn.still_usable() {
                return Some(conn);
            }
        }
    }

    fn checkin(&self, mut conn: Conn, max_idle: usize) {
        if !conn.still_usable() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|(_, since)| since.elapsed() < IDLE_TIMEOUT);
        if idle.len() < max_idle {
            idle.push((conn, Instant::now()));
        }
    }
}

/// A backend response body that also drives its connection, and returns the connection to the
/// pool when the body ends cleanly.
#[derive(Debug)]
pub struct UpstreamBody {
    body: Incoming,
    conn: Option<Conn>,
    home: Option<(Arc<ConnPool>, usize)>,
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(conn) = &mut this.conn {
            // Reads the socket and decodes into the body channel; once the connection ends,
            // whatever it decoded (or its error) is still read from the channel below.
            if Pin::new(&mut conn.driver).poll(cx).is_ready() {
                this.conn = None;
            }
        }
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            if let (Some(conn), Some((pool, max_idle))) = (this.conn.take(), this.home.take()) {
                pool.checkin(conn, max_idle);
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// An error that means the reused connection was gone before the backend answered.
fn stale(e: &hyper::Error) -> bool {
    e.is_canceled() || e.is_incomplete_message() || {
        let io = std::error::Error::source(e).and_then(|s| s.downcast_ref::<std::io::Error>());
        io.is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionAborted
            )
        })
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
