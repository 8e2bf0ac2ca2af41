//! The bench client: sends one request and times its response with the gateway's own
//! definitions.
//!
//! Timing reuses [`crate::telemetry::Timeline`] and [`crate::openai::classify`] unchanged: a
//! timeline starts when the request is handed to the connection pool, every SSE data payload is
//! observed the moment its frame arrives (decoded by [`crate::sse::Decoder`]), and a
//! non-streaming body marks its first byte and is read whole. TTFB, TTFT, ITL, TPOT and E2E are
//! therefore the same quantities on the client and in the gateway; only the starting instant
//! differs (request sent, rather than request arrived).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::Deserialize;
use tokio::time::Instant;

use crate::bench::results::ErrorClass;
use crate::openai::{classify, Endpoint, Payload};
use crate::sse::{BlockKind, Decoder};
use crate::telemetry::{Measurements, Timeline};

/// Largest non-streaming body kept in memory.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// A keep-alive HTTP/1 client shared by every request of a run.
#[derive(Debug, Clone)]
pub struct BenchClient {
    http: Client<HttpConnector, Full<Bytes>>,
}

/// One request to send.
#[derive(Debug, Clone)]
pub struct Call {
    /// Base URL of the target.
    pub base: String,
    /// Endpoint (path).
    pub endpoint: Endpoint,
    /// JSON body.
    pub body: Bytes,
    /// `Authorization: Bearer` value.
    pub api_key: Option<String>,
    /// `x-request-id` header.
    pub request_id: String,
    /// Deadline from send to last byte.
    pub timeout: Duration,
    /// Keep the generated text (multi-turn context, file workload output).
    pub capture_text: bool,
    /// Keep a non-streaming body whole (file workload output).
    pub capture_body: bool,
}

/// What came back.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// When the request was handed to the client.
    pub sent: Instant,
    /// When its last byte arrived (or it failed).
    pub ended: Instant,
    /// HTTP status (0 when no head arrived).
    pub status: u16,
    /// The failure, if any.
    pub error: Option<ErrorClass>,
    /// The response was an SSE stream.
    pub streamed: bool,
    /// Timings and tokens.
    pub measurements: Measurements,
    /// Generated text of choice 0, when asked for.
    pub text: Option<String>,
    /// The whole non-streaming body, when asked for.
    pub body: Option<Bytes>,
}

impl Exchange {
    /// Completed without error.
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }
}

impl Default for BenchClient {
    fn default() -> Self {
        Self::new()
    }
}

impl BenchClient {
    /// A client with `TCP_NODELAY` and a pool large enough for any concurrency.
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(10)));
        let http = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(usize::MAX)
            .build(connector);
        Self { http }
    }

    /// Sends `call` and reads the whole response, timing every event.
    pub async fn send(&self, call: &Call) -> Exchange {
        let sent = Instant::now();
        let deadline = sent + call.timeout;
        let mut run = Reading {
            timeline: Timeline::new(sent),
            status: 0,
            error: None,
            streamed: false,
            text: call.capture_text.then(String::new),
            body: None,
        };
        run.exchange(self, call, deadline).await;
        let ended = Instant::now();
        let measurements = run.timeline.measure(ended);
        Exchange {
            sent,
            ended,
            status: run.status,
            error: run.error,
            streamed: run.streamed,
            measurements,
            text: run.text,
            body: run.body,
        }
    }
}

/// The state of one response being read.
struct Reading {
    timeline: Timeline,
    status: u16,
    error: Option<ErrorClass>,
    streamed: bool,
    text: Option<String>,
    body: Option<Bytes>,
}

impl Reading {
    async fn exchange(&mut self, client: &BenchClient, call: &Call, deadline: Instant) {
        let request = match build_request(call) {
            Some(r) => r,
            None => {
                self.error = Some(ErrorClass::Connect);
                return;
            }
        };
        let response = match tokio::time::timeout_at(deadline, client.http.request(request)).await {
            Err(_) => return self.fail(ErrorClass::Timeout),
            Ok(Err(e)) if e.is_connect() => return self.fail(ErrorClass::Connect),
            Ok(Err(_)) => return self.fail(ErrorClass::Reset),
            Ok(Ok(response)) => response,
        };
        self.status = response.status().as_u16();
        self.streamed = is_event_stream(response.headers());
        let mut body = response.into_body();
        if self.streamed {
            self.read_stream(&mut body, deadline).await;
        } else {
            self.read_whole(&mut body, deadline, call.capture_body)
                .await;
        }
        if self.error.is_none() {
            self.error = self.verdict();
        }
    }

    fn fail(&mut self, class: ErrorClass) {
        self.error.get_or_insert(class);
    }

