//! `/metrics` in Prometheus text.
//!
//! Each layer counts what it alone sees, in plain atomics, so recording costs a relaxed
//! increment and allocates nothing: the API counts responses and sockets here in
//! [`Metrics`], the relay counts deliveries, repairs and slow-consumer closes
//! ([`crate::relay::RelayStats`]), the store and the bus count their own failures. A
//! scrape gathers them into one [`Scrape`] and renders it.

use std::{
    fmt::Write,
    sync::atomic::{AtomicI64, AtomicU64, Ordering},
};

use poem::http::StatusCode;

use crate::{relay::RelayStats, store::commit::CommitTimings};

/// What the API layer counts.
#[derive(Default)]
pub struct Metrics {
    /// Responses by status class: 1xx..5xx at index 0..4.
    responses: [AtomicU64; 5],
    messages_stored: AtomicU64,
    sends_rate_limited: AtomicU64,
    sockets_open: AtomicI64,
    sockets_accepted: AtomicU64,
}

impl Metrics {
    pub fn count_response(&self, status: StatusCode) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.responses[class].fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_message_stored(&self) {
        self.messages_stored.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_rate_limited(&self) {
        self.sends_rate_limited.fetch_add(1, Ordering::Relaxed);
    }

    pub fn socket_opened(&self) {
        self.sockets_accepted.fetch_add(1, Ordering::Relaxed);
        self.sockets_open.fetch_add(1, Ordering::Relaxed);
    }

    pub fn socket_closed(&self) {
        self.sockets_open.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn sockets_open(&self) -> i64 {
        self.sockets_open.load(Ordering::Relaxed)
    }
}

/// Everything one scrape reports, borrowed from the layers that count it.
pub struct Scrape<'a> {
    pub node_id: &'a str,
    pub api: &'a Metrics,
    pub relay: &'a RelayStats,
    pub commit: &'a CommitTimings,
    pub pool: deadpool_postgres::Status,
    pub db_errors: u64,
    pub nats_errors: u64,
    pub nats_connected: bool,
    pub rooms_relayed: usize,
    pub subscriptions: usize,
    pub draining: bool,
}

impl Scrape<'_> {
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let node = format!("node=\"{}\"", self.node_id.replace(['"', '\\', '\n'], "_"));
        let api = self.api;
        let relay = self.relay;
        out.push_str("# HELP natter_http_responses_total HTTP responses by status class.\n");
        out.push_str("# TYPE natter_http_responses_total counter\n");
        for (i, count) in api.responses.iter().enumerate() {
            let _ = writeln!(
                out,
                "natter_http_responses_total{{{node},class=\"{}xx\"}} {}",
                i + 1,
                count.load(Ordering::Relaxed)
            );
        }
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let counters = [
            (
                "natter_websocket_connections_total",
                "WebSocket connections accepted.",
                load(&api.sockets_accepted),
            ),
            (
                "natter_messages_stored_total",
                "Messages committed by this node.",
                load(&api.messages_stored),
            ),
            (
                "natter_sends_rate_limited_total",
                "Sends refused by the per-user rate limit (REST 429 or WebSocket error).",
                load(&api.sends_rate_limited),
            ),
            (
                "natter_events_received_total",
                "Room events received from NATS.",
                load(&relay.received),
            ),
            (
                "natter_events_delivered_total",
                "Events queued to local sockets (one per socket).",
                load(&relay.delivered),
            ),
            (
                "natter_gap_repairs_total",
                "Gaps in a room's seq filled from Postgres.",
                load(&relay.gap_repairs),
            ),
            (
                "natter_messages_repaired_total",
                "Messages delivered from Postgres because NATS did not bring them.",
                load(&relay.repaired),
            ),
            (
                "natter_slow_consumer_closes_total",
                "Sockets closed with 4008 because their queue was full.",
                load(&relay.slow_closes),
            ),
            (
                "natter_db_errors_total",
                "Postgres failures: pool checkouts and failed group commits.",
                self.db_errors,
            ),
            (
                "natter_nats_errors_total",
                "NATS failures: disconnections, failed publishes and subscriptions.",
                self.nats_errors,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{{node}}} {value}"
            );
        }
        let gauges = [
            (
                "natter_websockets_open",
                "WebSocket connections open now.",
                api.sockets_open.load(Ordering::Relaxed),
            ),
            (
                "natter_subscriptions",
                "Live room subscriptions of this node's sockets.",
                self.subscriptions as i64,
            ),
            (
                "natter_rooms_relayed",
                "Rooms this node subscribes to on NATS.",
                self.rooms_relayed as i64,
            ),
            (
                "natter_db_pool_size",
                "Postgres connections open.",
                self.pool.size as i64,
            ),
            (
                "natter_db_pool_available",
                "Idle Postgres connections.",
                self.pool.available as i64,
            ),
            (
                "natter_db_pool_waiting",
                "Callers waiting for a Postgres connection.",
                self.pool.waiting as i64,
            ),
            (
                "natter_nats_connected",
                "1 while connected to NATS.",
                i64::from(self.nats_connected),
            ),
            (
                "natter_draining",
                "1 once the node has begun its graceful drain.",
                i64::from(self.draining),
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{{node}}} {value}"
            );
        }
        out.push_str(
            "# HELP natter_fanout_latency_seconds From a message's commit to its hand-off to this node's sockets.\n",
        );
        relay
            .fanout_latency
            .render(&mut out, "natter_fanout_latency_seconds", &node);
        out.push_str(
            "# HELP natter_send_queue_wait_seconds From a send's arrival to the start of the transaction that stores it.\n",
        );
        self.commit
            .queue_wait
            .render(&mut out, "natter_send_queue_wait_seconds", &node);
        out.push_str(
            "# HELP natter_send_transaction_seconds The group commit's transactions, each storing a batch of sends.\n",
        );
        self.commit
            .transaction
            .render(&mut out, "natter_send_transaction_seconds", &node);
        out
    }
}
