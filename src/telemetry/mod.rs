//! Where measurements go: the timeline of a response, the record it becomes, and the sinks that
//! consume each record exactly once (Prometheus series, the JSONL log, in-process subscribers).

pub mod log;
pub mod metrics;
pub mod record;
pub mod timeline;

use std::sync::Arc;

use tokio::sync::broadcast;

pub use self::log::RequestLog;
pub use self::metrics::Metrics;
pub use self::record::{Outcome, RequestLabels, RequestRecord};
pub use self::timeline::{Measurements, Timeline};

/// Records buffered for slow in-process subscribers before they start missing some.
const SUBSCRIBER_BUFFER: usize = 4096;

/// The sinks of finished requests.
#[derive(Debug)]
pub struct Telemetry {
    /// Prometheus series.
    pub metrics: Metrics,
    log: Option<RequestLog>,
    records: broadcast::Sender<Arc<RequestRecord>>,
}

impl Telemetry {
    /// Sinks with an optional JSONL log.
    pub fn new(log: Option<RequestLog>) -> Self {
        let (records, _) = broadcast::channel(SUBSCRIBER_BUFFER);
        Self {
            metrics: Metrics::new(),
            log,
            records,
        }
    }

    /// Every record finished from now on (tests and `servelens demo` read these).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<RequestRecord>> {
        self.records.subscribe()
    }

    /// Resolves once every record so far is in the JSONL log (immediately without a log).
    pub async fn log_flushed(&self) {
        if let Some(log) = &self.log {
            log.flushed().await;
        }
    }

    /// Consumes one finished request. Called exactly once per request.
    pub fn record(&self, record: RequestRecord) {
        self.metrics.observe(&record);
        if let Some(log) = &self.log {
            log.write(&record);
        }
        if self.records.receiver_count() > 0 {
            let _ = self.records.send(Arc::new(record));
        }
    }
}