    async fn read_stream(&mut self, body: &mut hyper::body::Incoming, deadline: Instant) {
        let mut decoder = Decoder::new();
        loop {
            let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
                Err(_) => return self.fail(ErrorClass::Timeout),
                Ok(None) => return,
                Ok(Some(Err(_))) => return self.fail(ErrorClass::Reset),
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let now = Instant::now();
            let (timeline, text) = (&mut self.timeline, &mut self.text);
            decoder.feed(&data, |block| {
                if let BlockKind::Data { data, .. } = block.kind {
                    timeline.observe(&classify(data), now);
                    if let Some(text) = text.as_mut() {
                        append_delta(text, data);
                    }
                }
            });
        }
    }

    async fn read_whole(
        &mut self,
        body: &mut hyper::body::Incoming,
        deadline: Instant,
        keep: bool,
    ) {
        let mut all = BytesMut::new();
        loop {
            let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
                Err(_) => return self.fail(ErrorClass::Timeout),
                Ok(None) => break,
                Ok(Some(Err(_))) => return self.fail(ErrorClass::Reset),
                Ok(Some(Ok(frame))) => frame,
            };
            if let Ok(data) = frame.into_data() {
                if !data.is_empty() {
                    self.timeline.first_byte(Instant::now());
                }
                if all.len() + data.len() > MAX_BODY {
                    return self.fail(ErrorClass::InvalidBody);
                }
                all.extend_from_slice(&data);
            }
        }
        let all = all.freeze();
        let payload = classify(&all);
        if matches!(payload, Payload::Other)
            && StatusCode::from_u16(self.status).is_ok_and(|s| s.is_success())
        {
            self.fail(ErrorClass::InvalidBody);
        }
        self.timeline.observe_body(&payload);
        if let Some(text) = self.text.as_mut() {
            append_message(text, &all);
        }
        if keep {
            self.body = Some(all);
        }
    }

    /// The error class of a response that was read to its end.
    fn verdict(&self) -> Option<ErrorClass> {
        if let Some(class) = ErrorClass::of_status(self.status) {
            return Some(class);
        }
        if self.timeline.saw_error_event() {
            return Some(ErrorClass::ErrorEvent);
        }
        if self.streamed && !self.timeline.saw_done() {
            return Some(ErrorClass::Truncated);
        }
        None
    }
}

fn build_request(call: &Call) -> Option<Request<Full<Bytes>>> {
    let uri = format!(
        "{}{}",
        call.base.trim_end_matches('/'),
        call.endpoint.path()
    );
    let mut builder = Request::post(uri)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(
            "x-request-id",
            HeaderValue::from_str(&call.request_id).ok()?,
        );
    if let Some(key) = &call.api_key {
        builder = builder.header(
            http::header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {key}")).ok()?,
        );
    }
    builder.body(Full::new(call.body.clone())).ok()
}

fn is_event_stream(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"))
}

// === reading generated text ===

#[derive(Deserialize)]
struct TextView {
    #[serde(default)]
    choices: Vec<ChoiceView>,
}

#[derive(Deserialize)]
struct ChoiceView {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    delta: Option<MessageView>,
    #[serde(default)]
    message: Option<MessageView>,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct MessageView {
    #[serde(default)]
    content: Option<String>,
}

/// Appends the text of choice 0 of a streamed chunk (chat `delta.content` or completions
/// `text`).
fn append_delta(out: &mut String, payload: &[u8]) {
    let Ok(view) = serde_json::from_slice::<TextView>(payload) else {
        return;
    };
    for choice in view.choices.into_iter().filter(|c| c.index == 0) {
        if let Some(content) = choice.delta.and_then(|d| d.content) {
            out.push_str(&content);
        }
        if let Some(text) = choice.text {
            out.push_str(&text);
        }
    }
}

/// Appends the text of choice 0 of a whole body (chat `message.content` or completions `text`).
fn append_message(out: &mut String, body: &[u8]) {
    let Ok(view) = serde_json::from_slice::<TextView>(body) else {
        return;
    };
    for choice in view.choices.into_iter().filter(|c| c.index == 0) {
        if let Some(content) = choice.message.and_then(|m| m.content) {
            out.push_str(&content);
        }
        if let Some(text) = choice.text {
            out.push_str(&text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_of_chunks_and_bodies() {
        let mut s = String::new();
        append_delta(
            &mut s,
            br#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
        );
        append_delta(
            &mut s,
            br#"{"choices":[{"index":0,"delta":{"content":"Hel"}}]}"#,
        );
        append_delta(
            &mut s,
            br#"{"choices":[{"index":1,"delta":{"content":"x"}}]}"#,
        );
        append_delta(&mut s, br#"{"choices":[{"index":0,"text":"lo"}]}"#);
        append_delta(&mut s, b"[DONE]");
        assert_eq!(s, "Hello");
        let mut t = String::new();
        append_message(
            &mut t,
            include_bytes!("../../tests/fixtures/vllm_chat_nonstream.response.json"),
        );
        assert_eq!(t, "Hello! How can I help you today?");
    }
}
