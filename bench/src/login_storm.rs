//! `login-storm`: what a storm of logins with made-up usernames costs a real user's
//! login (SPEC §18).
//!
//! Every login hashes a password on one of the node's two hasher threads, an unknown
//! username included (so the answer does not tell names apart), so a storm of them
//! queues every real login behind it. The storm's logins come from `--storm-addresses`
//! client addresses, named in `X-Forwarded-For` (the nodes must trust 127.0.0.1 in
//! `TRUSTED_PROXIES`; a node that ignores the header sees them all as one). While it
//! runs, a real user logs in with the right password every `--probe-every-ms`, each
//! time another user from an address of their own (so no username's throttle counts
//! the measured logins still in flight as failures), and the report gives those
//! logins' latency next to the same logins on an idle node, and how the storm was
//! answered.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use serde_json::json;

use crate::{Options, client::Api};

pub struct Settings {
    /// Logins with made-up usernames, all sent at once.
    pub storm: usize,
    /// Client addresses the storm is spread over.
    pub storm_addresses: usize,
    /// Correct logins measured during the storm (and as many on the idle node).
    pub probes: usize,
    pub probe_every: Duration,
}

/// One login: its status (0 when the node did not answer) and how long it took.
async fn login(
    http: &reqwest::Client,
    url: &str,
    client: &str,
    username: &str,
    password: &str,
) -> (u16, Duration) {
    let started = Instant::now();
    let request = http
        .post(format!("{url}/v1/auth/login"))
        .header("x-forwarded-for", client)
        .json(&json!({"username": username, "password": password}));
    let status = match request.send().await {
        Ok(response) => response.status().as_u16(),
        Err(_) => 0,
    };
    (status, started.elapsed())
}

/// The probe's `i`th address: never one of the storm's.
fn probe_address(i: usize) -> String {
    format!("198.51.{}.{}", i / 250, i % 250 + 1)
}

/// Correct logins every `every`, each by the next of `usernames` from an address of its
/// own: the latencies of those that succeeded, and the others' statuses (0: no answer).
async fn probe(
    http: &reqwest::Client,
    url: &str,
    usernames: &[String],
    first: usize,
    settings: &Settings,
) -> (Vec<Duration>, BTreeMap<u16, usize>) {
    let mut tasks = Vec::new();
    for i in 0..settings.probes {
        let username = usernames[i % usernames.len()].clone();
        let (http, url) = (http.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            login(
                &http,
                &url,
                &probe_address(first + i),
                &username,
                "bench-password",
            )
            .await
        }));
        tokio::time::sleep(settings.probe_every).await;
    }
    let (mut latencies, mut failed) = (Vec::new(), BTreeMap::new());
    for task in tasks {
        let (status, took) = task.await.unwrap_or((0, Duration::ZERO));
        match status {
            200 => latencies.push(took),
            _ => *failed.entry(status).or_default() += 1,
        }
    }
    latencies.sort();
    (latencies, failed)
}

fn ms(sorted: &[Duration], p: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        n => sorted[((n as f64 * p).ceil() as usize).clamp(1, n) - 1].as_secs_f64() * 1000.0,
    }
}

pub async fn run(options: &Options, settings: Settings) -> Result<bool, String> {
    let url = options.urls[0].clone();
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    // `Api::register` names its users `b{run}-{i}`, with the password "bench-password".
    let api = Api::new(&options.urls);
    let mut usernames = Vec::new();
    for i in 0..settings.probes.max(1) {
        api.register(i, &run).await?;
        usernames.push(format!("b{run}-{i}"));
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(settings.storm + settings.probes)
        .build()
        .map_err(|e| e.to_string())?;

    let (idle, idle_failed) = probe(&http, &url, &usernames, 0, &settings).await;

    // Each run's storm from addresses of its own, whose budgets no earlier run spent.
    let network = uuid::Uuid::new_v4().as_bytes()[0];
    let storm_started = Instant::now();
    let storm: Vec<_> = (0..settings.storm)
        .map(|i| {
            let (http, url) = (http.clone(), url.clone());
            let address = i % settings.storm_addresses.max(1);
            let client = format!("10.{network}.{}.{}", address / 250, address % 250 + 1);
            let name = format!("storm{run}-{i}");
            tokio::spawn(async move { login(&http, &url, &client, &name, "guess").await })
        })
        .collect();
    let (during, during_failed) = probe(&http, &url, &usernames, settings.probes, &settings).await;
    let mut answers = BTreeMap::<u16, usize>::new();
    for task in storm {
        let (status, _) = task.await.unwrap_or((0, Duration::ZERO));
        *answers.entry(status).or_default() += 1;
    }
    let storm_secs = storm_started.elapsed().as_secs_f64();

    let text = |counts: &BTreeMap<u16, usize>| {
        let counts: Vec<String> = counts.iter().map(|(s, n)| format!("{s}: {n}")).collect();
        counts.join(", ")
    };
    let by_status = |counts: &BTreeMap<u16, usize>| {
        counts
            .iter()
            .map(|(s, n)| (s.to_string(), *n))
            .collect::<BTreeMap<_, _>>()
    };
    if options.json {
        let report = json!({
            "scenario": "login-storm",
            "storm": settings.storm,
            "storm_addresses": settings.storm_addresses,
            "storm_answers": by_status(&answers),
            "storm_seconds": storm_secs,
            "probes": settings.probes,
            "idle_login_ms_p50": ms(&idle, 0.5),
            "idle_login_ms_p99": ms(&idle, 0.99),
            "idle_failed": by_status(&idle_failed),
            "storm_login_ms_p50": ms(&during, 0.5),
            "storm_login_ms_p99": ms(&during, 0.99),
            "storm_login_ms_max": ms(&during, 1.0),
            "storm_failed": by_status(&during_failed),
        });
        println!("{report}");
    } else {
        println!(
            "login-storm: {} logins with made-up names from {} addresses, answered {} in {storm_secs:.1} s",
            settings.storm,
            settings.storm_addresses,
            text(&answers)
        );
        println!(
            "correct login, idle      p50 {:.1} ms  p99 {:.1} ms  (failed: {})",
            ms(&idle, 0.5),
            ms(&idle, 0.99),
            text(&idle_failed)
        );
        println!(
            "correct login, storm     p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms  (failed: {})",
            ms(&during, 0.5),
            ms(&during, 0.99),
            ms(&during, 1.0),
            text(&during_failed)
        );
    }
    // A failed login on the idle node is a broken set-up, not a measurement.
    Ok(idle_failed.is_empty())
}
