//! Exports finished spans to an OpenTelemetry collector as OTLP/HTTP JSON
//! (`POST {OTEL_EXPORTER_OTLP_ENDPOINT}/v1/traces`), which every collector accepts.
//!
//! opentelemetry-otlp encodes the spans; they travel through the node's own HTTP client
//! ([`NodeHttp`]), so the exporter brings no second HTTP stack and reaches an `https`
//! collector with the same TLS roots as every other call the node makes. The SDK's batch
//! processor exports from a thread of its own and waits for each export: [`NodeHttp`]
//! hands the request, without waiting for room, to one task on the node's runtime that
//! posts it. That queue is bounded: when the collector is slow or gone, batches are
//! refused (and the SDK drops them), never buffered without bound and never waited for by
//! a request.
//!
//! The standard variables are honoured, each declared once in `config`:
//! `OTEL_EXPORTER_OTLP_HEADERS` (sent with every export), `OTEL_RESOURCE_ATTRIBUTES`
//! (merged into the resource; `OTEL_SERVICE_NAME` wins over a `service.name` there) and
//! `OTEL_TRACES_SAMPLER` with `OTEL_TRACES_SAMPLER_ARG`.

use std::time::Duration;

use async_trait::async_trait;
use opentelemetry::KeyValue;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::{
    Resource,
    trace::{Sampler, SdkTracerProvider},
};
use tokio::sync::{mpsc, oneshot};

use crate::config::{OtlpHeaders, Settings, TracesSampler};

/// Exports waiting for the poster.
const QUEUED_EXPORTS: usize = 32;
/// How long one POST to the collector may take.
const POST_TIMEOUT: Duration = Duration::from_secs(5);

/// Installs a global tracer provider that exports to the collector at
/// `settings.otlp_endpoint` (the OTLP/HTTP base URL, e.g. `http://otel-collector:4318`),
/// if there is one. Must run inside the node's Tokio runtime. Returns the provider, to
/// flush it at shutdown.
pub fn install(
    settings: &Settings,
) -> Result<Option<SdkTracerProvider>, opentelemetry_otlp::ExporterBuildError> {
    let Some(endpoint) = settings.otlp_endpoint.as_deref() else {
        return Ok(None);
    };
    let (requests, queue) = mpsc::channel(QUEUED_EXPORTS);
    tokio::spawn(post_exports(queue, settings.otlp_headers.clone()));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(NodeHttp { requests })
        .with_protocol(Protocol::HttpJson)
        .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
        .with_timeout(POST_TIMEOUT)
        .build()?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource(settings))
        .with_sampler(sampler(
            settings.traces_sampler,
            settings.traces_sampler_arg,
        ))
        .build();
    super::set_tracer_provider(provider.clone());
    Ok(Some(provider))
}

/// The spans' resource: the node as `service.instance.id` (unless
/// `OTEL_RESOURCE_ATTRIBUTES` names another), those attributes, and `service.name`.
fn resource(settings: &Settings) -> Resource {
    let attributes = settings
        .resource_attributes
        .iter()
        .map(|(key, value)| KeyValue::new(key.clone(), value.clone()));
    Resource::builder_empty()
        .with_attribute(KeyValue::new(
            "service.instance.id",
            settings.node_id.clone(),
        ))
        .with_attributes(attributes)
        .with_service_name(settings.service_name.clone())
        .build()
}

/// The sampler `OTEL_TRACES_SAMPLER` names, with `ratio` for the ratio samplers.
fn sampler(kind: TracesSampler, ratio: f64) -> Sampler {
    let parent_based = |root| Sampler::ParentBased(Box::new(root));
    match kind {
        TracesSampler::AlwaysOn => Sampler::AlwaysOn,
        TracesSampler::AlwaysOff => Sampler::AlwaysOff,
        TracesSampler::TraceIdRatio => Sampler::TraceIdRatioBased(ratio),
        TracesSampler::ParentBasedAlwaysOn => parent_based(Sampler::AlwaysOn),
        TracesSampler::ParentBasedAlwaysOff => parent_based(Sampler::AlwaysOff),
        TracesSampler::ParentBasedTraceIdRatio => parent_based(Sampler::TraceIdRatioBased(ratio)),
    }
}

/// A request to the collector and where its answer goes.
type Export = (
    Request<Bytes>,
    oneshot::Sender<Result<Response<Bytes>, String>>,
);

/// The exporter's HTTP client: a handle on [`post_exports`].
#[derive(Debug)]
struct NodeHttp {
    requests: mpsc::Sender<Export>,
}

#[async_trait]
impl HttpClient for NodeHttp {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (answer, answered) = oneshot::channel();
        self.requests
            .try_send((request, answer))
            .map_err(|_| "the span export queue is full")?;
        let response = answered
            .await
            .map_err(|_| "the node stopped before the export was posted")?;
        Ok(response?)
    }
}

