//! Step 4, *tap*: the response body wrapper that forwards every upstream frame as it arrives and
//! measures the stream on the side.
//!
//! [`TapBody`] hands each frame to the client untouched (the same `Bytes`, no copy) after
//! feeding a view of it to the SSE decoder and the [`Timeline`]. It owns the end of the request:
//! it records exactly once, whichever comes first of
//! - end of stream (`completed`, or `upstream_error` for an error event, a truncated stream or a
//!   non-2xx status),
//! - an upstream transport error (`upstream_error`),
//! - the first-byte, idle-gap or total timeout firing (`timeout`),
//! - being dropped before the end: the client went away (`client_cancelled`). Dropping the tap
//!   drops the upstream body, which closes the upstream connection, which is how vLLM and SGLang
//!   learn to abort the generation.
//!
//! After streaming has begun an upstream failure cannot change the status any more, so for SSE
//! the client gets an OpenAI-style `{"error": ...}` event and `[DONE]`, as vLLM itself does.
//!
//! With usage injection on, the usage-only event the gateway asked for is withheld (see
//! [`withhold`](crate::proxy::withhold)): only whole events are forwarded then, and the
//! withheld event's bytes are cut out by slicing, not copying.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::config::{EjectionConfig, Framework, Timeouts};
use crate::openai::{classify, Payload};
use crate::proxy::pool::InflightGuard;
use crate::proxy::withhold::{Action, Withholder};
use crate::sse::{BlockKind, Decoder};
use crate::telemetry::{Outcome, RequestLabels, RequestRecord, Telemetry, Timeline};

/// Why the tapped body failed towards the client (non-SSE bodies only; SSE gets an event).
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The upstream connection failed mid-body.
    #[error("upstream body error: {0}")]
    Upstream(Box<dyn std::error::Error + Send + Sync>),
    /// A gateway timeout fired mid-body.
    #[error("upstream {0} timeout")]
    Timeout(&'static str),
}

/// What the tap needs to write the record when the request ends.
#[derive(Debug)]
pub struct RecordContext {
    /// Where the record goes.
    pub telemetry: Arc<Telemetry>,
    /// Who served it.
    pub labels: RequestLabels,
    /// The id sent upstream.
    pub request_id: String,
    /// The client's model.
    pub model: Option<String>,
    /// Arrival wall-clock time.
    pub ts: SystemTime,
    /// The status sent to the client.
    pub status: u16,
    /// The usage event was injected (and is withheld).
    pub usage_injected: bool,
    /// A mirrored (shadow) request.
    pub mirrored: bool,
    /// Holds the backend's in-flight count until the record is written.
    pub guard: Option<InflightGuard>,
    /// Passive-health settings of the backend's pool (failures count towards ejection).
    pub ejection: EjectionConfig,
}

/// How the body is read.
#[derive(Debug)]
enum Reader {
    /// `text/event-stream`: decode events as they pass.
    Sse {
        decoder: Decoder,
        /// Withhold the usage-only event (and forward only whole events).
        withhold_usage: bool,
        /// Hold finish chunks for the usage event's `system_fingerprint` (vLLM).
        hold_finish: bool,
    },
    /// Anything else: keep the frames (refcounted, not copied) to read `usage` at the end.
    Whole { frames: Vec<Bytes>, len: usize },
}

/// Largest non-streaming body the tap reads for usage (bigger bodies pass unmeasured).
const MAX_WHOLE_BODY: usize = 16 * 1024 * 1024;

/// A response body that forwards frames immediately and records the request once.
#[derive(Debug)]
pub struct TapBody<B: Body> {
    /// The upstream body; `None` once it ended or was abandoned (closing the connection).
    inner: Option<B>,
    reader: Reader,
    timeline: Timeline,
    /// Present until the record is written.
    record: Option<RecordContext>,
    timeouts: Timeouts,
    /// Last upstream frame (or the arrival, before the first).
    last_activity: Instant,
    seen_first_frame: bool,
    /// Armed at or before the nearest deadline; re-armed lazily when it fires early.
    timer: Pin<Box<Sleep>>,
    /// Frames to send before anything else (withheld-mode output, error events).
    out: VecDeque<Bytes>,
    /// Withheld mode: partial events and held finish chunks.
    withholder: Withholder,
    /// Withheld mode: the events completed by the current frame (reused buffer).
    events: Vec<(usize, Action)>,
}

