//! `RequestRecord`: everything measured about one request, written once when it ends.
//!
//! A record is built from a [`RequestLabels`] (who served it, decided when the request was
//! routed) and the stream's [`Measurements`]. It is the one value the metrics, the JSONL log and
//! the in-process subscribers (tests, `servelens demo`) all consume, so they cannot disagree.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Serialize, Serializer};

use crate::config::Framework;
use crate::error::ErrorKind;
use crate::openai::{Endpoint, FinishReason};
use crate::telemetry::timeline::Measurements;

/// How a request ended (a closed label set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The backend answered 2xx and (for streams) sent `[DONE]` without an error event.
    Completed,
    /// The client went away before the response ended.
    ClientCancelled,
    /// The backend failed: non-2xx status, mid-stream error event, reset, or truncated stream.
    UpstreamError,
    /// A gateway timeout fired (first byte, idle gap or total).
    Timeout,
    /// The gateway refused the request (bad input, unknown model, no healthy backend).
    Rejected,
}

impl Outcome {
    /// Every outcome, for metric pre-registration.
    pub const ALL: [Outcome; 5] = [
        Self::Completed,
        Self::ClientCancelled,
        Self::UpstreamError,
        Self::Timeout,
        Self::Rejected,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::ClientCancelled => "client_cancelled",
            Self::UpstreamError => "upstream_error",
            Self::Timeout => "timeout",
            Self::Rejected => "rejected",
        }
    }
}

/// Who served a request: names from the config, never raw client input.
#[derive(Debug, Clone, Serialize)]
pub struct RequestLabels {
    /// Route name (the configured model, or `*`); empty when no route matched.
    pub route: Arc<str>,
    /// Pool name; empty when none was chosen.
    pub pool: Arc<str>,
    /// Backend name; empty when none was chosen.
    pub backend: Arc<str>,
    /// Experiment arm; empty outside experiments.
    pub arm: Arc<str>,
    /// Framework of the pool.
    pub framework: Option<Framework>,
    /// The endpoint.
    pub endpoint: Endpoint,
    /// The client asked for a stream.
    pub stream: bool,
}

impl RequestLabels {
    /// Labels for a request that never reached a pool.
    pub fn unrouted(endpoint: Endpoint, stream: bool) -> Self {
        let empty: Arc<str> = Arc::from("");
        Self {
            route: empty.clone(),
            pool: empty.clone(),
            backend: empty.clone(),
            arm: empty,
            framework: None,
            endpoint,
            stream,
        }
    }
}

/// One finished request (one JSONL line).
#[derive(Debug, Clone, Serialize)]
pub struct RequestRecord {
    /// Arrival, Unix seconds.
    #[serde(serialize_with = "unix_seconds")]
    pub ts: SystemTime,
    /// The `x-request-id` sent upstream.
    pub request_id: String,
    /// The client's `model` (only when it matched a route; never logged otherwise).
    pub model: Option<String>,
    /// Who served it.
    #[serde(flatten)]
    pub labels: RequestLabels,
    /// HTTP status the client got (0 when the client left before a status was sent).
    pub status: u16,
    /// How it ended.
    pub outcome: Outcome,
    /// The gateway error, when the gateway produced the status.
    pub error: Option<ErrorKind>,
    /// The `usage` event was injected upstream and withheld from the client.
    pub usage_injected: bool,
    /// A shadow copy of a request (mirroring); never seen by the client.
    pub mirrored: bool,
    /// Timings and tokens.
    #[serde(flatten, serialize_with = "measurements")]
    pub measurements: Measurements,
}

impl RequestRecord {
    /// Time to first token, when there was one.
    pub fn ttft(&self) -> Option<Duration> {
        self.measurements.ttft
    }
}

fn unix_seconds<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    s.serialize_f64(secs)
}

fn measurements<S: Serializer>(m: &Measurements, s: S) -> Result<S::Ok, S::Error> {
    MeasurementsJson::from(m).serialize(s)
}

/// The JSON shape of [`Measurements`]: durations as seconds.
#[derive(Serialize)]
struct MeasurementsJson<'a> {
    ttfb_s: Option<f64>,
    ttft_s: Option<f64>,
    e2e_s: f64,
    tpot_s: Option<f64>,
    itl_s: Vec<f64>,
    prompt_tokens: Option<u64>,
    cached_tokens: Option<u64>,
    output_tokens: Option<u64>,
    output_tokens_estimated: bool,
    chunks: u32,
    content_events: u32,
    finish_reason: Option<&'a FinishReason>,
    done: bool,
}

impl<'a> From<&'a Measurements> for MeasurementsJson<'a> {
    fn from(m: &'a Measurements) -> Self {
        let secs = |d: Duration| d.as_secs_f64();
        Self {
            ttfb_s: m.ttfb.map(secs),
            ttft_s: m.ttft.map(secs),
            e2e_s: secs(m.e2e),
            tpot_s: m.tpot.map(secs),
            itl_s: m.itl.iter().copied().map(secs).collect(),
            prompt_tokens: m.prompt_tokens,
            cached_tokens: m.cached_tokens,
            output_tokens: m.output_tokens,
            output_tokens_estimated: m.output_tokens_estimated,
            chunks: m.chunks,
            content_events: m.content_events,
            finish_reason: m.finish_reason.as_ref(),
            done: m.done,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_flat_with_seconds() {
        let record = RequestRecord {
            ts: UNIX_EPOCH + Duration::from_secs(10),
            request_id: "r1".into(),
            model: Some("m".into()),
            labels: RequestLabels::unrouted(Endpoint::ChatCompletions, true),
            status: 200,
            outcome: Outcome::Completed,
            error: None,
            usage_injected: true,
            mirrored: false,
            measurements: Measurements {
                ttft: Some(Duration::from_millis(250)),
                e2e: Duration::from_secs(1),
                itl: vec![Duration::from_millis(20)],
                finish_reason: Some(FinishReason::Stop),
                ..Measurements::default()
            },
        };
        let v: serde_json::Value = serde_json::to_value(&record).expect("serialisable");
        assert_eq!(v["ts"], 10.0);
        assert_eq!(v["endpoint"], "chat_completions");
        assert_eq!(v["outcome"], "completed");
        assert_eq!(v["ttft_s"], 0.25);
        assert_eq!(v["itl_s"][0], 0.02);
        assert_eq!(v["finish_reason"], "stop");
        assert_eq!(v["route"], "");
    }
}
