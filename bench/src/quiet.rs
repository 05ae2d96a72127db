//! `quiet`: what one stored message costs the node and Postgres when rooms are quiet
//! (issue #37): a few senders, each in a room of its own, at a fixed total rate, so
//! that nearly every group commit stores one message.
//!
//! Senders only send (nobody subscribes): the figures are the send path's. After a
//! second of warm-up, the run reads, at the start and at the end of a window that ends
//! when sending stops:
//!
//! - the CPU time of the node processes (`--pids`) and of Postgres (the postmaster, its
//!   children, and the children it reaped meanwhile), from `/proc`;
//! - the node's group commits (`natter_send_transaction_seconds_count` on the first
//!   node's `/metrics`) and Postgres's committed transactions (`pg_stat_database`);
//! - with `pg_stat_statements` loaded (`shared_preload_libraries`), the statements
//!   Postgres ran for the nodes' database, reset at the window's start: those clients
//!   sent, and (with `pg_stat_statements.track = all`) those run inside functions;
//!
//! and reports them per message acknowledged in the window, with the `send_ack`
//! latency (from the send to its acknowledgement) of every send of the run.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::{StreamExt, stream};
use serde::Serialize;
use tokio::sync::watch;

use crate::{
    Options,
    client::{self, Api, Role},
    report::{ProcSample, percentile_ms, print_figures},
    scenario::uuid_fragment,
};

/// What `quiet` takes beyond the common flags.
pub struct Settings {
    /// Rooms; sender `i` sends in room `i % rooms`.
    pub rooms: usize,
    /// The nodes' Postgres: its processes' CPU and its counters.
    pub database_url: String,
}

/// Warm-up before the measured window: connections' first statements are prepared.
const WARM_UP: Duration = Duration::from_secs(1);
/// How long acknowledgements may keep coming once sending stopped.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);
/// Statements listed in the report, most called first.
const TOP_STATEMENTS: usize = 8;

#[derive(Serialize)]
struct Figures {
    scenario: &'static str,
    senders: usize,
    rooms: usize,
    offered_rate: f64,
    /// Sends acknowledged in the measured window, and per second.
    stored: u64,
    stored_per_second: f64,
    send_errors: u64,
    node_cpu_us_per_message: Option<f64>,
    pg_cpu_us_per_message: Option<f64>,
    node_and_pg_cpu_us_per_message: Option<f64>,
    /// Postgres CPU per group commit of the node.
    pg_cpu_us_per_commit: Option<f64>,
    /// Stored messages per group commit (the node's own count of its transactions).
    messages_per_commit: Option<f64>,
    /// Every transaction Postgres committed for the database, per message.
    pg_transactions_per_message: Option<f64>,
    /// Every statement clients sent Postgres for the database, per message
    /// (`pg_stat_statements`, top level).
    statements_per_message: Option<f64>,
    /// Statements run inside functions those statements called, per message (counted
    /// with `pg_stat_statements.track = all`).
    nested_statements_per_message: Option<f64>,
    /// The most called statements: calls per message, whether a client sent it, and the
    /// statement's start.
    top_statements: Vec<(f64, bool, String)>,
    ack_ms_p50: f64,
    ack_ms_p99: f64,
    ack_ms_p999: f64,
    ack_ms_max: f64,
}

pub async fn run(options: &Options, settings: &Settings) -> Result<bool, String> {
    if options.urls.len() != 1 {
        return Err("quiet measures one node: give one --url".into());
    }
    let rooms_count = settings.rooms.max(1);
    let pg = Postgres::connect(&settings.database_url).await?;
    let api = Api::new(&options.urls);
    let run_id = uuid_fragment();
    let senders = options.senders.max(1);
    let tokens: Vec<String> = stream::iter(0..senders)
        .map(|i| {
            let (api, run_id) = (&api, &run_id);
            async move { api.register(i, run_id).await }
        })
        .buffered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let mut rooms = Vec::with_capacity(rooms_count);
    for i in 0..rooms_count {
        rooms.push(api.create_room(i, &tokens[0]).await?);
    }
    for (i, token) in tokens.iter().enumerate().skip(1) {
        api.join(i, token, &rooms[i % rooms_count]).await?;
    }
    eprintln!("[bench] quiet: {senders} senders in {rooms_count} rooms");
    let mut clean = true;
    for &rate in &options.rates {
        let figures = run_once(options, &pg, &tokens, &rooms, rate).await?;
        clean &= figures.send_errors == 0 && figures.stored > 0;
        print_figures(&figures, options.json)?;
    }
    Ok(clean)
}

