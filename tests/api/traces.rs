//! One trace follows a message across the cluster: the request (or frame) that sent it,
//! its Postgres commit and its NATS publish on the sending node, and the fan-out on the
//! node that delivers it, each span the child of the one before, joined across nodes by
//! the `traceparent` NATS header. Spans go to an in-process exporter.

use std::time::Duration;

use opentelemetry::trace::{SpanId, SpanKind, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde_json::json;

use crate::helpers::{WsClient, settings, spawn_app, spawn_node};

fn install_exporter() -> InMemorySpanExporter {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    natter::telemetry::set_tracer_provider(provider);
    exporter
}

fn node_of(span: &SpanData) -> String {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == "natter.node_id")
        .map(|kv| kv.value.to_string())
        .unwrap_or_default()
}

/// The chain of spans in `trace_id` that ends in a fan-out on `delivering_node`, from the
/// fan-out back to the root: waits until the fan-out has ended.
async fn chain_to_fan_out(
    exporter: &InMemorySpanExporter,
    trace_id: TraceId,
    delivering_node: &str,
) -> Vec<SpanData> {
    for _ in 0..100 {
        let spans: Vec<SpanData> = exporter
            .get_finished_spans()
            .unwrap()
            .into_iter()
            .filter(|span| span.span_context.trace_id() == trace_id)
            .collect();
        if let Some(fan_out) = spans
            .iter()
            .find(|span| span.name == "fan-out" && node_of(span) == delivering_node)
        {
            let mut chain = vec![fan_out.clone()];
            while let Some(parent) = spans
                .iter()
                .find(|span| span.span_context.span_id() == chain.last().unwrap().parent_span_id)
            {
                chain.push(parent.clone());
            }
            return chain;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no fan-out span on {delivering_node} in trace {trace_id}");
}

/// `(name, kind, node)` of each span, from the root to the fan-out.
fn steps(chain: &[SpanData]) -> Vec<(String, SpanKind, String)> {
    chain
        .iter()
        .rev()
        .map(|span| (span.name.to_string(), span.span_kind.clone(), node_of(span)))
        .collect()
}

#[tokio::test]
async fn one_trace_follows_a_message_from_either_api_through_commit_and_publish_to_another_nodes_fan_out()
 {
    let exporter = install_exporter();
    let sending = spawn_app().await;
    let delivering = spawn_node(settings(&sending.database_url)).await;
    let (sending_node, delivering_node) = (
        sending.metric_label("node").await,
        delivering.metric_label("node").await,
    );
    let alice = sending.register("alice").await;
    let room = sending.create_room(&alice, "traced", "public").await;
    let mut subscriber = WsClient::connect(delivering.addr, "/v1/ws", &alice.token).await;
    subscriber.subscribe(room, None).await;

    // REST, continuing the client's own trace.
    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let posted = sending
        .http()
        .post(sending.url(&format!("/v1/rooms/{room}/messages")))
        .bearer_auth(&alice.token)
        .header("traceparent", format!("00-{client_trace}-{client_span}-01"))
        .json(&json!({"text": "traced over REST"}))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 201);
    assert_eq!(subscriber.message_seqs(1).await, vec![1]);
    let chain = chain_to_fan_out(
        &exporter,
        TraceId::from_hex(client_trace).unwrap(),
        &delivering_node,
    )
    .await;
    assert_eq!(
        steps(&chain),
        vec![
            ("POST".into(), SpanKind::Server, sending_node.clone()),
            (
                "postgres commit".into(),
                SpanKind::Internal,
                sending_node.clone()
            ),
            (
                "nats publish".into(),
                SpanKind::Producer,
                sending_node.clone()
            ),
            (
                "fan-out".into(),
                SpanKind::Consumer,
                delivering_node.clone()
            ),
        ]
    );
    let root = chain.last().unwrap();
    assert_eq!(root.parent_span_id, SpanId::from_hex(client_span).unwrap());
    assert!(root.parent_span_is_remote);

    // WebSocket: the frame starts the trace.
    let mut sender = WsClient::connect(sending.addr, "/v1/ws", &alice.token).await;
    sender
        .send(json!({"type": "send", "room_id": room, "text": "traced over WebSocket"}))
        .await;
    sender.recv_type("send_ack").await;
    assert_eq!(subscriber.message_seqs(1).await, vec![2]);
    let frame = exporter
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .filter(|span| span.name == "websocket frame" && node_of(span) == sending_node)
        .last()
        .expect("the send frame's span");
    let chain = chain_to_fan_out(&exporter, frame.span_context.trace_id(), &delivering_node).await;
    assert_eq!(
        steps(&chain),
        vec![
            (
                "websocket frame".into(),
                SpanKind::Server,
                sending_node.clone()
            ),
            (
                "postgres commit".into(),
                SpanKind::Internal,
                sending_node.clone()
            ),
            ("nats publish".into(), SpanKind::Producer, sending_node),
            ("fan-out".into(), SpanKind::Consumer, delivering_node),
        ]
    );
}