/// Posts each export, with `headers`, through one reqwest client on the node's runtime,
/// in order. Ends when the exporter is dropped.
async fn post_exports(mut queue: mpsc::Receiver<Export>, headers: OtlpHeaders) {
    let http = reqwest::Client::builder()
        .timeout(POST_TIMEOUT)
        .build()
        .unwrap_or_default();
    while let Some((request, answer)) = queue.recv().await {
        let (mut parts, body) = request.into_parts();
        for (name, value) in &headers.0 {
            parts.headers.insert(name.clone(), value.clone());
        }
        let posted = async {
            let response = http
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body)
                .send()
                .await?;
            let status = response.status();
            let body = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, body))
        };
        let answered = match posted.await {
            Ok((status, body)) => Response::builder()
                .status(status)
                .body(body)
                .map_err(|e| e.to_string()),
            Err(err) => {
                tracing::debug!(error = %err, "exporting spans failed");
                Err(err.to_string())
            }
        };
        let _ = answer.send(answered);
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::SpanKind;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::*;
    use crate::telemetry::TraceSpan;

    /// Accepts one HTTP request and answers 200; returns its head and body.
    async fn one_request(listener: TcpListener) -> (String, serde_json::Value) {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut received = Vec::new();
        let mut chunk = [0u8; 4096];
        let (head, length) = loop {
            let read = stream.read(&mut chunk).await.unwrap();
            received.extend_from_slice(&chunk[..read]);
            let text = String::from_utf8_lossy(&received).to_string();
            if let Some((head, _)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|l| {
                        l.to_lowercase()
                            .strip_prefix("content-length: ")
                            .map(str::to_string)
                    })
                    .and_then(|l| l.trim().parse::<usize>().ok())
                    .unwrap();
                break (head.to_string(), length);
            }
        };
        while received.len() < head.len() + 4 + length {
            let read = stream.read(&mut chunk).await.unwrap();
            received.extend_from_slice(&chunk[..read]);
        }
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        let body = serde_json::from_slice(&received[head.len() + 4..]).unwrap();
        (head, body)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn finished_spans_reach_the_collector_as_otlp_json_with_the_nodes_resource() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}/", listener.local_addr().unwrap());
        let collector = tokio::spawn(one_request(listener));
        let settings = Settings::from_lookup(|name| {
            let value = match name {
                "DATABASE_URL" => "postgres://u@localhost/db",
                "NATS_URL" => "nats://localhost:4222",
                "NODE_ID" => "node-7",
                "OTEL_EXPORTER_OTLP_ENDPOINT" => &endpoint,
                "OTEL_SERVICE_NAME" => "natter-test",
                "OTEL_RESOURCE_ATTRIBUTES" => "service.name=other,deployment.environment=test",
                "OTEL_EXPORTER_OTLP_HEADERS" => "x-api-key=collector-key%21",
                _ => return None,
            };
            Some(value.to_string())
        })
        .unwrap();
        let provider = install(&settings).unwrap().unwrap();
        let parent: std::sync::Arc<str> =
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into();
        let mut span =
            TraceSpan::start("nats publish", SpanKind::Producer, Some(&parent), "node-7");
        span.set_attribute("natter.seq", 7_i64);
        drop(span);
        let flushed = tokio::task::spawn_blocking(move || provider.force_flush());
        let (head, body) = tokio::time::timeout(Duration::from_secs(10), collector)
            .await
            .expect("the collector got the spans")
            .unwrap();
        flushed.await.unwrap().unwrap();
        assert!(head.starts_with("POST /v1/traces HTTP/1.1"), "{head}");
        let head = head.to_lowercase();
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(head.contains("x-api-key: collector-key!"), "{head}");
        let resource = &body["resourceSpans"][0]["resource"]["attributes"];
        let attribute = |key: &str| {
            resource
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["key"] == key)
                .map(|a| a["value"]["stringValue"].clone())
        };
        assert_eq!(attribute("service.name"), Some("natter-test".into()));
        assert_eq!(attribute("service.instance.id"), Some("node-7".into()));
        assert_eq!(attribute("deployment.environment"), Some("test".into()));
        let span = &body["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(span["name"], "nats publish");
        assert_eq!(span["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(span["parentSpanId"], "00f067aa0ba902b7");
        assert_eq!(span["kind"], 4);
    }

    #[test]
    fn each_standard_sampler_decides_as_the_specification_says() {
        use opentelemetry::{
            Context,
            trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState},
        };
        use opentelemetry_sdk::trace::{SamplingDecision, ShouldSample};

        let trace_id = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        let parent = |flags| {
            Context::new().with_remote_span_context(SpanContext::new(
                trace_id,
                SpanId::from_hex("00f067aa0ba902b7").unwrap(),
                flags,
                true,
                TraceState::NONE,
            ))
        };
        let (sampled, unsampled) = (parent(TraceFlags::SAMPLED), parent(TraceFlags::default()));
        let decide = |kind, ratio, parent: Option<&Context>| {
            let decision = sampler(kind, ratio)
                .should_sample(parent, trace_id, "step", &SpanKind::Internal, &[], &[])
                .decision;
            decision == SamplingDecision::RecordAndSample
        };
        use TracesSampler::*;
        assert!(decide(AlwaysOn, 1.0, Some(&unsampled)));
        assert!(!decide(AlwaysOff, 1.0, Some(&sampled)));
        assert!(decide(TraceIdRatio, 1.0, None));
        assert!(!decide(TraceIdRatio, 0.0, None));
        assert!(decide(ParentBasedAlwaysOn, 1.0, None));
        assert!(!decide(ParentBasedAlwaysOn, 1.0, Some(&unsampled)));
        assert!(!decide(ParentBasedAlwaysOff, 1.0, None));
        assert!(decide(ParentBasedAlwaysOff, 1.0, Some(&sampled)));
        assert!(!decide(ParentBasedTraceIdRatio, 0.0, None));
        assert!(decide(ParentBasedTraceIdRatio, 0.0, Some(&sampled)));
    }
}
