//! Counters for `/metrics`, rendered as Prometheus text. Plain atomics: recording costs
//! a relaxed increment, and nothing is allocated per request.

use std::{
    fmt::Write,
    sync::atomic::{AtomicI64, AtomicU64, Ordering},
};

use poem::http::StatusCode;

#[derive(Default)]
pub struct Metrics {
    /// Responses by status class: 1xx..5xx at index 0..4.
    responses: [AtomicU64; 5],
    messages_stored: AtomicU64,
    sends_rate_limited: AtomicU64,
    sockets_open: AtomicI64,
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
        self.sockets_open.fetch_add(1, Ordering::Relaxed);
    }

    pub fn socket_closed(&self) {
        self.sockets_open.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn sockets_open(&self) -> i64 {
        self.sockets_open.load(Ordering::Relaxed)
    }

    pub fn render(&self, node_id: &str, pool: deadpool_postgres::Status, rooms: usize) -> String {
        let mut out = String::with_capacity(1024);
        let node = format!("node=\"{}\"", node_id.replace(['"', '\\', '\n'], "_"));
        out.push_str("# TYPE natter_http_responses_total counter\n");
        for (i, count) in self.responses.iter().enumerate() {
            let _ = writeln!(
                out,
                "natter_http_responses_total{{{node},class=\"{}xx\"}} {}",
                i + 1,
                count.load(Ordering::Relaxed)
            );
        }
        let counters = [
            ("natter_messages_stored_total", &self.messages_stored),
            ("natter_sends_rate_limited_total", &self.sends_rate_limited),
        ];
        for (name, value) in counters {
            let _ = writeln!(
                out,
                "# TYPE {name} counter\n{name}{{{node}}} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let gauges = [
            ("natter_db_pool_size", pool.size as i64),
            ("natter_db_pool_available", pool.available as i64),
            ("natter_db_pool_waiting", pool.waiting as i64),
            (
                "natter_websockets_open",
                self.sockets_open.load(Ordering::Relaxed),
            ),
            ("natter_rooms_relayed", rooms as i64),
        ];
        for (name, value) in gauges {
            let _ = writeln!(out, "# TYPE {name} gauge\n{name}{{{node}}} {value}");
        }
        out
    }
}
