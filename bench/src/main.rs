//! `natter-bench`: drives running Natter nodes through their public APIs (REST to set
//! up, WebSockets to subscribe and send), verifies every delivery by `seq`, and reports
//! throughput, end-to-end latency, connection rate and server cost (SPEC §8).
//!
//! `natter-bench --help` lists the scenarios, `natter-bench SCENARIO --help` their flags:
//! `baseline-server`, `fanout`, `hot-room`, `rooms`, `idle`, `connect`, `many-rooms`,
//! `login-storm`, `soak` and `quiet`, each with `--url URL[,URL…]` and the common flags below.
//!
//! `--baseline` drives `baseline-server` instead: the same client code against a bare
//! WebSocket broadcaster with no auth, storage or NATS, for the ceiling BENCHMARKS.md
//! compares against. `--pids` names the server processes whose CPU and memory are read
//! from `/proc`; `--sources N` spreads connections over 127.0.0.1..N so a run can exceed
//! one source address's port range.

mod baseline;
mod client;
mod login_storm;
mod many_rooms;
mod quiet;
mod report;
mod scenario;
mod soak;
mod webhook;

use std::{process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};

/// Drives running Natter nodes through their public APIs and checks every delivery by
/// `seq`: nothing may be lost, duplicated or reordered.
#[derive(Parser)]
#[command(name = "natter-bench", version)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// A bare WebSocket broadcaster (no auth, storage or NATS): the ceiling the other
    /// scenarios are compared against with `--baseline`.
    BaselineServer {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9100")]
        listen: String,
    },
    /// One room, many subscribers, a few senders at rising rates.
    Fanout {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        traffic: Traffic,
        /// Subscribed receivers.
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
    },
    /// One room, many senders at rising rates.
    HotRoom {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        traffic: Traffic,
        /// Sending connections.
        #[arg(long, default_value_t = 50)]
        senders: usize,
        /// Add a webhook on the room, delivered to a receiver in this process that
        /// answers at once; report its delivery rate (nodes need
        /// WEBHOOK_ALLOW_PRIVATE=true).
        #[arg(long)]
        webhook: bool,
    },
    /// Many small rooms (two connections each) at rising total rates.
    Rooms {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        traffic: Traffic,
        /// Connections, two per room.
        #[arg(long, default_value_t = 5000)]
        connections: usize,
    },
    /// Subscribed connections that send nothing: the server's memory per connection.
    Idle {
        #[command(flatten)]
        common: Common,
        /// Connections to hold open.
        #[arg(long, default_value_t = 20_000)]
        connections: usize,
        /// How long to hold them, in seconds.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
    },
    /// Authenticated, subscribed connections opened as fast as the nodes take them.
    Connect {
        #[command(flatten)]
        common: Common,
        /// Connections to open.
        #[arg(long, default_value_t = 5000)]
        connections: usize,
    },
    /// Sockets each subscribed to many rooms, most of them silent: the server's cost per
    /// connection and per subscription, at rest, and through a reconnect storm.
    ManyRooms {
        #[command(flatten)]
        common: Common,
        /// Sockets, spread over the nodes.
        #[arg(long, default_value_t = 20_000)]
        connections: usize,
        /// Rooms each socket subscribes to (one of them hot).
        #[arg(long, default_value_t = 100)]
        rooms_per_connection: usize,
        /// Silent rooms to draw from, seeded with SQL.
        #[arg(long, default_value_t = 200_000)]
        pool: usize,
        /// Rooms that get messages.
        #[arg(long, default_value_t = 10)]
        hot_rooms: usize,
        /// Sends per second over all hot rooms.
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
        /// Seconds measured at rest.
        #[arg(long, default_value_t = 20.0)]
        rest: f64,
        /// Seconds subscribing every socket may take.
        #[arg(long, default_value_t = 600)]
        subscribe_limit: u64,
        /// The nodes' Postgres, for seeding rooms and counting transactions.
        #[arg(long)]
        database_url: String,
        /// NATS monitoring URL (`http://host:port`), for the nodes' NATS connections.
        #[arg(long)]
        nats_monitor: Option<String>,
        /// SIGKILL the last node (`--pids` in `--url` order) and time the storm.
        #[arg(long)]
        kill: bool,
    },
    /// A real user's login while logins with made-up usernames arrive at once from
    /// other client addresses (named in `X-Forwarded-For`; the node must trust
    /// 127.0.0.1 in `TRUSTED_PROXIES`).
    LoginStorm {
        #[command(flatten)]
        common: Common,
        /// Logins with made-up usernames, sent at once.
        #[arg(long, default_value_t = 300)]
        storm: usize,
        /// Client addresses the storm comes from.
        #[arg(long, default_value_t = 30)]
        storm_addresses: usize,
        /// Correct logins measured, idle and during the storm.
        #[arg(long, default_value_t = 40)]
        probes: usize,
        /// Milliseconds between two measured logins.
        #[arg(long, default_value_t = 50)]
        probe_every_ms: u64,
    },
    /// A few senders, each in a room of its own, at a fixed rate on one node: the node's
    /// and Postgres's CPU, transactions and statements per stored message, and the
    /// `send_ack` latency (Postgres on this machine; `pg_stat_statements` loaded for
    /// statement counts).
    Quiet {
        #[command(flatten)]
        common: Common,
        /// Total sends per second, one step per rate, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "500,2000")]
        rates: Vec<f64>,
        /// Seconds measured per step, after a second of warm-up.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Sending connections, one user each.
        #[arg(long, default_value_t = 10)]
        senders: usize,
        /// Rooms; sender i sends in room i modulo this.
        #[arg(long, default_value_t = 10)]
        rooms: usize,
        /// The node's Postgres, for its CPU and counters.
        #[arg(long)]
        database_url: String,
    },
    /// Steady traffic that survives faults: every client reconnects and resumes with
    /// `since_seq`, and the run checks what every client saw.
    Soak {
        #[command(flatten)]
        common: Common,
        /// WebSockets, one user each.
        #[arg(long, default_value_t = 60)]
        connections: usize,
        /// Rooms every user sends to and follows.
        #[arg(long, default_value_t = 3)]
        rooms: usize,
        /// Sends per second per connection.
        #[arg(long, default_value_t = 1.0)]
        rate: f64,
        /// How long to send, in seconds.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// When the fault is expected, in seconds from the start.
        #[arg(long, default_value_t = 8.0)]
        fault_at: f64,
        /// Connections that read slowly on purpose.
        #[arg(long, default_value_t = 0)]
        slow_readers: usize,
    },
}

