//! `natter-bench`: drives running Natter nodes through their public APIs (REST to set
//! up, WebSockets to subscribe and send), verifies every delivery by `seq`, and reports
//! throughput, end-to-end latency, connection rate and server cost (SPEC §8).
//!
//! ```text
//! natter-bench baseline-server [--listen 127.0.0.1:9100]
//! natter-bench fanout   --url URL[,URL…] [--subscribers 1000] [--rates 200,400] [--duration 10]
//! natter-bench hot-room --url URL[,URL…] [--senders 50] [--rates 2000] [--duration 10]
//! natter-bench rooms    --url URL[,URL…] [--connections 5000] [--rates 1000] [--duration 10]
//! natter-bench idle     --url URL [--connections 20000]
//! natter-bench connect  --url URL[,URL…] [--connections 5000]
//! natter-bench soak     --url URL[,URL…] [--connections 60] [--rooms 3] [--rate 1]
//!                       [--duration 30] [--fault-at 8] [--slow-readers 0]
//!   common: [--baseline] [--pids PID,…] [--sources N] [--json] [--svg FILE]
//! ```
//!
//! `--baseline` drives `baseline-server` instead: the same client code against a bare
//! WebSocket broadcaster with no auth, storage or NATS, for the ceiling BENCHMARKS.md
//! compares against. `--pids` names the server processes whose CPU and memory are read
//! from `/proc`; `--sources N` spreads connections over 127.0.0.1..N so a run can exceed
//! one source address's port range.

mod baseline;
mod client;
mod report;
mod scenario;
mod soak;

use std::{collections::HashMap, process::ExitCode, time::Duration};

/// Parsed command-line options shared by the scenarios.
#[derive(Debug, Clone)]
pub struct Options {
    pub urls: Vec<String>,
    pub baseline: bool,
    pub pids: Vec<u32>,
    pub sources: u8,
    pub json: bool,
    pub svg: Option<String>,
    pub duration: Duration,
    pub rates: Vec<f64>,
    pub count: usize,
    pub senders: usize,
}

fn parse(args: &[String]) -> Result<(String, Options, HashMap<String, String>), String> {
    let scenario = args.first().cloned().ok_or("missing scenario")?;
    let mut flags = HashMap::new();
    let mut rest = args[1..].iter();
    while let Some(flag) = rest.next() {
        let name = flag
            .strip_prefix("--")
            .ok_or_else(|| format!("unexpected argument {flag}"))?;
        let value = if ["baseline", "json"].contains(&name) {
            "true".to_string()
        } else {
            rest.next()
                .cloned()
                .ok_or_else(|| format!("--{name} needs a value"))?
        };
        flags.insert(name.to_string(), value);
    }
    let get = |name: &str| flags.get(name).cloned();
    let number = |name: &str, default: f64| -> Result<f64, String> {
        get(name).map_or(Ok(default), |v| {
            v.parse().map_err(|_| format!("--{name}: not a number"))
        })
    };
    let default_count = match scenario.as_str() {
        "fanout" => 1000.0,
        "idle" => 20_000.0,
        "rooms" | "connect" => 5000.0,
        _ => 100.0,
    };
    let options = Options {
        urls: get("url")
            .unwrap_or_else(|| "http://127.0.0.1:8080".into())
            .split(',')
            .map(|u| u.trim_end_matches('/').to_string())
            .collect(),
        baseline: get("baseline").is_some(),
        pids: get("pids")
            .map(|p| p.split(',').filter_map(|p| p.parse().ok()).collect())
            .unwrap_or_default(),
        sources: number("sources", 1.0)?.clamp(1.0, 250.0) as u8,
        json: get("json").is_some(),
        svg: get("svg"),
        duration: Duration::from_secs_f64(number("duration", 10.0)?),
        rates: get("rates")
            .unwrap_or_else(|| "200".into())
            .split(',')
            .map(|r| r.parse().map_err(|_| "--rates: not numbers".to_string()))
            .collect::<Result<_, _>>()?,
        count: number(
            match scenario.as_str() {
                "fanout" => "subscribers",
                _ => "connections",
            },
            default_count,
        )? as usize,
        senders: number("senders", 50.0)? as usize,
    };
    Ok((scenario, options, flags))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (scenario, options, flags) = match parse(&args) {
        Ok(parsed) => parsed,
        Err(err) => {
            eprintln!(
                "natter-bench: {err}\nsee the usage at the top of src/bin/natter-bench/main.rs"
            );
            return ExitCode::from(2);
        }
    };
    let result = match scenario.as_str() {
        "baseline-server" => {
            let listen = flags
                .get("listen")
                .cloned()
                .unwrap_or_else(|| "127.0.0.1:9100".into());
            baseline::serve(&listen).await.map(|()| true)
        }
        "fanout" | "hot-room" | "rooms" | "idle" | "connect" => {
            scenario::run(&scenario, &options).await
        }
        "soak" => soak::run(&options, &flags).await,
        other => Err(format!("unknown scenario {other}")),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("natter-bench: {err}");
            ExitCode::FAILURE
        }
    }
}
