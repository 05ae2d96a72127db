//! Logging and trace context.
//!
//! Logs are `tracing` events filtered by `RUST_LOG` (default `info`), written as one JSON
//! object per line (`LOG_FORMAT=json`, the default) or as text. Every JSON line names the
//! node (`node_id`) and, inside a request or a WebSocket frame, the W3C trace it belongs
//! to (`trace_id`). Every request and frame runs with a `traceparent` (continued from the
//! client's header, or new); events published to NATS carry it in their headers, and the
//! nodes that deliver them log it, so one message can be followed across nodes.
//!
//! With `OTEL_EXPORTER_OTLP_ENDPOINT` set, the same trace context also becomes
//! OpenTelemetry spans ([`TraceSpan`]), exported by [`otlp`]: a message's trace runs from
//! the request or frame that sent it, through its Postgres commit and its NATS publish
//! (whose `traceparent` header carries the context), to the fan-out on every node that
//! delivers it. Without a collector no span is made: each step runs under the context of
//! the request or frame that began it, so the logs still share its trace id.
//!
//! What is never logged: tokens, passwords and message text. Handlers and store calls are
//! instrumented with ids only, request spans record the path without its query (where a
//! WebSocket token may be), the Postgres driver's statement logging (parameters
//! included) goes through the `log` crate, which this subscriber does not collect, and
//! the NATS client, which logs message payloads at `trace`, is held to `debug` unless
//! `RUST_LOG` names it.

pub mod otlp;

use std::{
    borrow::Cow,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::SystemTime,
};

use opentelemetry::{
    Context, KeyValue,
    trace::{
        Span as _, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState,
        Tracer as _,
    },
};

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
        time::{FormatTime, SystemTime as LogClock},
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
        LogClock.format_time(&mut Writer::new(&mut time))?;
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

/// The four dash-separated fields of a `traceparent` (version, trace id, span id,
/// flags), split without allocating: this runs for every frame, commit and delivery.
fn traceparent_fields(traceparent: &str) -> Option<[&str; 4]> {
    let mut fields = traceparent.trim().split('-');
    let parsed = [
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    ];
    fields.next().is_none().then_some(parsed)
}

/// The trace id (32 hex digits, not all zero) of a valid `traceparent`.
fn trace_id_of(traceparent: &str) -> Option<&str> {
    let [_, trace_id, _, _] = traceparent_fields(traceparent)?;
    let valid = trace_id.len() == 32
        && trace_id.bytes().all(|b| b.is_ascii_hexdigit())
        && trace_id.bytes().any(|b| b != b'0');
    valid.then_some(trace_id)
}

