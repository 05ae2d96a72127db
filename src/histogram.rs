//! The latency histogram every layer records into: prometheus-client's, with Natter's
//! buckets (1 ms to 5 s). A leaf: it knows nothing of who records or who reads.

use std::time::Duration;

use prometheus_client::metrics::histogram::Histogram;

/// Upper bounds (seconds) of the buckets: sub-millisecond hand-offs on one node up to
/// the seconds a backlog or a gap repair can take.
const BOUNDS_SECS: [f64; 12] = [
    0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// A latency histogram; clones record into the same one.
#[derive(Clone, Debug)]
pub struct LatencyHistogram(Histogram);

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self(Histogram::new(BOUNDS_SECS))
    }
}

impl LatencyHistogram {
    pub fn observe(&self, elapsed: Duration) {
        self.0.observe(elapsed.as_secs_f64());
    }

    pub fn observe_ms(&self, ms: u64) {
        self.0.observe(ms as f64 / 1000.0);
    }

    /// The histogram itself, to register for `/metrics`.
    pub fn metric(&self) -> Histogram {
        self.0.clone()
    }
}