impl<B> TapBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Wraps an upstream body. `sse` selects event decoding; `withhold_usage` applies to SSE only.
    pub fn new(
        inner: B,
        record: RecordContext,
        arrived: Instant,
        timeouts: Timeouts,
        sse: bool,
        withhold_usage: bool,
    ) -> Self {
        let reader = if sse {
            Reader::Sse {
                decoder: Decoder::new(),
                withhold_usage,
                hold_finish: withhold_usage && record.labels.framework == Some(Framework::Vllm),
            }
        } else {
            Reader::Whole {
                frames: Vec::new(),
                len: 0,
            }
        };
        let first_deadline = (arrived + timeouts.first_byte).min(arrived + timeouts.total);
        Self {
            inner: Some(inner),
            reader,
            timeline: Timeline::new(arrived),
            record: Some(record),
            timeouts,
            last_activity: arrived,
            seen_first_frame: false,
            timer: Box::pin(tokio::time::sleep_until(first_deadline)),
            out: VecDeque::new(),
            withholder: Withholder::default(),
            events: Vec::new(),
        }
    }

    /// Looks at one data frame; returns it when it can go out as is.
    fn on_data(&mut self, data: Bytes, now: Instant) -> Option<Bytes> {
        self.last_activity = now;
        if !self.seen_first_frame {
            // From here on the idle deadline applies. It can be earlier than the first-byte
            // deadline the timer is armed for, so re-arm once; later deadlines only move out
            // and are re-armed lazily when the timer fires.
            self.seen_first_frame = true;
            let (deadline, _) = self.deadline();
            self.timer.as_mut().reset(deadline);
        }
        let Self {
            reader,
            timeline,
            out,
            withholder,
            events,
            ..
        } = self;
        match reader {
            Reader::Whole { frames, len } => {
                timeline.first_byte(now);
                if *len + data.len() <= MAX_WHOLE_BODY {
                    *len += data.len();
                    frames.push(data.clone());
                } else {
                    frames.clear();
                    *len = usize::MAX / 2;
                }
                Some(data)
            }
            Reader::Sse {
                decoder,
                withhold_usage: false,
                ..
            } => {
                decoder.feed(&data, |block| {
                    if let BlockKind::Data { name: None, data } = block.kind {
                        timeline.observe(&classify(data), now);
                    }
                });
                Some(data)
            }
            Reader::Sse {
                decoder,
                withhold_usage: true,
                hold_finish,
            } => {
                let hold_finish = *hold_finish;
                events.clear();
                decoder.feed(&data, |block| {
                    let mut action = Action::Pass;
                    if let BlockKind::Data { name: None, data } = block.kind {
                        let payload = classify(data);
                        action = match &payload {
                            Payload::Chunk(c) if c.is_usage_only() => Action::Withhold,
                            Payload::Chunk(c) if hold_finish && c.finish.is_some() => {
                                Action::HoldFinish
                            }
                            Payload::Done | Payload::Error => Action::Flush,
                            _ => Action::Pass,
                        };
                        timeline.observe(&payload, now);
                    }
                    events.push((block.end, action));
                });
                withholder.frame(&data, events, out);
                None
            }
        }
    }

    /// The stream failed (`UpstreamError`) or timed out (`Timeout`): abandon upstream, record,
    /// and for SSE queue an error event. Returns the error to surface for non-SSE bodies.
    fn on_failure(
        &mut self,
        outcome: Outcome,
        message: &str,
        code: u16,
        now: Instant,
    ) -> Option<TapError> {
        self.inner = None;
        self.finish(outcome, now);
        let Reader::Sse {
            decoder,
            withhold_usage,
            ..
        } = &self.reader
        else {
            return Some(match outcome {
                Outcome::Timeout => TapError::Timeout("body"),
                _ => TapError::Upstream(message.to_string().into()),
            });
        };
        // Withheld-mode partial bytes were never sent: drop them. Otherwise close the partial
        // event the client already has before adding ours.
        let unterminated = if *withhold_usage {
            self.withholder.fail(&mut self.out);
            false
        } else {
            decoder.is_mid_event()
        };
        self.out
            .push_back(error_event(message, outcome, code, unterminated));
        None
    }

    /// The instant the next timeout fires, given what has been seen so far.
    fn deadline(&self) -> (Instant, &'static str) {
        let total = self.timeline.arrived() + self.timeouts.total;
        let (gap, which) = if self.seen_first_frame {
            (self.last_activity + self.timeouts.idle, "idle")
        } else {
            (
                self.timeline.arrived() + self.timeouts.first_byte,
                "first byte",
            )
        };
        if gap <= total {
            (gap, which)
        } else {
            (total, "total")
        }
    }

    /// Polls the timer; `Some(which)` when a timeout has really expired.
    fn poll_timeout(&mut self, cx: &mut Context<'_>) -> Option<&'static str> {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return None;
            }
            let (deadline, which) = self.deadline();
            if Instant::now() >= deadline {
                return Some(which);
            }
            self.timer.as_mut().reset(deadline);
        }
    }
}

