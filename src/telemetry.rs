//! Logging and trace context.
//!
//! Logs are structured `tracing` output filtered by `RUST_LOG` (default `info`). Every
//! request and every WebSocket frame runs with a W3C `traceparent` (continued from the
//! client's header, or new); events published to NATS carry it in their headers, and the
//! nodes that deliver them log it, so one message can be followed across nodes.

use std::{future::Future, sync::Arc};

use tracing_subscriber::EnvFilter;
use uuid::Uuid;

/// Installs the global subscriber; a second call (tests) is a no-op.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
}

tokio::task_local! {
    static TRACEPARENT: Arc<str>;
}

/// A `traceparent` for new work: the same trace as `parent` (a valid W3C header value)
/// with a new span id, or a new trace.
pub fn child_traceparent(parent: Option<&str>) -> String {
    let span_id = &Uuid::new_v4().simple().to_string()[..16];
    let trace_id = parent
        .and_then(|p| {
            let parts: Vec<&str> = p.trim().split('-').collect();
            let valid = parts.len() == 4
                && parts[1].len() == 32
                && parts[1].bytes().all(|b| b.is_ascii_hexdigit())
                && parts[1].bytes().any(|b| b != b'0');
            valid.then(|| parts[1].to_ascii_lowercase())
        })
        .unwrap_or_else(|| Uuid::new_v4().simple().to_string());
    format!("00-{trace_id}-{span_id}-01")
}

/// Runs `work` with `traceparent` as its trace context.
pub async fn in_trace<F: Future>(traceparent: impl Into<Arc<str>>, work: F) -> F::Output {
    TRACEPARENT.scope(traceparent.into(), work).await
}

/// The trace context of the current request or frame, if any.
pub fn current_traceparent() -> Option<Arc<str>> {
    TRACEPARENT.try_with(Arc::clone).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_keeps_the_parents_trace_and_gets_its_own_span() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let child = child_traceparent(Some(parent));
        assert!(child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert_ne!(child, parent);
        let fresh = child_traceparent(Some("garbage"));
        assert_eq!(fresh.len(), 55);
    }
}
