//! Exports finished spans as OTLP/HTTP JSON (`POST {OTEL_EXPORTER_OTLP_ENDPOINT}/v1/traces`),
//! which every OpenTelemetry collector accepts.
//!
//! The SDK's batch processor hands [`JsonExporter`] batches on its own thread; the
//! exporter encodes each batch and queues it, without waiting, for one task on the node's
//! runtime that posts it through the node's HTTP client. The queue is bounded: when the
//! collector is slow or gone, batches are dropped (and counted in the log), never
//! buffered without bound and never waited for by a request.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use opentelemetry::{
    KeyValue, Value,
    trace::{SpanKind, Status},
};
use opentelemetry_sdk::{
    error::{OTelSdkError, OTelSdkResult},
    trace::{SdkTracerProvider, SpanData, SpanExporter},
};
use serde_json::{Map, json};
use tokio::sync::mpsc;

/// Encoded batches waiting for the poster.
const QUEUED_BATCHES: usize = 32;
/// How long one POST to the collector may take.
const POST_TIMEOUT: Duration = Duration::from_secs(5);

/// Installs a global tracer provider that exports to the collector at `endpoint` (the
/// OTLP/HTTP base URL, e.g. `http://otel-collector:4318`). Must run inside the node's
/// Tokio runtime. Returns the provider, to flush it at shutdown.
pub fn install(endpoint: &str, service_name: &str, node_id: &str) -> SdkTracerProvider {
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let (batches, queue) = mpsc::channel(QUEUED_BATCHES);
    tokio::spawn(post_batches(url, queue));
    let exporter = JsonExporter {
        resource: json!({"attributes": [
            attribute(&KeyValue::new("service.name", service_name.to_string())),
            attribute(&KeyValue::new("service.instance.id", node_id.to_string())),
        ]}),
        batches,
        dropped: AtomicU64::new(0),
    };
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .build();
    super::set_tracer_provider(provider.clone());
    provider
}

async fn post_batches(url: String, mut queue: mpsc::Receiver<String>) {
    let http = reqwest::Client::builder()
        .timeout(POST_TIMEOUT)
        .build()
        .unwrap_or_default();
    while let Some(body) = queue.recv().await {
        let sent = http
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status);
        if let Err(err) = sent {
            tracing::debug!(error = %err, "exporting spans failed");
        }
    }
}

#[derive(Debug)]
struct JsonExporter {
    /// The OTLP `resource` object: service name and instance.
    resource: serde_json::Value,
    batches: mpsc::Sender<String>,
    dropped: AtomicU64,
}

impl SpanExporter for JsonExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let body = encode(&self.resource, &batch);
        if self.batches.try_send(body).is_err() {
            let dropped = self
                .dropped
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            tracing::debug!(dropped, "span queue full; spans dropped");
            return Err(OTelSdkError::InternalFailure("span queue full".into()));
        }
        Ok(())
    }
}

/// One `ExportTraceServiceRequest` in the OTLP JSON mapping.
fn encode(resource: &serde_json::Value, batch: &[SpanData]) -> String {
    let spans: Vec<serde_json::Value> = batch.iter().map(span).collect();
    json!({"resourceSpans": [{
        "resource": resource,
        "scopeSpans": [{"scope": {"name": "natter"}, "spans": spans}],
    }]})
    .to_string()
}

fn span(data: &SpanData) -> serde_json::Value {
    let context = &data.span_context;
    let mut span = Map::new();
    span.insert("traceId".into(), context.trace_id().to_string().into());
    span.insert("spanId".into(), context.span_id().to_string().into());
    if data.parent_span_id != opentelemetry::trace::SpanId::INVALID {
        span.insert(
            "parentSpanId".into(),
            data.parent_span_id.to_string().into(),
        );
    }
    span.insert("name".into(), data.name.to_string().into());
    let kind = match data.span_kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    };
    span.insert("kind".into(), kind.into());
    span.insert("startTimeUnixNano".into(), nanos(data.start_time).into());
    span.insert("endTimeUnixNano".into(), nanos(data.end_time).into());
    let attributes: Vec<_> = data.attributes.iter().map(attribute).collect();
    span.insert("attributes".into(), attributes.into());
    let status = match &data.status {
        Status::Unset => json!({"code": 0}),
        Status::Ok => json!({"code": 1}),
        Status::Error { description } => json!({"code": 2, "message": description.to_string()}),
    };
    span.insert("status".into(), status);
    span.into()
}

/// Nanoseconds since the epoch, as the decimal string the JSON mapping uses for 64-bit
/// integers.
fn nanos(time: SystemTime) -> String {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    since_epoch.as_nanos().to_string()
}

fn attribute(attribute: &KeyValue) -> serde_json::Value {
    let value = match &attribute.value {
        Value::Bool(b) => json!({"boolValue": b}),
        Value::I64(i) => json!({"intValue": i.to_string()}),
        Value::F64(f) => json!({"doubleValue": f}),
        other => json!({"stringValue": other.as_str()}),
    };
    json!({"key": attribute.key.as_str(), "value": value})
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

    use super::*;

    #[test]
    fn a_span_encodes_to_the_otlp_json_mapping() {
        let start = UNIX_EPOCH + Duration::from_nanos(1_795_000_000_123_456_789);
        let data = SpanData {
            span_context: SpanContext::new(
                TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
                SpanId::from_hex("00f067aa0ba902b7").unwrap(),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::from_hex("53995c3f42cd8ad8").unwrap(),
            parent_span_is_remote: true,
            span_kind: SpanKind::Producer,
            name: "nats publish".into(),
            start_time: start,
            end_time: start + Duration::from_micros(250),
            attributes: vec![KeyValue::new("natter.seq", 7_i64)],
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status: Status::Unset,
            instrumentation_scope: Default::default(),
        };
        let body: serde_json::Value =
            serde_json::from_str(&encode(&json!({"attributes": []}), &[data])).unwrap();
        let span = &body["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(span["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(span["spanId"], "00f067aa0ba902b7");
        assert_eq!(span["parentSpanId"], "53995c3f42cd8ad8");
        assert_eq!(span["kind"], 4);
        assert_eq!(span["startTimeUnixNano"], "1795000000123456789");
        assert_eq!(span["endTimeUnixNano"], "1795000000123706789");
        assert_eq!(span["attributes"][0]["key"], "natter.seq");
        assert_eq!(span["attributes"][0]["value"]["intValue"], "7");
    }
}
