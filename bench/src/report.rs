//! Turning tallies into the figures of SPEC §8, as a table or one JSON object, plus the
//! latency histogram as SVG.

use std::{collections::HashMap, fmt::Write};

use serde::Serialize;

use crate::{Options, client::Tally};

/// CPU time and resident memory of the server processes at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    /// User plus system time, in clock ticks (1/100 s on Linux).
    pub cpu_ticks: u64,
    pub rss_kib: u64,
}

impl ProcSample {
    pub fn read(pids: &[u32]) -> Self {
        let mut sample = Self::default();
        for pid in pids {
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                // Fields after the command name, which is in parentheses.
                let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
                let fields: Vec<&str> = rest.split_whitespace().collect();
                let ticks = |i: usize| {
                    fields
                        .get(i)
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0)
                };
                sample.cpu_ticks += ticks(11) + ticks(12);
            }
            if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                sample.rss_kib += status
                    .lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
        sample
    }
}

pub struct Inputs<'a> {
    pub scenario: &'a str,
    pub rate: f64,
    pub options: &'a Options,
    pub tallies: &'a [Tally],
    pub connects_per_second: f64,
    pub send_seconds: f64,
    pub before_connect: ProcSample,
    /// The servers after the first quarter of the connections, and how many that was.
    pub first_quarter: Option<(usize, ProcSample)>,
    pub after_connect: ProcSample,
    pub after_traffic: ProcSample,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: String,
    pub target: String,
    pub connections: usize,
    pub offered_rate: f64,
    pub sent: u64,
    pub send_errors: u64,
    pub sends_per_second: f64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub delivered_per_second: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_p999: f64,
    pub latency_ms_max: f64,
    pub connects_per_second: f64,
    /// Sockets the server closed (4008: reader too slow) that resumed with `since_seq`.
    pub resumes: u64,
    pub server_cpu_us_per_delivered: Option<f64>,
    pub server_rss_kib_per_connection: Option<f64>,
    #[serde(skip)]
    latencies_us: Vec<u32>,
}

pub fn summarise(inputs: Inputs<'_>) -> Report {
    let mut sent_per_room: HashMap<&str, u64> = HashMap::new();
    for tally in inputs.tallies {
        *sent_per_room.entry(tally.room.as_str()).or_default() += tally.acked;
    }
    let (mut lost, mut duplicated, mut reordered, mut delivered) = (0, 0, 0, 0);
    let mut latencies = Vec::new();
    for tally in inputs.tallies.iter().filter(|t| t.subscribed) {
        let sent = sent_per_room.get(tally.room.as_str()).copied().unwrap_or(0);
        let (room_lost, room_duplicated) = tally.seqs.lost_and_duplicated(sent as i64);
        lost += room_lost;
        duplicated += room_duplicated;
        reordered += tally.seqs.reordered;
        delivered += tally.delivered;
        latencies.extend_from_slice(&tally.latencies_us);
    }
    latencies.sort_unstable();
    let percentile = |p: f64| percentile_ms(&latencies, p);
    let sent: u64 = sent_per_room.values().sum();
    let seconds = inputs.send_seconds.max(0.001);
    let connections = inputs.tallies.len();
    let cpu_ticks = inputs
        .after_traffic
        .cpu_ticks
        .saturating_sub(inputs.after_connect.cpu_ticks);
    let has_pids = !inputs.options.pids.is_empty();
    Report {
        scenario: inputs.scenario.to_string(),
        target: if inputs.options.baseline {
            "baseline-server"
        } else {
            "natter"
        }
        .into(),
        connections,
        offered_rate: inputs.rate,
        sent,
        send_errors: inputs.tallies.iter().map(|t| t.errors).sum(),
        sends_per_second: sent as f64 / seconds,
        delivered,
        lost,
        duplicated,
        reordered,
        delivered_per_second: delivered as f64 / seconds,
        latency_ms_p50: percentile(0.5),
        latency_ms_p99: percentile(0.99),
        latency_ms_p999: percentile(0.999),
        latency_ms_max: latencies.last().map_or(0.0, |v| f64::from(*v) / 1000.0),
        connects_per_second: inputs.connects_per_second,
        resumes: inputs.tallies.iter().map(|t| t.resumes).sum(),
        server_cpu_us_per_delivered: (has_pids && delivered > 0)
            .then(|| cpu_ticks as f64 * 10_000.0 / delivered as f64),
        // The growth from the first quarter of the connections to all of them: memory
        // that set-up (registrations, the first connects) freed is reused by the first
        // connections, and counting from zero would credit it to them.
        server_rss_kib_per_connection: (has_pids && connections > 0).then(|| {
            let (from_count, from) = match inputs.first_quarter {
                Some((count, sample)) if count < connections => (count, sample),
                _ => (0, inputs.before_connect),
            };
            inputs.after_connect.rss_kib.saturating_sub(from.rss_kib) as f64
                / (connections - from_count) as f64
        }),
        latencies_us: latencies,
    }
}

