//! `/metrics`: prometheus-client's registry, rendered as OpenMetrics text.
//!
//! Each layer counts what it alone sees with prometheus-client's counters and
//! histograms, so recording costs a relaxed increment and allocates nothing: the API
//! counts responses and sockets here in [`Metrics`], the relay counts deliveries,
//! repairs and slow-consumer closes ([`RelayStats`]), the group commit times its sends
//! ([`CommitTimings`]). [`registry`] registers them once, every series labelled with
//! the node; what is read rather than counted (pool occupancy, failures the store and
//! the bus count, subscriptions) is read at each scrape by a [`Collector`] the caller
//! provides.

use std::borrow::Cow;

use poem::http::StatusCode;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{
        counter::{ConstCounter, Counter},
        gauge::{ConstGauge, Gauge},
    },
    registry::Registry,
};

use tokio::sync::watch;

use crate::{
    bus::Bus,
    relay::{RelayStats, RoomHub},
    store::{Store, commit::CommitTimings},
    webhooks::{deliver::DeliveryMetrics, send_hook::SendHook},
};

/// The `Content-Type` of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the API layer counts. Clones count into the same series.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// Responses by status class: 1xx..5xx at index 0..4.
    responses: [Counter; 5],
    messages_stored: Counter,
    sends_rate_limited: Counter,
    sockets_open: Gauge,
    sockets_accepted: Counter,
    tickets_redeemed: Counter,
    tokens_in_urls: Counter,
}

impl Metrics {
    pub fn count_response(&self, status: StatusCode) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.responses[class].inc();
    }

    pub fn count_message_stored(&self) {
        self.messages_stored.inc();
    }

    pub fn count_rate_limited(&self) {
        self.sends_rate_limited.inc();
    }

    pub fn socket_opened(&self) {
        self.sockets_accepted.inc();
        self.sockets_open.inc();
    }

    /// A WebSocket upgrade authenticated by a ticket.
    pub fn count_ticket_redeemed(&self) {
        self.tickets_redeemed.inc();
    }

    /// A WebSocket upgrade authenticated by `?token=`: a token in a URL, which proxies
    /// log; operators watch this fall as clients move to tickets.
    pub fn count_token_in_url(&self) {
        self.tokens_in_urls.inc();
    }

    pub fn socket_closed(&self) {
        self.sockets_open.dec();
    }

    pub fn sockets_open(&self) -> i64 {
        self.sockets_open.get()
    }
}

/// The node's registry: every series it exports, labelled `node="<node_id>"`; `live`
/// adds what is read at each scrape.
pub fn registry(
    node_id: &str,
    api: &Metrics,
    relay: &RelayStats,
    commit: &CommitTimings,
    live: impl Collector,
) -> Registry {
    let node = (Cow::Borrowed("node"), Cow::Owned(node_id.to_string()));
    let mut registry = Registry::with_labels(std::iter::once(node));
    let counters = [
        (
            "natter_websocket_connections",
            "WebSocket connections accepted",
            &api.sockets_accepted,
        ),
        (
            "natter_websocket_tickets_redeemed",
            "WebSocket upgrades authenticated by a single-use ticket",
            &api.tickets_redeemed,
        ),
        (
            "natter_websocket_tokens_in_urls",
            "WebSocket upgrades authenticated by ?token= (the token may be in access logs)",
            &api.tokens_in_urls,
        ),
        (
            "natter_messages_stored",
            "Messages committed by this node",
            &api.messages_stored,
        ),
        (
            "natter_sends_rate_limited",
            "Sends refused by the per-user rate limit (REST 429 or WebSocket error)",
            &api.sends_rate_limited,
        ),
        (
            "natter_events_received",
            "Room events received from NATS",
            &relay.received,
        ),
        (
            "natter_events_delivered",
            "Events queued to local sockets (one per socket)",
            &relay.delivered,
        ),
        (
            "natter_gap_repairs",
            "Gaps in a room's seq filled from Postgres",
            &relay.gap_repairs,
        ),
        (
            "natter_messages_repaired",
            "Messages delivered from Postgres because NATS did not bring them",
            &relay.repaired,
        ),
        (
            "natter_slow_consumer_closes",
            "Sockets closed with 4008 because their queue was full",
            &relay.slow_closes,
        ),
    ];
    for (name, help, counter) in counters {
        registry.register(name, help, counter.clone());
    }
    registry.register(
        "natter_websockets_open",
        "WebSocket connections open now",
        api.sockets_open.clone(),
    );
    let histograms = [
        (
            "natter_fanout_latency_seconds",
            "From a message's commit to its hand-off to this node's sockets",
            &relay.fanout_latency,
        ),
        (
            "natter_send_queue_wait_seconds",
            "From a send's arrival to the start of the transaction that stores it",
            &commit.queue_wait,
        ),
        (
            "natter_send_transaction_seconds",
            "The group commit's transactions, each storing a batch of sends",
            &commit.transaction,
        ),
    ];
    for (name, help, histogram) in histograms {
        registry.register(name, help, histogram.metric());
    }
    registry.register_collector(Box::new(Responses(api.responses.clone())));
    registry.register_collector(Box::new(live));
    registry
}

