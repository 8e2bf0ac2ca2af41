//! The admin listener: `/metrics` (Prometheus text), `/healthz` (the process is up) and
//! `/readyz` (some pool has an eligible backend). Kept off the proxy port so it can stay private.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;

use crate::proxy::Gateway;

/// The admin endpoints over a shared gateway.
#[derive(Debug, Clone)]
pub struct AdminService(pub Arc<Gateway>);

impl AdminService {
    /// Answers one admin request.
    pub fn respond(&self, method: &Method, path: &str) -> Response<Full<Bytes>> {
        if method != Method::GET && method != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        }
        match path {
            "/metrics" => {
                let mut response = text(StatusCode::OK, self.0.telemetry().metrics.render());
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                response
            }
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => {
                let snapshot = self.0.snapshot();
                let ready = snapshot
                    .table
                    .pools()
                    .values()
                    .any(|pool| pool.backends.iter().any(|b| b.eligible()));
                if ready {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "no healthy backend\n")
                }
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /metrics, /healthz, /readyz\n",
            ),
        }
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

impl<B> tower::Service<Request<B>> for AdminService {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let response = self.respond(req.method(), req.uri().path());
        Box::pin(async move { Ok(response) })
    }
}