impl<B> Body for TapBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = TapError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, TapError>>> {
        let this = self.get_mut();
        loop {
            if let Some(bytes) = this.out.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(bytes))));
            }
            let Some(inner) = this.inner.as_mut() else {
                return Poll::Ready(None);
            };
            match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let now = Instant::now();
                    match frame.into_data() {
                        Ok(data) => {
                            if let Some(data) = this.on_data(data, now) {
                                return Poll::Ready(Some(Ok(Frame::data(data))));
                            }
                        }
                        Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    let e: Box<dyn std::error::Error + Send + Sync> = e.into();
                    let message = format!("upstream connection failed mid-stream: {e}");
                    if let Some(err) =
                        this.on_failure(Outcome::UpstreamError, &message, 502, Instant::now())
                    {
                        return Poll::Ready(Some(Err(err)));
                    }
                }
                Poll::Ready(None) => this.on_end(Instant::now()),
                Poll::Pending => {
                    let Some(which) = this.poll_timeout(cx) else {
                        return Poll::Pending;
                    };
                    let message = format!("upstream {which} timeout");
                    if let Some(err) =
                        this.on_failure(Outcome::Timeout, &message, 504, Instant::now())
                    {
                        return Poll::Ready(Some(Err(err)));
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_none() && self.out.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.inner, &self.reader) {
            (Some(inner), Reader::Whole { .. }) => inner.size_hint(),
            _ => SizeHint::default(),
        }
    }
}

impl<B: Body> TapBody<B> {
    /// The upstream body ended normally.
    fn on_end(&mut self, now: Instant) {
        self.inner = None;
        self.withholder.end(&mut self.out);
        if let Reader::Whole { frames, len } = &mut self.reader {
            if *len <= MAX_WHOLE_BODY
                && self
                    .record
                    .as_ref()
                    .is_some_and(|r| (200..300).contains(&r.status))
            {
                let body = concat(frames);
                self.timeline.observe_body(&classify(&body));
            }
        }
        let outcome = self.end_outcome();
        self.finish(outcome, now);
    }

    /// How a stream that ended on its own went.
    fn end_outcome(&self) -> Outcome {
        let ok_status = self
            .record
            .as_ref()
            .is_some_and(|r| (200..300).contains(&r.status));
        let clean = match self.reader {
            Reader::Sse { .. } => self.timeline.saw_done() && !self.timeline.saw_error_event(),
            Reader::Whole { .. } => true,
        };
        if ok_status && clean {
            Outcome::Completed
        } else {
            Outcome::UpstreamError
        }
    }

    fn finish(&mut self, outcome: Outcome, now: Instant) {
        let Some(ctx) = self.record.take() else {
            return;
        };
        let arrived = self.timeline.arrived();
        let timeline = std::mem::replace(&mut self.timeline, Timeline::new(arrived));
        let record = RequestRecord {
            ts: ctx.ts,
            request_id: ctx.request_id,
            model: ctx.model,
            labels: ctx.labels,
            status: ctx.status,
            outcome,
            error: None,
            usage_injected: ctx.usage_injected,
            mirrored: ctx.mirrored,
            measurements: timeline.measure(now),
        };
        if let Some(guard) = ctx.guard {
            let backend = guard.backend();
            match outcome {
                Outcome::UpstreamError | Outcome::Timeout
                    if ctx.status < 400 || (502..=504).contains(&ctx.status) =>
                {
                    backend.record_failure(&ctx.ejection)
                }
                Outcome::Completed => backend.record_success(),
                _ => {}
            }
        }
        ctx.telemetry.record(record);
    }
}

impl<B: Body> Drop for TapBody<B> {
    fn drop(&mut self) {
        if self.record.is_none() {
            return;
        }
        // hyper stops polling a Content-Length body once it has written that many bytes, so
        // a drop with nothing left upstream is a normal end, not a cancellation.
        let now = Instant::now();
        if self.inner.as_ref().is_some_and(Body::is_end_stream) {
            self.on_end(now);
        } else {
            self.inner = None;
            self.finish(Outcome::ClientCancelled, now);
        }
    }
}

fn concat(frames: &[Bytes]) -> Bytes {
    match frames {
        [one] => one.clone(),
        many => many.concat().into(),
    }
}

/// An OpenAI-style error event followed by `[DONE]` (vLLM's mid-stream error shape).
fn error_event(message: &str, outcome: Outcome, code: u16, unterminated: bool) -> Bytes {
    let kind = match outcome {
        Outcome::Timeout => "timeout",
        _ => "upstream_error",
    };
    let event = serde_json::json!({
        "error": {"message": message, "type": kind, "param": null, "code": code}
    });
    let mut out = Vec::with_capacity(160);
    if unterminated {
        out.extend_from_slice(b"\n\n");
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(event.to_string().as_bytes());
    out.extend_from_slice(b"\n\ndata: [DONE]\n\n");
    out.into()
}
