//! Logging and trace context.
//!
//! Logs are `tracing` events filtered by `RUST_LOG` (default `info`), written as one JSON
//! object per line (`LOG_FORMAT=json`, the default) or as text. Every JSON line names the
//! node (`node_id`) and, inside a request or a WebSocket frame, the W3C trace it belongs
//! to (`trace_id`). Every request and frame runs with a `traceparent` (continued from the
//! client's header, or new); events published to NATS carry it in their headers, and the
//! nodes that deliver them log it, so one message can be followed across nodes.
//!
//! What is never logged: tokens, passwords and message text. Handlers and store calls are
//! instrumented with ids only, request spans record the path without its query (where a
//! WebSocket token may be), the Postgres driver's statement logging (parameters
//! included) goes through the `log` crate, which this subscriber does not collect, and
//! the NATS client, which logs message payloads at `trace`, is held to `debug` unless
//! `RUST_LOG` names it.

use std::{future::Future, sync::Arc};

use serde_json::{Map, Value};
use tracing::{
    Event, Subscriber,
    field::{Field, Visit},
};
use tracing_subscriber::{
    EnvFilter,
    fmt::{
        FmtContext, FormatEvent, FormatFields, FormattedFields,
        format::Writer,
        time::{FormatTime, SystemTime},
    },
    registry::LookupSpan,
};
use uuid::Uuid;

use crate::config::LogFormat;

/// Installs the global subscriber; a second call (tests) is a no-op.
pub fn init(format: LogFormat, node_id: &str) {
    let directives = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    let filter = EnvFilter::try_new(wire_safe(&directives)).unwrap_or_else(|err| {
        eprintln!("natter: RUST_LOG: {err}; logging at info");
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .event_format(JsonLines {
                node_id: node_id.into(),
            })
            .try_init(),
    };
}

/// `directives` with the NATS client held to `debug` when they ask for `trace` without
/// naming it: at `trace` it logs every message it carries, payloads (message text)
/// included. Naming `async_nats` in `RUST_LOG` is taken as asking for exactly that.
fn wire_safe(directives: &str) -> String {
    let lower = directives.to_ascii_lowercase();
    if lower.contains("trace") && !lower.contains("async_nats") {
        format!("{directives},async_nats=debug")
    } else {
        directives.to_string()
    }
}

/// One JSON object per event: `time`, `level`, `target`, `node_id`, `trace_id` (when the
/// event happens inside a request or frame), the event's fields, and `spans`, the
/// enclosing spans with their fields, outermost first.
struct JsonLines {
    node_id: Box<str>,
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut line = Map::new();
        let mut time = String::new();
        SystemTime.format_time(&mut Writer::new(&mut time))?;
        line.insert("time".into(), time.into());
        let metadata = event.metadata();
        line.insert("level".into(), metadata.level().as_str().into());
        line.insert("target".into(), metadata.target().into());
        line.insert("node_id".into(), (*self.node_id).into());
        if let Some(trace_id) = current_traceparent().as_deref().and_then(trace_id_of) {
            line.insert("trace_id".into(), trace_id.into());
        }
        event.record(&mut JsonFields(&mut line));
        let spans: Vec<Value> = ctx
            .event_scope()
            .into_iter()
            .flat_map(|scope| scope.from_root())
            .map(|span| {
                let extensions = span.extensions();
                match extensions.get::<FormattedFields<N>>() {
                    Some(fields) if !fields.is_empty() => {
                        format!("{}{{{}}}", span.name(), fields.fields).into()
                    }
                    _ => span.name().into(),
                }
            })
            .collect();
        if !spans.is_empty() {
            line.insert("spans".into(), spans.into());
        }
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// Records an event's fields into a JSON object, keeping numbers and booleans typed.
struct JsonFields<'a>(&'a mut Map<String, Value>);

impl Visit for JsonFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

/// The trace id (32 hex digits, not all zero) of a valid `traceparent`.
fn trace_id_of(traceparent: &str) -> Option<&str> {
    let parts: Vec<&str> = traceparent.split('-').collect();
    let trace_id = *parts.get(1)?;
    let valid = parts.len() == 4
        && trace_id.len() == 32
        && trace_id.bytes().all(|b| b.is_ascii_hexdigit())
        && trace_id.bytes().any(|b| b != b'0');
    valid.then_some(trace_id)
}

tokio::task_local! {
    static TRACEPARENT: Arc<str>;
}

/// A `traceparent` for new work: the same trace as `parent` (a valid W3C header value)
/// with a new span id, or a new trace.
pub fn child_traceparent(parent: Option<&str>) -> String {
    let span_id = &Uuid::new_v4().simple().to_string()[..16];
    let trace_id = parent
        .and_then(|p| trace_id_of(p.trim()))
        .map(str::to_ascii_lowercase)
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