pub fn print(report: &Report, options: &Options) -> Result<(), String> {
    if let Some(path) = &options.svg {
        std::fs::write(path, histogram_svg(&report.latencies_us, &report.scenario))
            .map_err(|e| format!("--svg {path}: {e}"))?;
    }
    if options.json {
        println!(
            "{}",
            serde_json::to_string(report).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    let optional = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
    println!(
        "scenario            {} against {}",
        report.scenario, report.target
    );
    println!("connections         {}", report.connections);
    println!("offered rate        {:.0}/s", report.offered_rate);
    println!(
        "sent (acked)        {} ({:.0}/s), {} refused",
        report.sent, report.sends_per_second, report.send_errors
    );
    println!(
        "delivered           {} ({:.0}/s)",
        report.delivered, report.delivered_per_second
    );
    println!(
        "lost / dup / reord  {} / {} / {}",
        report.lost, report.duplicated, report.reordered
    );
    println!(
        "latency ms          p50 {:.2}  p99 {:.2}  p999 {:.2}  max {:.2}",
        report.latency_ms_p50, report.latency_ms_p99, report.latency_ms_p999, report.latency_ms_max
    );
    println!("connects/s          {:.0}", report.connects_per_second);
    println!("resumed sockets     {}", report.resumes);
    println!(
        "server cpu µs/msg   {}",
        optional(report.server_cpu_us_per_delivered)
    );
    println!(
        "server rss KiB/conn {}",
        optional(report.server_rss_kib_per_connection)
    );
    Ok(())
}

/// Latency histogram over power-of-two microsecond buckets.
fn histogram_svg(latencies_us: &[u32], title: &str) -> String {
    let mut buckets = [0u64; 24];
    for &latency in latencies_us {
        let bucket = (32 - latency.max(1).leading_zeros()) as usize;
        buckets[bucket.min(23)] += 1;
    }
    let max = buckets.iter().copied().max().unwrap_or(1).max(1) as f64;
    let (width, height, bar) = (760.0, 300.0, 30.0);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{}" font-family="sans-serif" font-size="10">"#,
        height + 60.0
    );
    let _ = write!(
        svg,
        r#"<text x="10" y="15" font-size="13">{title}: end-to-end latency ({} messages)</text>"#,
        latencies_us.len()
    );
    for (i, count) in buckets.iter().enumerate() {
        let h = *count as f64 / max * height;
        let x = 10.0 + i as f64 * (bar + 1.5);
        let _ = write!(
            svg,
            r##"<rect x="{x}" y="{}" width="{bar}" height="{h}" fill="#4a7bd0"><title>{count}</title></rect>"##,
            25.0 + height - h
        );
        let upper_us = 1u64 << i;
        let label = if upper_us >= 1000 {
            format!("{}ms", upper_us / 1000)
        } else {
            format!("{upper_us}µs")
        };
        let _ = write!(
            svg,
            r#"<text x="{x}" y="{}">&lt;{label}</text>"#,
            height + 40.0
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The `p` quantile (0 to 1) of `sorted_us`, latencies in microseconds sorted ascending,
/// in milliseconds; 0 when there are none.
pub fn percentile_ms(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let index = ((sorted_us.len() as f64 * p).ceil() as usize).clamp(1, sorted_us.len()) - 1;
    f64::from(sorted_us[index]) / 1000.0
}

/// Prints a scenario's figures on stdout: one JSON line with `--json`, else indented.
pub fn print_figures(figures: &impl Serialize, json: bool) -> Result<(), String> {
    let text = if json {
        serde_json::to_string(figures)
    } else {
        serde_json::to_string_pretty(figures)
    };
    println!("{}", text.map_err(|e| e.to_string())?);
    Ok(())
}