/// The registry as OpenMetrics text.
pub fn render(registry: &Registry) -> String {
    let mut text = String::with_capacity(8192);
    prometheus_client::encoding::text::encode(&mut text, registry)
        .expect("writing to a String does not fail");
    text
}

/// HTTP responses by status class, one series each.
#[derive(Debug)]
struct Responses([Counter; 5]);

impl Collector for Responses {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let help = "HTTP responses by status class";
        let mut family = encoder.encode_descriptor(
            "natter_http_responses",
            help,
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (i, counter) in self.0.iter().enumerate() {
            let class = [("class", format!("{}xx", i + 1))];
            ConstCounter::new(counter.get()).encode(family.encode_family(&class)?)?;
        }
        Ok(())
    }
}

/// Writes one series read at scrape time: a counter or a gauge.
pub fn encode_counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let counter = ConstCounter::new(value);
    counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)
}

/// See [`encode_counter`].
pub fn encode_gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let gauge = ConstGauge::new(value);
    gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
}

/// The webhook deliverer's series (SPEC §11).
pub fn register_webhooks(registry: &mut Registry, deliveries: &DeliveryMetrics) {
    registry.register(
        "natter_webhook_attempts",
        "Webhook delivery attempts by outcome: delivered (2xx) or failed",
        deliveries.attempts.clone(),
    );
    registry.register(
        "natter_webhook_oldest_undelivered_milliseconds",
        "Per webhook: age of the event this node attempted last (0 once caught up)",
        deliveries.oldest_undelivered_ms.clone(),
    );
    registry.register(
        "natter_webhook_attempt_latency_seconds",
        "How long webhook receivers took to answer",
        deliveries.latency.metric(),
    );
}

/// The before-send hook's series (SPEC §11), when one is configured.
pub fn register_send_hook(registry: &mut Registry, hook: &SendHook) {
    registry.register(
        "natter_send_hook_latency_seconds",
        "How long the before-send hook took to answer (or to fail)",
        hook.latency.metric(),
    );
    registry.register(
        "natter_send_hook_verdicts",
        "Before-send hook calls by outcome: allow, reject, modify, timeout, error",
        hook.outcomes.clone(),
    );
}

/// What `/metrics` reads from the layers at each scrape rather than counts.
pub struct LiveValues {
    pub store: Store,
    pub bus: Bus,
    pub hub: RoomHub,
    pub draining: watch::Receiver<bool>,
}

impl std::fmt::Debug for LiveValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveValues")
    }
}

