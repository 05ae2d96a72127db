//! The scenarios: how many connections, in which rooms, sending how fast.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::{StreamExt, stream};
use tokio::sync::watch;

use crate::{
    Options,
    client::{self, Api, Role},
    report::{self, ProcSample, Report},
    webhook,
};

/// One connection to open: which node, which room, what it does.
struct Plan {
    node: usize,
    user: usize,
    room: usize,
    rate: f64,
    subscribe: bool,
}

/// Successive multiples of this, modulo 1, spread evenly over [0, 1) for any run of
/// them (the golden ratio's fractional part).
const GOLDEN_RATIO_FRACTION: f64 = 0.618_033_988_749_895;

/// Connections opened at once while setting up.
const CONNECT_CONCURRENCY: usize = 256;

pub async fn run(scenario: &str, options: &Options) -> Result<bool, String> {
    let mut all_clean = true;
    let rates = if matches!(scenario, "idle" | "connect") {
        vec![0.0]
    } else {
        options.rates.clone()
    };
    for rate in rates {
        let report = run_once(scenario, options, rate).await?;
        report::print(&report, options)?;
        all_clean &= report.lost == 0 && report.duplicated == 0 && report.reordered == 0;
    }
    Ok(all_clean)
}

async fn run_once(scenario: &str, options: &Options, rate: f64) -> Result<Report, String> {
    let nodes = options.urls.len();
    // Senders on the first node, receivers on the others when there are several, so
    // latency is measured across nodes.
    let receiver_node = |i: usize| if nodes > 1 { 1 + i % (nodes - 1) } else { 0 };
    let (plans, room_count): (Vec<Plan>, usize) = match scenario {
        "fanout" | "hot-room" => {
            let receivers = if scenario == "fanout" {
                options.count
            } else {
                10
            };
            let senders = if scenario == "fanout" {
                4
            } else {
                options.senders
            };
            let mut plans: Vec<Plan> = (0..receivers)
                .map(|i| Plan {
                    node: receiver_node(i),
                    user: i,
                    room: 0,
                    rate: 0.0,
                    subscribe: true,
                })
                .collect();
            plans.extend((0..senders).map(|i| Plan {
                node: 0,
                user: receivers + i,
                room: 0,
                rate: rate / senders as f64,
                subscribe: false,
            }));
            (plans, 1)
        }
        "rooms" => {
            let rooms = (options.count / 2).max(1);
            let plans = (0..rooms * 2)
                .map(|i| Plan {
                    node: i % nodes,
                    user: i,
                    room: i / 2,
                    rate: rate / (rooms * 2) as f64,
                    subscribe: true,
                })
                .collect();
            (plans, rooms)
        }
        "idle" | "connect" => {
            let rooms = (options.count / 100).max(1);
            let plans = (0..options.count)
                .map(|i| Plan {
                    node: i % nodes,
                    user: i,
                    room: i % rooms,
                    rate: 0.0,
                    subscribe: true,
                })
                .collect();
            (plans, rooms)
        }
        other => return Err(format!("unknown scenario {other}")),
    };

    let (tokens, rooms) = set_up(options, &plans, room_count).await?;
    let webhook = match options.webhook && !options.baseline {
        true => {
            let (url, received) = webhook::start().await?;
            Api::new(&options.urls)
                .create_webhook(&tokens[0], &rooms[0], &url)
                .await?;
            eprintln!("[bench] webhook on the room, delivered to {url}");
            Some(received)
        }
        false => None,
    };
    let before_connect = ProcSample::read(&options.pids);
    let epoch = Instant::now();
    let connect_started = Instant::now();
    let quarter = plans.len() / 4;
    let opened_count = AtomicU64::new(0);
    let first_quarter = std::sync::Mutex::new(None);
    let opened: Vec<Result<(client::Ws, Role), String>> = stream::iter(plans.iter().enumerate())
        .map(|(i, plan)| {
            let base = options.urls[plan.node].clone();
            let token = tokens[plan.user % tokens.len()].clone();
            let room = rooms[plan.room].clone();
            let source = 1 + (i % options.sources as usize) as u8;
            let (rate, subscribe) = (plan.rate, plan.subscribe);
            let (opened_count, first_quarter) = (&opened_count, &first_quarter);
            async move {
                let path = if options.baseline {
                    "/ws".to_string()
                } else {
                    format!("/v1/ws?token={token}")
                };
                let mut ws = client::connect(&base, &path, source).await?;
                if subscribe {
                    client::subscribe(&mut ws, &room, None).await?;
                }
                if opened_count.fetch_add(1, Ordering::Relaxed) + 1 == quarter as u64 {
                    let sample = ProcSample::read(&options.pids);
                    *first_quarter.lock().expect("not poisoned") = Some((quarter, sample));
                }
                Ok((
                    ws,
                    Role {
                        room,
                        rate,
                        // Spread evenly however many of the connections send.
                        phase: (i as f64 * GOLDEN_RATIO_FRACTION).fract(),
                        subscribe,
                        base,
                        path,
                        source,
                    },
                ))
            }
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect()
        .await;
    let connect_seconds = connect_started.elapsed().as_secs_f64();
    let connections: Vec<(client::Ws, Role)> = opened.into_iter().collect::<Result<_, _>>()?;
    let connects_per_second = connections.len() as f64 / connect_seconds;
    let after_connect = ProcSample::read(&options.pids);
    eprintln!(
        "[bench] {} connections in {connect_seconds:.1}s ({connects_per_second:.0}/s)",
        connections.len()
    );

    let duration = if matches!(scenario, "connect") {
        Duration::ZERO
    } else if scenario == "idle" {
        Duration::from_secs(2)
    } else {
        options.duration
    };
    let stop_sending = Instant::now() + duration;
    let (stop_tx, stop_rx) = watch::channel(false);
    // Deliveries and acknowledgements, as they arrive.
    let arrived = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = connections
        .into_iter()
        .map(|(ws, role)| {
            tokio::spawn(client::drive(
                ws,
                role,
                epoch,
                stop_sending,
                stop_rx.clone(),
                arrived.clone(),
            ))
        })
        .collect();
    let traffic_started = Instant::now();
    progress(duration, &options.pids).await;
    let traffic_seconds = traffic_started.elapsed().as_secs_f64();
    let hooked_when_sending_stopped = webhook
        .as_ref()
        .map(|received| received.requests.load(Ordering::Relaxed));
    // Let in-flight messages land before counting: until deliveries and acks stop for
    // 2 s (a saturated run drains its backlog), at most a minute.
    if rate > 0.0 {
        let drain_started = Instant::now();
        let mut last = arrived.load(Ordering::Relaxed);
        let mut quiet_since = Instant::now();
        while quiet_since.elapsed() < Duration::from_secs(2)
            && drain_started.elapsed() < Duration::from_secs(60)
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = arrived.load(Ordering::Relaxed);
            if now != last {
                last = now;
                quiet_since = Instant::now();
            }
        }
    }
    let _ = stop_tx.send(true);
    let mut tallies = Vec::with_capacity(tasks.len());
    for task in tasks {
        tallies.push(task.await.map_err(|e| e.to_string())?);
    }
    let after_traffic = ProcSample::read(&options.pids);
    if let (Some(received), Some(at_stop)) = (&webhook, hooked_when_sending_stopped) {
        report_webhook(received, at_stop, &tallies, rate, traffic_seconds).await?;
    }
    Ok(report::summarise(report::Inputs {
        scenario,
        rate,
        options,
        tallies: &tallies,
        connects_per_second,
        send_seconds: duration
            .as_secs_f64()
            .max(traffic_seconds.min(duration.as_secs_f64())),
        before_connect,
        first_quarter: first_quarter.into_inner().expect("not poisoned"),
        after_connect,
        after_traffic,
    }))
}

/// Users (tokens) and rooms for the plan; against the baseline, made-up ones.
async fn set_up(
    options: &Options,
    plans: &[Plan],
    room_count: usize,
) -> Result<(Vec<String>, Vec<String>), String> {
    let users_needed = plans.iter().map(|p| p.user + 1).max().unwrap_or(1);
    // Connections share users: registering (argon2) is deliberately slow.
    let user_count = users_needed.min(200);
    if options.baseline {
        let run = uuid_fragment();
        let rooms = (0..room_count).map(|i| format!("room-{run}-{i}")).collect();
        return Ok((vec!["baseline".into()], rooms));
    }
    let api = Api::new(&options.urls);
    let run = &uuid_fragment();
    let tokens: Vec<String> = stream::iter(0..user_count)
        .map(|i| {
            let api = &api;
            async move { api.register(i, run).await }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let rooms: Vec<String> = stream::iter(0..room_count)
        .map(|i| {
            let (api, token) = (&api, tokens[0].clone());
            async move { api.create_room(i, &token).await }
        })
        .buffered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    // Every user who sends in a room must be a member of it.
    let mut joins: Vec<(usize, usize)> = plans
        .iter()
        .filter(|p| p.rate > 0.0)
        .map(|p| (p.user % user_count, p.room))
        .collect();
    joins.sort_unstable();
    joins.dedup();
    let joined: Vec<Result<(), String>> = stream::iter(joins)
        .map(|(user, room)| {
            let (api, token, room) = (&api, tokens[user].clone(), rooms[room].clone());
            async move {
                if user == 0 {
                    Ok(())
                } else {
                    api.join(user, &token, &room).await
                }
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    joined.into_iter().collect::<Result<Vec<_>, _>>()?;
    eprintln!("[bench] set up {user_count} users and {room_count} rooms");
    Ok((tokens, rooms))
}

/// Waits (at most two minutes) for the webhook to deliver every acknowledged send, then
/// prints its figures as one JSON line: how many it delivered while the senders sent
/// and at what rate it delivered overall. Fewer deliveries than sends is an error.
async fn report_webhook(
    received: &webhook::Received,
    at_stop: u64,
    tallies: &[client::Tally],
    rate: f64,
    traffic_seconds: f64,
) -> Result<(), String> {
    let acked: u64 = tallies.iter().map(|t| t.acked).sum();
    let waiting = Instant::now();
    while received.requests.load(Ordering::Relaxed) < acked
        && waiting.elapsed() < Duration::from_secs(120)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let delivered = received.requests.load(Ordering::Relaxed);
    let span = *received.span.lock().expect("not poisoned");
    let seconds = span.map_or(0.0, |(first, last)| (last - first).as_secs_f64());
    let line = serde_json::json!({
        "scenario": "hot-room-webhook",
        "rate": rate,
        "acked_sends": acked,
        "webhook_delivered": delivered,
        "delivered_while_sending": at_stop,
        "sends_per_second": acked as f64 / traffic_seconds,
        "webhook_events_per_second": if seconds > 0.0 { delivered as f64 / seconds } else { 0.0 },
        "webhook_finished_after_sending_s": waiting.elapsed().as_secs_f64(),
    });
    println!("{line}");
    match delivered >= acked {
        true => Ok(()),
        false => Err(format!(
            "the webhook delivered {delivered} of {acked} messages"
        )),
    }
}

pub(crate) fn uuid_fragment() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default()
            % 0xff_ffff
    )
}

/// Prints a progress line every second while traffic runs.
async fn progress(duration: Duration, pids: &[u32]) {
    let started = Instant::now();
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_secs(1).min(duration)).await;
        let sample = ProcSample::read(pids);
        eprintln!(
            "[bench] {:>4.0}s  server rss {:.0} MiB",
            started.elapsed().as_secs_f64(),
            sample.rss_kib as f64 / 1024.0
        );
    }
}