async fn run_once(
    options: &Options,
    pg: &Postgres,
    tokens: &[String],
    rooms: &[String],
    rate: f64,
) -> Result<Figures, String> {
    let senders = tokens.len();
    let base = &options.urls[0];
    let mut connections = Vec::with_capacity(senders);
    for (i, token) in tokens.iter().enumerate() {
        let path = format!("/v1/ws?token={token}");
        let ws = client::connect(base, &path, 1).await?;
        let role = Role {
            room: rooms[i % rooms.len()].clone(),
            rate: rate / senders as f64,
            phase: i as f64 / senders as f64,
            subscribe: false,
            base: base.clone(),
            path,
            source: 1,
        };
        connections.push((ws, role));
    }
    let epoch = Instant::now();
    let stop_sending = Instant::now() + WARM_UP + options.duration;
    let (stop_tx, stop_rx) = watch::channel(false);
    let acked = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = connections
        .into_iter()
        .map(|(ws, role)| {
            tokio::spawn(client::drive(
                ws,
                role,
                epoch,
                stop_sending,
                stop_rx.clone(),
                acked.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(WARM_UP).await;
    pg.reset_statements().await;
    let start = Sample::read(options, pg, &acked).await?;
    tokio::time::sleep(stop_sending.saturating_duration_since(Instant::now())).await;
    let end = Sample::read(options, pg, &acked).await?;
    let statements = pg.statements().await;
    let window = end.at.duration_since(start.at).as_secs_f64();
    let stored = end.acked.saturating_sub(start.acked);
    // The sends still in flight are answered before the sockets close.
    let drain_started = Instant::now();
    let mut last = acked.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = acked.load(Ordering::Relaxed);
        if now == last || drain_started.elapsed() > DRAIN_LIMIT {
            break;
        }
        last = now;
    }
    let _ = stop_tx.send(true);
    let mut latencies = Vec::new();
    let mut send_errors = 0;
    for task in tasks {
        let tally = task.await.map_err(|e| e.to_string())?;
        latencies.extend_from_slice(&tally.ack_latencies_us);
        send_errors += tally.errors;
    }
    latencies.sort_unstable();
    let percentile = |p: f64| percentile_ms(&latencies, p);
    let per_message = |delta: Option<f64>| delta.filter(|_| stored > 0).map(|d| d / stored as f64);
    // Clock ticks are 1/100 s: 10,000 µs each.
    let node_us = (!options.pids.is_empty())
        .then(|| end.node.cpu_ticks.saturating_sub(start.node.cpu_ticks) as f64 * 10_000.0);
    let pg_us = start
        .pg_ticks
        .zip(end.pg_ticks)
        .map(|(from, to)| to.saturating_sub(from) as f64 * 10_000.0);
    let commits = start
        .commits
        .zip(end.commits)
        .map(|(from, to)| to - from)
        .filter(|c| *c > 0.0);
    Ok(Figures {
        scenario: "quiet",
        senders,
        rooms: rooms.len(),
        offered_rate: rate,
        stored,
        stored_per_second: stored as f64 / window,
        send_errors,
        node_cpu_us_per_message: per_message(node_us),
        pg_cpu_us_per_message: per_message(pg_us),
        node_and_pg_cpu_us_per_message: per_message(node_us.zip(pg_us).map(|(n, p)| n + p)),
        pg_cpu_us_per_commit: pg_us.zip(commits).map(|(us, c)| us / c),
        messages_per_commit: commits.map(|c| stored as f64 / c),
        pg_transactions_per_message: per_message(
            start
                .pg_transactions
                .zip(end.pg_transactions)
                .map(|(from, to)| (to - from) as f64),
        ),
        statements_per_message: per_message(statements.as_ref().map(|all| {
            all.iter()
                .filter(|(_, top, _)| *top)
                .map(|(calls, _, _)| *calls as f64)
                .sum()
        })),
        nested_statements_per_message: per_message(statements.as_ref().map(|all| {
            all.iter()
                .filter(|(_, top, _)| !*top)
                .map(|(calls, _, _)| *calls as f64)
                .sum()
        })),
        top_statements: statements
            .unwrap_or_default()
            .into_iter()
            .take(TOP_STATEMENTS)
            .filter(|_| stored > 0)
            .map(|(calls, top, query)| (calls as f64 / stored as f64, top, query))
            .collect(),
        ack_ms_p50: percentile(0.5),
        ack_ms_p99: percentile(0.99),
        ack_ms_p999: percentile(0.999),
        ack_ms_max: latencies.last().map_or(0.0, |v| f64::from(*v) / 1000.0),
    })
}

/// The counters at one end of the measured window.
struct Sample {
    at: Instant,
    acked: u64,
    node: ProcSample,
    pg_ticks: Option<u64>,
    /// The first node's group commits so far.
    commits: Option<f64>,
    pg_transactions: Option<i64>,
}

impl Sample {
    async fn read(options: &Options, pg: &Postgres, acked: &AtomicU64) -> Result<Self, String> {
        Ok(Sample {
            commits: group_commits(&options.urls[0]).await,
            pg_transactions: Some(pg.transactions().await?),
            at: Instant::now(),
            acked: acked.load(Ordering::Relaxed),
            node: ProcSample::read(&options.pids),
            pg_ticks: pg.cpu_ticks(),
        })
    }
}

/// `natter_send_transaction_seconds_count` on the node's `/metrics`, summed over labels.
async fn group_commits(base: &str) -> Option<f64> {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let counts: Vec<f64> = text
        .lines()
        .filter(|line| line.starts_with("natter_send_transaction_seconds_count"))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse().ok())
        .collect();
    (!counts.is_empty()).then(|| counts.iter().sum())
}

/// The nodes' Postgres, as the bench watches it.
struct Postgres {
    client: tokio_postgres::Client,
    /// The postmaster, when Postgres runs on this machine.
    postmaster: Option<u32>,
    /// Whether `pg_stat_statements` answers.
    statements: bool,
}

impl Postgres {
    async fn connect(url: &str) -> Result<Self, String> {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .map_err(|e| format!("--database-url: {e}"))?;
        tokio::spawn(connection);
        let backend: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        let postmaster = u32::try_from(backend)
            .ok()
            .and_then(|pid| stat_fields(pid)?.get(1)?.parse().ok());
        // Loaded only if the server preloads it; without it the figure is left out.
        let statements = client
            .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .await
            .is_ok()
            && client
                .query_one("SELECT count(*) FROM pg_stat_statements", &[])
                .await
                .is_ok();
        if !statements {
            eprintln!("[bench] pg_stat_statements is not loaded: no statement counts");
        }
        Ok(Self {
            client,
            postmaster,
            statements,
        })
    }

    /// User and system CPU of the postmaster, its children and its reaped children, in
    /// clock ticks.
    fn cpu_ticks(&self) -> Option<u64> {
        let postmaster = self.postmaster?;
        let own = stat_fields(postmaster)?;
        let ticks = |fields: &[String], i: usize| -> u64 {
            fields.get(i).and_then(|v| v.parse().ok()).unwrap_or(0)
        };
        // utime, stime, cutime, cstime: fields 14-17 of /proc/PID/stat.
        let mut total = (11..=14).map(|i| ticks(&own, i)).sum::<u64>();
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(fields) = stat_fields(pid)
                && fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(postmaster)
            {
                total += ticks(&fields, 11) + ticks(&fields, 12);
            }
        }
        Some(total)
    }

    async fn transactions(&self) -> Result<i64, String> {
        let row = self
            .client
            .query_one(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
                &[],
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok(row.get(0))
    }

    /// Starts counting statements afresh.
    async fn reset_statements(&self) {
        if self.statements {
            let _ = self
                .client
                .batch_execute("SELECT pg_stat_statements_reset()")
                .await;
        }
    }

    /// Every statement run for this database since [`Postgres::reset_statements`], the
    /// bench's own left out, most called first: calls, whether a client sent it (rather
    /// than a function it called), and the statement's start. `None` without
    /// `pg_stat_statements`.
    async fn statements(&self) -> Option<Vec<(i64, bool, String)>> {
        if !self.statements {
            return None;
        }
        let rows = self
            .client
            .query(
                "SELECT calls, toplevel, left(regexp_replace(query, '\\s+', ' ', 'g'), 90)
                   FROM pg_stat_statements
                  WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                    AND query NOT LIKE '%pg_stat%'
                  ORDER BY calls DESC",
                &[],
            )
            .await
            .ok()?;
        Some(
            rows.iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect(),
        )
    }
}

/// The fields of `/proc/PID/stat` after the command name (field 3, `state`, first).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}