impl Collector for LiveValues {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let counters = [
            (
                "natter_db_errors",
                "Postgres failures: pool checkouts and failed group commits",
                self.store.failures(),
            ),
            (
                "natter_db_connections_opened",
                "Postgres connections opened (beyond the pool's first, reconnects after failures)",
                self.store.connections_opened(),
            ),
            (
                "natter_nats_errors",
                "NATS failures: disconnections, failed publishes and subscriptions",
                self.bus.failures(),
            ),
        ];
        let (from_standby, from_primary) = self.store.standby_reads();
        let (access_checks, access_queries) = self.store.subscription_checks();
        let counters = counters.into_iter().chain([
            (
                "natter_subscription_access_checks",
                "Subscriptions whose access was checked in Postgres (public rooms served here need none)",
                access_checks,
            ),
            (
                "natter_subscription_access_queries",
                "Queries that answered those checks, many checks each in a burst",
                access_queries,
            ),
            (
                "natter_db_reads_from_standby",
                "Reads the standby (DATABASE_READ_URL) served, caught up",
                from_standby,
            ),
            (
                "natter_db_reads_from_primary",
                "Reads meant for the standby that the primary served (behind or down)",
                from_primary,
            ),
        ]);
        for (name, help, value) in counters {
            encode_counter(&mut encoder, name, help, value)?;
        }
        let pool = self.store.pool_status();
        let gauges = [
            (
                "natter_subscriptions",
                "Live room subscriptions of this node's sockets",
                self.hub.subscriptions() as i64,
            ),
            (
                "natter_rooms_relayed",
                "Rooms with a live subscription on this node",
                self.hub.active_rooms() as i64,
            ),
            (
                "natter_relay_nats_subscriptions",
                "NATS subscriptions of the relay: one per room shard it serves a room in",
                self.hub.nats_subscriptions() as i64,
            ),
            (
                "natter_db_pool_size",
                "Postgres connections open",
                pool.size as i64,
            ),
            (
                "natter_db_pool_available",
                "Idle Postgres connections",
                pool.available as i64,
            ),
            (
                "natter_db_pool_waiting",
                "Callers waiting for a Postgres connection",
                pool.waiting as i64,
            ),
            (
                "natter_nats_connected",
                "1 while connected to NATS",
                i64::from(self.bus.is_connected()),
            ),
            (
                "natter_draining",
                "1 once the node has begun its graceful drain",
                i64::from(*self.draining.borrow()),
            ),
        ];
        for (name, help, value) in gauges {
            encode_gauge(&mut encoder, name, help, value)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[derive(Debug)]
    struct Nothing;

    impl Collector for Nothing {
        fn encode(&self, _: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            Ok(())
        }
    }

    #[test]
    fn every_series_is_labelled_with_the_node_and_histograms_are_cumulative() {
        let api = Metrics::default();
        let relay = RelayStats::default();
        let commit = CommitTimings::default();
        api.count_response(StatusCode::CREATED);
        api.count_response(StatusCode::NOT_FOUND);
        api.count_message_stored();
        for ms in [0, 1, 3, 40, 99_999] {
            relay.fanout_latency.observe_ms(ms);
        }
        commit.queue_wait.observe(Duration::from_micros(300));
        let text = render(&registry("a\"b", &api, &relay, &commit, Nothing));
        let node = r#"node="a\"b""#;
        for line in [
            format!("natter_http_responses_total{{{node},class=\"2xx\"}} 1"),
            format!("natter_http_responses_total{{{node},class=\"4xx\"}} 1"),
            format!("natter_messages_stored_total{{{node}}} 1"),
            format!("natter_fanout_latency_seconds_bucket{{{node},le=\"0.001\"}} 2"),
            format!("natter_fanout_latency_seconds_bucket{{{node},le=\"0.005\"}} 3"),
            format!("natter_fanout_latency_seconds_bucket{{{node},le=\"5.0\"}} 4"),
            format!("natter_fanout_latency_seconds_bucket{{{node},le=\"+Inf\"}} 5"),
            format!("natter_fanout_latency_seconds_count{{{node}}} 5"),
            format!("natter_send_queue_wait_seconds_count{{{node}}} 1"),
        ] {
            assert!(
                text.contains(&format!("{line}\n")),
                "{line} missing from:\n{text}"
            );
        }
        assert!(text.contains("# HELP natter_messages_stored Messages committed by this node.\n"));
        assert!(text.ends_with("# EOF\n"));
    }
}
