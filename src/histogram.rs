//! A latency histogram that any layer can record into with a relaxed increment and no
//! allocation, and that `/metrics` renders. A leaf: it knows nothing of who records.

use std::{
    fmt::Write,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

/// Upper bounds (ms) of the fan-out latency buckets: sub-millisecond hand-offs on one
/// node up to the seconds a backlog or a gap repair can take.
const LATENCY_BOUNDS_MS: [u64; 12] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000];

/// A cumulative-on-read latency histogram with fixed millisecond buckets.
#[derive(Default)]
pub struct LatencyHistogram {
    /// Observations per bucket (not cumulative); the last slot is `+Inf`.
    buckets: [AtomicU64; LATENCY_BOUNDS_MS.len() + 1],
    sum_ms: AtomicU64,
}

impl LatencyHistogram {
    pub fn observe(&self, elapsed: Duration) {
        self.observe_ms(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
    }

    pub fn observe_ms(&self, ms: u64) {
        let slot = LATENCY_BOUNDS_MS
            .iter()
            .position(|bound| ms <= *bound)
            .unwrap_or(LATENCY_BOUNDS_MS.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.sum_ms.fetch_add(ms, Ordering::Relaxed);
    }

    /// Appends the histogram in Prometheus text, labelled with `node`.
    pub fn render(&self, out: &mut String, name: &str, node: &str) {
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, count) in self.buckets.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let le = LATENCY_BOUNDS_MS
                .get(i)
                .map_or("+Inf".to_string(), |ms| format!("{}", *ms as f64 / 1000.0));
            let _ = writeln!(out, "{name}_bucket{{{node},le=\"{le}\"}} {cumulative}");
        }
        let sum = self.sum_ms.load(Ordering::Relaxed) as f64 / 1000.0;
        let _ = writeln!(out, "{name}_sum{{{node}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{node}}} {cumulative}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_inf() {
        let histogram = LatencyHistogram::default();
        for ms in [0, 1, 3, 40, 99_999] {
            histogram.observe_ms(ms);
        }
        let mut out = String::new();
        histogram.render(&mut out, "h", "node=\"a\"");
        assert!(
            out.contains("h_bucket{node=\"a\",le=\"0.001\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("h_bucket{node=\"a\",le=\"0.005\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("h_bucket{node=\"a\",le=\"0.05\"} 4\n"),
            "{out}"
        );
        assert!(out.contains("h_bucket{node=\"a\",le=\"5\"} 4\n"), "{out}");
        assert!(
            out.contains("h_bucket{node=\"a\",le=\"+Inf\"} 5\n"),
            "{out}"
        );
        assert!(out.contains("h_count{node=\"a\"} 5\n"), "{out}");
    }
}
