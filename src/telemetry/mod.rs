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
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::{
        Span as _, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState,
        Tracer as _,
    },
};
use opentelemetry_sdk::propagation::TraceContextPropagator;

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

/// Installs the global subscriber, writing the events `directives` (`RUST_LOG`) let
/// through; a second call (tests) is a no-op.
pub fn init(format: LogFormat, node_id: &str, directives: &str) {
    let filter = EnvFilter::try_new(wire_safe(directives)).unwrap_or_else(|err| {
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
        if let Some(remote) = current_traceparent().as_deref().and_then(extract) {
            line.insert("trace_id".into(), remote.trace_id().to_string().into());
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

/// A carrier holding one `traceparent`, for [`TraceContextPropagator`] to read.
struct Traceparent<'a>(&'a str);

impl Extractor for Traceparent<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == "traceparent").then_some(self.0)
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}

/// A carrier the propagator writes a `traceparent` into (the `tracestate` is not
/// carried).
#[derive(Default)]
struct Written(Option<String>);

impl Injector for Written {
    fn set(&mut self, key: &str, value: String) {
        if key == "traceparent" {
            self.0 = Some(value);
        }
    }
}

/// The remote span context a valid W3C `traceparent` names.
fn extract(traceparent: &str) -> Option<SpanContext> {
    let context = TraceContextPropagator::new().extract(&Traceparent(traceparent));
    let remote = context.span().span_context().clone();
    remote.is_valid().then_some(remote)
}

/// The `traceparent` that names `span` (valid).
fn inject(span: &SpanContext) -> String {
    let context = Context::new().with_remote_span_context(span.clone());
    let mut carrier = Written::default();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.0.unwrap_or_default()
}

/// Whether `traceparent` has version 00's shape (`00-`, 55 characters, only the sampled
/// flag or none): a valid one then has nothing the propagator would drop or rewrite.
fn is_version_00(traceparent: &str) -> bool {
    traceparent.len() == 55
        && traceparent.starts_with("00-")
        && (traceparent.ends_with("-01") || traceparent.ends_with("-00"))
}

tokio::task_local! {
    static TRACEPARENT: Arc<str>;
}

/// A `traceparent` for new work: the same trace as `parent` (a valid W3C header value)
/// with a new span id and the parent's sampling flag, or a new, sampled trace.
pub fn child_traceparent(parent: Option<&str>) -> String {
    let (trace_id, flags) = match parent.and_then(extract) {
        Some(parent) => (parent.trace_id(), parent.trace_flags()),
        None => (
            TraceId::from_bytes(Uuid::new_v4().into_bytes()),
            TraceFlags::SAMPLED,
        ),
    };
    // The low half of a v4 UUID holds its variant bits, so it is never zero.
    let span_id = SpanId::from(Uuid::new_v4().as_u64_pair().1);
    inject(&SpanContext::new(
        trace_id,
        span_id,
        flags,
        false,
        TraceState::NONE,
    ))
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
            let traceparent = match parent.and_then(|parent| Some((parent, extract(parent)?))) {
                // A valid version-00 value is exactly as the propagator would write it
                // (it refuses upper case): shared, not written again. Nearly always the
                // case, since this node or another wrote it; writing it anew cost an
                // allocation and a format per step of every message.
                Some((parent, _)) if is_version_00(parent) => Arc::clone(parent),
                Some((_, remote)) => inject(&remote).into(),
                None => child_traceparent(None).into(),
            };
            return Self {
                span: None,
                traceparent,
            };
        }
        let tracer = opentelemetry::global::tracer("natter");
        let parent = parent.map(|parent| &**parent);
        let parent_context = match parent {
            Some(parent) => TraceContextPropagator::new().extract(&Traceparent(parent)),
            None => Context::new(),
        };
        let parent_span_id = parent_context.span().span_context().span_id();
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
            inject(context)
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

    /// Whether `traceparent` is written as this node writes it: version 00, W3C's field
    /// widths, lower-case hex, valid ids.
    fn is_canonical(traceparent: &str) -> bool {
        extract(traceparent).is_some_and(|remote| inject(&remote) == traceparent)
    }

    #[test]
    fn a_child_keeps_the_parents_trace_and_flags_and_gets_its_own_span() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let child = child_traceparent(Some(parent));
        assert!(child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(child.ends_with("-01") && is_canonical(&child), "{child}");
        assert_ne!(child, parent);
        let unsampled = child_traceparent(Some(
            " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00 ",
        ));
        assert!(unsampled.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(unsampled.ends_with("-00"), "{unsampled}");
        // W3C: upper-case hex is not a valid traceparent, so it starts a new trace.
        for invalid in [
            "garbage",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
        ] {
            let fresh = child_traceparent(Some(invalid));
            assert!(is_canonical(&fresh) && fresh.ends_with("-01"), "{fresh}");
            assert!(!fresh.contains("4bf92f3577b34da6a3ce929d0e0e4736"));
        }
    }

    #[test]
    fn without_an_exporter_a_span_runs_under_its_parents_context() {
        let parent: Arc<str> = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into();
        let span = TraceSpan::start("step", SpanKind::Internal, Some(&parent), "node");
        assert!(Arc::ptr_eq(span.traceparent(), &parent));
        // A client's header with spaces around it is written the node's way.
        let padded: Arc<str> = " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 ".into();
        let span = TraceSpan::start("step", SpanKind::Internal, Some(&padded), "node");
        assert_eq!(**span.traceparent(), *parent.trim());
        let garbage: Arc<str> = "garbage".into();
        let upper: Arc<str> = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01".into();
        for parent in [Some(&garbage), Some(&upper), None] {
            let span = TraceSpan::start("step", SpanKind::Internal, parent, "node");
            assert!(is_canonical(span.traceparent()), "{}", span.traceparent());
        }
    }

    #[test]
    fn a_traceparent_with_extra_or_missing_fields_is_invalid() {
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let remote = extract(valid).unwrap();
        assert_eq!(
            remote.trace_id(),
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap()
        );
        assert_eq!(inject(&remote), valid);
        for invalid in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(extract(invalid).is_none(), "{invalid}");
        }
    }
}