/// Whether `traceparent` is exactly what this node would write (W3C's field widths,
/// lower-case hex, no padding, non-zero ids), so that work can run under it as it is.
fn is_canonical(traceparent: &str) -> bool {
    let Some(fields) = traceparent_fields(traceparent) else {
        return false;
    };
    let lower_hex = |field: &str| {
        field
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let non_zero = |field: &str| field.bytes().any(|b| b != b'0');
    traceparent.len() == 55
        && fields
            .iter()
            .zip([2, 32, 16, 2])
            .all(|(field, width)| field.len() == width)
        && fields.iter().all(|field| lower_hex(field))
        && non_zero(fields[1])
        && non_zero(fields[2])
}

tokio::task_local! {
    static TRACEPARENT: Arc<str>;
}

/// A `traceparent` for new work: the same trace as `parent` (a valid W3C header value)
/// with a new span id, or a new trace.
///
/// Every step of every send makes one, so the parent's trace id is copied as text (in
/// lower case, as W3C writes it) rather than parsed and formatted again.
pub fn child_traceparent(parent: Option<&str>) -> String {
    use std::fmt::Write;
    let mut traceparent = String::with_capacity(55);
    traceparent.push_str("00-");
    match parent.and_then(trace_id_of) {
        Some(trace_id) => traceparent.extend(trace_id.chars().map(|c| c.to_ascii_lowercase())),
        None => {
            let (high, low) = Uuid::new_v4().as_u64_pair();
            let _ = write!(traceparent, "{high:016x}{low:016x}");
        }
    }
    // The low half of a v4 UUID holds its variant bits, so it is never zero.
    let span_id = Uuid::new_v4().as_u64_pair().1;
    let _ = write!(traceparent, "-{span_id:016x}-01");
    traceparent
}

/// Whether a tracer provider was installed through [`set_tracer_provider`]. Without one,
/// spans go nowhere, and a [`TraceSpan`] skips building one (7.5 % of a node's time in
/// a hot room, for a span the no-op provider discards).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Installs `provider` as the global tracer provider, from which [`TraceSpan`]s export.
pub fn set_tracer_provider(provider: opentelemetry_sdk::trace::SdkTracerProvider) {
    opentelemetry::global::set_tracer_provider(provider);
    EXPORTING.store(true, Ordering::Release);
}

/// One step of a trace, exported as an OpenTelemetry span when a tracer provider is
/// installed ([`otlp::install`], or a test's in-memory exporter, both through
/// [`set_tracer_provider`]). It ends when dropped.
/// Its [`TraceSpan::traceparent`] is what work done on its behalf runs under, so the
/// next step becomes its child, on this node or, through NATS headers, on another.
pub struct TraceSpan {
    /// `None` while nothing exports.
    span: Option<opentelemetry::global::BoxedSpan>,
    traceparent: Arc<str>,
}

impl TraceSpan {
    /// Starts a span as the child of `parent` (a `traceparent`), or of nothing.
    pub fn start(
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        parent: Option<&Arc<str>>,
        node_id: &str,
    ) -> Self {
        Self::start_at(name, kind, parent, node_id, None)
    }

    /// As [`TraceSpan::start`], for work that began at `started` (a group commit that
    /// ran before the span could be made).
    pub fn start_at(
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        parent: Option<&Arc<str>>,
        node_id: &str,
        started: Option<SystemTime>,
    ) -> Self {
        if !EXPORTING.load(Ordering::Acquire) {
            // Nothing exports spans, so a new span id would name a span that never
            // exists: the work continues its parent's context (logs need only its trace
            // id), and only work without a valid parent starts a trace. Every step of
            // every message came here (4 % of a node's time in a `rooms` run).
            let traceparent = match parent {
                Some(parent) if is_canonical(parent) => Arc::clone(parent),
                _ => child_traceparent(parent.map(|parent| &**parent)).into(),
            };
            return Self {
                span: None,
                traceparent,
            };
        }
        let tracer = opentelemetry::global::tracer("natter");
        let parent = parent.map(|parent| &**parent);
        let remote = parent.and_then(remote_context);
        let parent_span_id = remote
            .as_ref()
            .map_or(SpanId::INVALID, SpanContext::span_id);
        let parent_context = remote
            .map(|remote| Context::new().with_remote_span_context(remote))
            .unwrap_or_default();
        let mut builder = tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes([KeyValue::new("natter.node_id", node_id.to_string())]);
        builder.start_time = started;
        let span = builder.start_with_context(&tracer, &parent_context);
        let context = span.span_context();
        // Without a provider the no-op span only echoes its parent; then a new span id
        // still keeps the trace id for the logs.
        let exported = context.is_valid() && context.span_id() != parent_span_id;
        let traceparent = if exported {
            format!(
                "00-{}-{}-{:02x}",
                context.trace_id(),
                context.span_id(),
                context.trace_flags().to_u8()
            )
        } else {
            child_traceparent(parent)
        };
        Self {
            span: Some(span),
            traceparent: traceparent.into(),
        }
    }

    /// The context work done for this span runs under.
    pub fn traceparent(&self) -> &Arc<str> {
        &self.traceparent
    }

    pub fn set_attribute(&mut self, key: &'static str, value: impl Into<opentelemetry::Value>) {
        if let Some(span) = &mut self.span {
            span.set_attribute(KeyValue::new(key, value));
        }
    }
}

/// The remote span context a valid `traceparent` names.
fn remote_context(traceparent: &str) -> Option<SpanContext> {
    let [_, trace_id, span_id, flags] = traceparent_fields(traceparent)?;
    if trace_id.len() != 32 || span_id.len() != 16 || flags.len() != 2 {
        return None;
    }
    let context = SpanContext::new(
        TraceId::from_hex(trace_id).ok()?,
        SpanId::from_hex(span_id).ok()?,
        TraceFlags::new(u8::from_str_radix(flags, 16).ok()?),
        true,
        TraceState::default(),
    );
    context.is_valid().then_some(context)
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
        assert!(trace_id_of(&fresh).is_some());
        let upper = child_traceparent(Some(
            " 00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01 ",
        ));
        assert!(upper.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
    }

    #[test]
    fn without_an_exporter_a_span_runs_under_its_parents_context() {
        let parent: Arc<str> = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into();
        let span = TraceSpan::start("step", SpanKind::Internal, Some(&parent), "node");
        assert!(Arc::ptr_eq(span.traceparent(), &parent));
        // A client's header in another spelling is written the node's way.
        let upper: Arc<str> = " 00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01".into();
        let span = TraceSpan::start("step", SpanKind::Internal, Some(&upper), "node");
        assert!(
            span.traceparent()
                .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
        );
        let garbage: Arc<str> = "garbage".into();
        // The right length and a valid trace id, but a span id of the wrong width.
        let misshapen: Arc<str> = "000-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01".into();
        for parent in [Some(&garbage), Some(&misshapen), None] {
            let span = TraceSpan::start("step", SpanKind::Internal, parent, "node");
            assert!(is_canonical(span.traceparent()));
        }
    }

    #[test]
    fn a_traceparent_with_extra_or_missing_fields_is_invalid() {
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(trace_id_of(valid).is_some());
        assert!(remote_context(valid).is_some());
        for invalid in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        ] {
            assert!(trace_id_of(invalid).is_none(), "{invalid}");
            assert!(remote_context(invalid).is_none(), "{invalid}");
        }
    }
}