/// Flags every scenario that drives nodes takes.
#[derive(Args)]
struct Common {
    /// The nodes' base URLs, comma-separated; connections are spread over them.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:8080")]
    url: Vec<String>,
    /// Drive `baseline-server` instead of Natter.
    #[arg(long)]
    baseline: bool,
    /// Server processes whose CPU and memory are read from /proc, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pids: Vec<u32>,
    /// Spread connections over 127.0.0.1..N, to exceed one source address's ports.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=250))]
    sources: u8,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Write the latency histogram as an SVG to this file.
    #[arg(long)]
    svg: Option<String>,
}

/// Flags of the scenarios that send at rising rates.
#[derive(Args)]
struct Traffic {
    /// Total sends per second, one step per rate, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "200")]
    rates: Vec<f64>,
    /// Seconds per step.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
}

/// What a scenario runs with.
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
    /// `hot-room --webhook`.
    pub webhook: bool,
}

impl Options {
    fn new(common: Common, duration: f64, rates: Vec<f64>, count: usize) -> Result<Self, String> {
        let duration = Duration::try_from_secs_f64(duration)
            .map_err(|_| "--duration: must be a number of seconds".to_string())?;
        Ok(Self {
            urls: common
                .url
                .iter()
                .map(|u| u.trim_end_matches('/').to_string())
                .collect(),
            baseline: common.baseline,
            pids: common.pids,
            sources: common.sources,
            json: common.json,
            svg: common.svg,
            duration,
            rates,
            count,
            senders: 50,
            webhook: false,
        })
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let result = match Cli::parse().scenario {
        Scenario::BaselineServer { listen } => baseline::serve(&listen).await.map(|()| true),
        Scenario::Fanout {
            common,
            traffic,
            subscribers,
        } => match Options::new(common, traffic.duration, traffic.rates, subscribers) {
            Ok(options) => scenario::run("fanout", &options).await,
            Err(err) => Err(err),
        },
        Scenario::HotRoom {
            common,
            traffic,
            senders,
            webhook,
        } => match Options::new(common, traffic.duration, traffic.rates, 0) {
            Ok(options) => {
                let options = Options {
                    senders,
                    webhook,
                    ..options
                };
                scenario::run("hot-room", &options).await
            }
            Err(err) => Err(err),
        },
        Scenario::Rooms {
            common,
            traffic,
            connections,
        } => match Options::new(common, traffic.duration, traffic.rates, connections) {
            Ok(options) => scenario::run("rooms", &options).await,
            Err(err) => Err(err),
        },
        Scenario::Idle {
            common,
            connections,
            duration,
        } => match Options::new(common, duration, Vec::new(), connections) {
            Ok(options) => scenario::run("idle", &options).await,
            Err(err) => Err(err),
        },
        Scenario::Connect {
            common,
            connections,
        } => match Options::new(common, 10.0, Vec::new(), connections) {
            Ok(options) => scenario::run("connect", &options).await,
            Err(err) => Err(err),
        },
        Scenario::ManyRooms {
            common,
            connections,
            rooms_per_connection,
            pool,
            hot_rooms,
            rate,
            rest,
            subscribe_limit,
            database_url,
            nats_monitor,
            kill,
        } => {
            let settings = Duration::try_from_secs_f64(rest)
                .map_err(|_| "--rest: must be a number of seconds".to_string())
                .map(|rest| many_rooms::Settings {
                    rooms_per_connection,
                    pool: pool.max(2),
                    hot_rooms,
                    rate,
                    rest,
                    subscribe_limit: Duration::from_secs(subscribe_limit),
                    database_url,
                    nats_monitor,
                    kill,
                });
            match (Options::new(common, 0.0, Vec::new(), connections), settings) {
                (Ok(options), Ok(settings)) => many_rooms::run(&options, settings).await,
                (Err(err), _) | (_, Err(err)) => Err(err),
            }
        }
        Scenario::LoginStorm {
            common,
            storm,
            storm_addresses,
            probes,
            probe_every_ms,
        } => match Options::new(common, 0.0, Vec::new(), storm) {
            Ok(options) => {
                let settings = login_storm::Settings {
                    storm,
                    storm_addresses,
                    probes,
                    probe_every: Duration::from_millis(probe_every_ms),
                };
                login_storm::run(&options, settings).await
            }
            Err(err) => Err(err),
        },
        Scenario::Quiet {
            common,
            rates,
            duration,
            senders,
            rooms,
            database_url,
        } => match Options::new(common, duration, rates, 0) {
            Ok(options) => {
                let options = Options { senders, ..options };
                let settings = quiet::Settings {
                    rooms,
                    database_url,
                };
                quiet::run(&options, &settings).await
            }
            Err(err) => Err(err),
        },
        Scenario::Soak {
            common,
            connections,
            rooms,
            rate,
            duration,
            fault_at,
            slow_readers,
        } => {
            let settings = Duration::try_from_secs_f64(fault_at)
                .map_err(|_| "--fault-at: must be a number of seconds".to_string())
                .map(|fault_at| soak::Settings {
                    connections: connections.max(1),
                    rooms: rooms.max(1),
                    rate,
                    fault_at,
                    slow_readers,
                });
            match (
                Options::new(common, duration, Vec::new(), connections),
                settings,
            ) {
                (Ok(options), Ok(settings)) => soak::run(&options, settings).await,
                (Err(err), _) | (_, Err(err)) => Err(err),
            }
        }
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

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::Cli;

    #[test]
    fn the_command_line_is_well_formed_and_help_lists_every_scenario() {
        Cli::command().debug_assert();
        let help = Cli::command().render_long_help().to_string();
        for scenario in [
            "baseline-server",
            "fanout",
            "hot-room",
            "rooms",
            "idle",
            "connect",
            "many-rooms",
            "login-storm",
            "soak",
            "quiet",
        ] {
            assert!(help.contains(scenario), "{scenario} missing from:\n{help}");
        }
    }

    #[test]
    fn a_scenario_takes_its_flags_and_names_a_bad_one() {
        let cli = Cli::try_parse_from(["natter-bench", "rooms", "--rates", "1,2", "--json"]);
        assert!(cli.is_ok());
        let Err(err) = Cli::try_parse_from(["natter-bench", "rooms", "--subscribers", "3"]) else {
            panic!("rooms has no --subscribers");
        };
        assert!(err.to_string().contains("--subscribers"), "{err}");
    }
}
