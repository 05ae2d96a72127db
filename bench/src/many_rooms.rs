//! `many-rooms`: what a node pays for rooms it serves but nobody talks in (issue #23).
//!
//! N sockets, each subscribed to R rooms: one of a few hot rooms and R − 1 drawn from a
//! pool of silent public rooms (seeded with SQL: a pool of 200,000 through REST would
//! take longer than the run). The phases, each measured on the server processes:
//!
//! 1. **connect** all sockets with no subscription: memory per idle connection and the
//!    connect rate;
//! 2. **subscribe** each socket to its R rooms (frames pipelined): memory per
//!    subscription;
//! 3. **rest**: nothing sent for `--rest` seconds: CPU per node, Postgres transactions
//!    per second per node, and each node's NATS connection (subscriptions, bytes in and
//!    out: at rest that is presence) from the NATS monitoring endpoint;
//! 4. **traffic and storm**: senders on the first node send into the hot rooms; the
//!    last node is SIGKILLed and its clients resume on the others with `since_seq` for
//!    every room: the time until every one of them has all its rooms back and has
//!    caught up on its hot room;
//! 5. **check**: every client saw every message of its hot room exactly once, in order.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt, stream};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::{
    Options,
    client::{Api, SeqLog, Ws, connect},
    report::ProcSample,
    scenario::uuid_fragment,
};

/// What `many-rooms` takes beyond the common flags.
pub struct Settings {
    pub rooms_per_connection: usize,
    pub pool: usize,
    pub hot_rooms: usize,
    /// Sends per second over all hot rooms.
    pub rate: f64,
    pub rest: Duration,
    /// How long subscribing every socket may take before the run gives up.
    pub subscribe_limit: Duration,
    pub database_url: String,
    pub nats_monitor: Option<String>,
    /// SIGKILL the last of `--pids` (the node of the last `--url`) and measure the storm.
    pub kill: bool,
}

/// Listening users the sockets share (registration is deliberately slow).
const USERS: usize = 50;
/// Sockets opened at once.
const CONNECT_CONCURRENCY: usize = 256;
/// How long the storm may take before the run gives up on it.
const STORM_LIMIT: Duration = Duration::from_secs(120);
/// How long a client waits, once sending stopped, for its hot room's last message.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// Each hot room's last `seq` once sending stopped: what every client must have seen.
type Finals = watch::Receiver<Option<Arc<HashMap<String, i64>>>>;

/// What the run tells every client: when the node was killed, when the senders stop,
/// and where each hot room ended.
#[derive(Clone)]
struct Signals {
    killed: watch::Receiver<Option<Instant>>,
    stop: watch::Receiver<bool>,
    finals: Finals,
}

#[derive(Serialize, Default)]
struct Figures {
    scenario: &'static str,
    connections: usize,
    rooms_per_connection: usize,
    pool: usize,
    nodes: usize,
    connects_per_second: f64,
    idle_connection_bytes: f64,
    subscribe_seconds: f64,
    subscription_bytes: f64,
    /// The same, read again at the end of the rest: what the burst's freed buffers no
    /// longer hold.
    subscription_bytes_at_rest: f64,
    rest_seconds: f64,
    rest_cpu_percent_per_node: f64,
    rest_pg_transactions_per_second_per_node: f64,
    nats_subscriptions_per_node: Vec<u64>,
    rest_nats_bytes_in_per_second_per_node: f64,
    rest_nats_bytes_out_per_second_per_node: f64,
    sent: u64,
    displaced: usize,
    /// Displaced clients that never had everything back.
    unrecovered: usize,
    storm_seconds: Option<f64>,
    lost: u64,
    duplicated: u64,
    reordered: u64,
}

/// One socket's plan and what it saw of its hot room.
struct Client {
    token: String,
    node: usize,
    source: u8,
    rooms: Vec<String>,
}

#[derive(Default)]
struct Seen {
    hot: SeqLog,
    /// Each room's `last_seq` when last subscribed, for `since_seq` on resume.
    positions: HashMap<String, i64>,
    /// When the client had every room back and its hot room caught up after the kill.
    recovered_at: Option<Instant>,
}

pub async fn run(options: &Options, settings: Settings) -> Result<bool, String> {
    let n = options.count;
    let r = settings.rooms_per_connection.max(1);
    let nodes = options.urls.len();
    if settings.kill && (nodes < 2 || options.pids.len() != nodes) {
        return Err("--kill needs two or more --url and one --pids entry per URL".into());
    }
    // Set-up goes through the first node only: registering hashes passwords (argon2,
    // 19 MiB a hash), and memory a node freed is what it fills next, so a node that
    // hashed would show connections as cheaper than they are. Memory is read on the
    // other nodes.
    let api = Api::new(&options.urls[..1]);
    let measured: &[u32] = match options.pids.len() {
        0 | 1 => &options.pids,
        _ => &options.pids[1..],
    };
    let on_measured = |count: usize| match options.pids.len() {
        0 | 1 => count,
        _ => count - count.div_ceil(nodes),
    };
    let run = uuid_fragment();
    let (tokens, hot, pool, db) = seed(&api, &run, &settings).await?;
    let senders = senders(&api, &run, &hot).await?;
    let clients: Vec<Client> = (0..n)
        .map(|i| Client {
            token: tokens[i % tokens.len()].clone(),
            node: i % nodes,
            source: (i % usize::from(options.sources)) as u8 + 1,
            rooms: rooms_of(i, r, &hot, &pool),
        })
        .collect();
    let mut figures = Figures {
        scenario: "many-rooms",
        connections: n,
        rooms_per_connection: r,
        pool: pool.len() + hot.len(),
        nodes,
        ..Figures::default()
    };

    // 1. Connect.
    let before = ProcSample::read(measured);
    let started = Instant::now();
    let sockets: Vec<Ws> = stream::iter(&clients)
        .map(|c| {
            let base = &options.urls[c.node];
            async move { connect(base, &format!("/v1/ws?token={}", c.token), c.source).await }
        })
        .buffered(CONNECT_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    figures.connects_per_second = n as f64 / started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let connected = ProcSample::read(measured);
    figures.idle_connection_bytes = per(connected.rss_kib, before.rss_kib, on_measured(n));
    eprintln!(
        "[bench] {n} sockets open ({:.0}/s), {:.0} B each",
        figures.connects_per_second, figures.idle_connection_bytes
    );

    // 2. Subscribe: every client's task owns its socket from here on.
    let (stop_tx, stop) = watch::channel(false);
    let (kill_tx, killed) = watch::channel(None::<Instant>);
    let (finals_tx, finals) = watch::channel(None);
    let signals = Signals {
        killed,
        stop: stop.clone(),
        finals,
    };
    let subscribed = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .zip(sockets)
        .map(|(client, ws)| {
            let urls = options.urls.clone();
            let doomed = settings.kill && client.node == nodes - 1;
            tokio::spawn(follow(
                client,
                ws,
                urls,
                doomed,
                subscribed.clone(),
                signals.clone(),
            ))
        })
        .collect();
    while subscribed.load(Ordering::Relaxed) < n {
        if started.elapsed() > settings.subscribe_limit {
            return Err(format!(
                "{} of {n} sockets subscribed after {:?}",
                subscribed.load(Ordering::Relaxed),
                settings.subscribe_limit
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    figures.subscribe_seconds = started.elapsed().as_secs_f64();
    // Presence `joined` events of the subscriptions are still being delivered.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let subscribed_sample = ProcSample::read(measured);
    figures.subscription_bytes = per(
        subscribed_sample.rss_kib,
        connected.rss_kib,
        on_measured(n) * r,
    );
    eprintln!(
        "[bench] {} subscriptions in {:.1} s, {:.0} B each",
        n * r,
        figures.subscribe_seconds,
        figures.subscription_bytes
    );

    // 3. Rest, once Postgres has the statistics of the subscriptions: a backend
    // reports its counts at its next transaction or after ten seconds idle.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let (cpu0, pg0, nats0) = (
        ProcSample::read(&options.pids),
        transactions(&db).await?,
        nats_connections(settings.nats_monitor.as_deref()).await,
    );
    tokio::time::sleep(settings.rest).await;
    let (cpu1, pg1, nats1) = (
        ProcSample::read(&options.pids),
        transactions(&db).await?,
        nats_connections(settings.nats_monitor.as_deref()).await,
    );
    figures.subscription_bytes_at_rest = per(
        ProcSample::read(measured).rss_kib,
        connected.rss_kib,
        on_measured(n) * r,
    );
    let secs = settings.rest.as_secs_f64();
    figures.rest_seconds = secs;
    figures.rest_cpu_percent_per_node =
        (cpu1.cpu_ticks - cpu0.cpu_ticks) as f64 / secs / nodes as f64;
    // The two reads of the counter are this bench's own transactions.
    figures.rest_pg_transactions_per_second_per_node =
        (pg1 - pg0).saturating_sub(1) as f64 / secs / nodes as f64;
    figures.nats_subscriptions_per_node = nats1.iter().map(|c| c.subscriptions).collect();
    let delta = |f: fn(&NatsConnection) -> u64| {
        let total: u64 = nats1
            .iter()
            .map(|c| {
                let before = nats0.iter().find(|b| b.cid == c.cid).map_or(0, f);
                f(c).saturating_sub(before)
            })
            .sum();
        total as f64 / secs / nats1.len().max(1) as f64
    };
    figures.rest_nats_bytes_in_per_second_per_node = delta(|c| c.in_bytes);
    figures.rest_nats_bytes_out_per_second_per_node = delta(|c| c.out_bytes);
    eprintln!(
        "[bench] at rest: {:.2} % CPU, {:.2} Postgres transactions/s, NATS {:.0} B/s in {:.0} B/s out per node, {:.0} B per subscription",
        figures.rest_cpu_percent_per_node,
        figures.rest_pg_transactions_per_second_per_node,
        figures.rest_nats_bytes_in_per_second_per_node,
        figures.rest_nats_bytes_out_per_second_per_node,
        figures.subscription_bytes_at_rest
    );

    // 4. Traffic, then the storm.
    let sending = tokio::spawn(send(
        senders,
        options.urls[0].clone(),
        settings.rate,
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;
    if settings.kill {
        let victim = options.pids[nodes - 1];
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &victim.to_string()])
            .status();
        let at = Instant::now();
        let _ = kill_tx.send(Some(at));
        eprintln!("[bench] killed node {victim}");
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = stop_tx.send(true);
    let sent = sending.await.map_err(|e| e.to_string())??;
    figures.sent = sent;

    // 5. Check, once every client has its hot room's last message (or gave up waiting).
    let last_seqs = hot_positions(&db, &hot).await?;
    let _ = finals_tx.send(Some(Arc::new(last_seqs.clone())));
    let killed_at = *kill_tx.borrow();
    let mut storm_end: Option<Instant> = None;
    let mut displaced = 0;
    for task in tasks {
        let (room, doomed, seen) = task.await.map_err(|e| e.to_string())?;
        let last = last_seqs.get(&room).copied().unwrap_or(0);
        let (lost, duplicated) = seen.hot.lost_and_duplicated(last);
        figures.lost += lost;
        figures.duplicated += duplicated;
        figures.reordered += seen.hot.reordered;
        if doomed {
            displaced += 1;
            storm_end = match (storm_end, seen.recovered_at) {
                (_, None) => {
                    figures.unrecovered += 1;
                    storm_end
                }
                (Some(a), Some(b)) => Some(a.max(b)),
                (None, b) => b,
            };
        }
    }
    figures.displaced = displaced;
    figures.storm_seconds = killed_at
        .zip(storm_end)
        .map(|(k, e)| e.duration_since(k).as_secs_f64());
    let clean = figures.lost == 0
        && figures.duplicated == 0
        && figures.reordered == 0
        && figures.unrecovered == 0;
    crate::report::print_figures(&figures, options.json)?;
    Ok(clean)
}

fn per(after_kib: u64, before_kib: u64, count: usize) -> f64 {
    after_kib.saturating_sub(before_kib) as f64 * 1024.0 / count.max(1) as f64
}

/// A client's rooms: its hot room first, then R − 1 distinct silent ones, drawn from
/// the client's index so runs are repeatable.
fn rooms_of(i: usize, r: usize, hot: &[String], pool: &[String]) -> Vec<String> {
    let mut rooms = vec![hot[i % hot.len()].clone()];
    let mut state = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut picked = std::collections::HashSet::new();
    while rooms.len() < r.min(pool.len() + 1) {
        // splitmix64
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        let index = ((z ^ (z >> 31)) % pool.len() as u64) as usize;
        if picked.insert(index) {
            rooms.push(pool[index].clone());
        }
    }
    rooms
}

/// Registers the listening users and inserts the rooms: `(tokens, hot rooms, silent
/// rooms, database)`.
async fn seed(
    api: &Api,
    run: &str,
    settings: &Settings,
) -> Result<
    (
        Vec<String>,
        Vec<String>,
        Vec<String>,
        tokio_postgres::Client,
    ),
    String,
> {
    let tokens: Vec<String> = stream::iter(0..USERS)
        .map(|i| async move { api.register(i, run).await })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let (db, connection) = tokio_postgres::connect(&settings.database_url, tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("--database-url: {e}"))?;
    tokio::spawn(connection);
    let rows = db
        .query(
            "INSERT INTO rooms (id, name, kind, owner_id)
             SELECT gen_random_uuid(), 'many-' || $1 || '-' || g, 'public',
                    (SELECT id FROM users WHERE username = 'b' || $1 || '-0')
               FROM generate_series(1, $2::bigint) g
             RETURNING id::text",
            &[&run, &(settings.pool as i64)],
        )
        .await
        .map_err(|e| format!("seeding rooms: {e}"))?;
    let mut rooms: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
    let hot = rooms.split_off(rooms.len() - settings.hot_rooms.clamp(1, rooms.len() - 1));
    eprintln!(
        "[bench] seeded {} users, {} rooms ({} hot)",
        tokens.len(),
        settings.pool,
        hot.len()
    );
    Ok((tokens, hot, rooms, db))
}

/// One sending user per hot room, a member of it.
async fn senders(api: &Api, run: &str, hot: &[String]) -> Result<Vec<(String, String)>, String> {
    let mut senders = Vec::new();
    for (i, room) in hot.iter().enumerate() {
        let token = api.register(USERS + i, run).await?;
        api.join(0, &token, room).await?;
        senders.push((token, room.clone()));
    }
    Ok(senders)
}

/// Sends `rate` messages per second over the hot rooms from the first node until
/// stopped, waiting for each acknowledgement; returns how many were acknowledged.
async fn send(
    senders: Vec<(String, String)>,
    base: String,
    rate: f64,
    mut stop: watch::Receiver<bool>,
) -> Result<u64, String> {
    let mut sockets = Vec::new();
    for (token, room) in &senders {
        sockets.push((
            connect(&base, &format!("/v1/ws?token={token}"), 1).await?,
            room,
        ));
    }
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.1)));
    let mut sent = 0u64;
    let mut turn = 0usize;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stopped(&mut stop) => break,
        }
        let (ws, room) = &mut sockets[turn % senders.len()];
        turn += 1;
        let frame = json!({"type": "send", "room_id": room, "text": "many-rooms",
                           "client_msg_id": format!("m{turn}")});
        ws.send(Message::text(frame.to_string()))
            .await
            .map_err(|e| e.to_string())?;
        loop {
            match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                Ok(Some(Ok(Message::Text(text)))) if text.starts_with(r#"{"type":"send_ack""#) => {
                    sent += 1;
                    break;
                }
                Ok(Some(Ok(Message::Text(text)))) if text.starts_with(r#"{"type":"error""#) => {
                    return Err(format!("send refused: {text}"));
                }
                Ok(Some(Ok(_))) => {}
                _ => return Err("a sender's socket failed".into()),
            }
        }
    }
    Ok(sent)
}

/// One client: subscribes to its rooms, records its hot room, and after the kill (if
/// its node was the one killed) reconnects to another node and resumes every room.
async fn follow(
    client: Client,
    mut ws: Ws,
    urls: Vec<String>,
    doomed: bool,
    subscribed: Arc<AtomicUsize>,
    mut signals: Signals,
) -> (String, bool, Seen) {
    let hot = client.rooms[0].clone();
    let mut seen = Seen::default();
    let mut since: HashMap<String, i64> = HashMap::new();
    let mut first = true;
    let mut attempt = 0usize;
    loop {
        if subscribe_all(&mut ws, &client.rooms, &since, &hot, &mut seen)
            .await
            .is_ok()
        {
            if first {
                subscribed.fetch_add(1, Ordering::Relaxed);
                first = false;
            }
            let resumed = signals.killed.borrow().is_some();
            // Caught up once the hot room's replay reached its position.
            let caught_up =
                |seen: &Seen| seen.hot.last_seq >= seen.positions.get(&hot).copied().unwrap_or(0);
            if resumed && doomed && seen.recovered_at.is_none() && caught_up(&seen) {
                seen.recovered_at = Some(Instant::now());
            }
            loop {
                tokio::select! {
                    frame = ws.next() => match frame {
                        Some(Ok(Message::Text(text))) => {
                            on_frame(&text, &hot, &mut seen);
                            if resumed && doomed && seen.recovered_at.is_none() && caught_up(&seen) {
                                seen.recovered_at = Some(Instant::now());
                            }
                        }
                        Some(Ok(_)) => {}
                        _ => break,
                    },
                    target = final_seq(&mut signals.finals, &hot) => {
                        // Read on until the hot room's last message, or give up.
                        let deadline = tokio::time::Instant::now() + DRAIN_LIMIT;
                        while seen.hot.last_seq < target {
                            match tokio::time::timeout_at(deadline, ws.next()).await {
                                Ok(Some(Ok(Message::Text(text)))) => on_frame(&text, &hot, &mut seen),
                                Ok(Some(Ok(_))) => {}
                                _ => break,
                            }
                        }
                        let _ = ws.close(None).await;
                        return (hot, doomed, seen);
                    }
                }
            }
        }
        // The socket closed: resume every room on another node.
        since = seen.positions.clone();
        since.insert(hot.clone(), seen.hot.last_seq);
        let deadline = Instant::now() + STORM_LIMIT;
        ws = loop {
            attempt += 1;
            let node = (client.node + attempt) % urls.len();
            let survivor = if doomed && node == urls.len() - 1 {
                0
            } else {
                node
            };
            if let Ok(fresh) = connect(
                &urls[survivor],
                &format!("/v1/ws?token={}", client.token),
                client.source,
            )
            .await
            {
                break fresh;
            }
            if Instant::now() > deadline || *signals.stop.borrow() {
                return (hot, doomed, seen);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
    }
}

/// The hot room's last `seq`, once sending has stopped.
async fn final_seq(finals: &mut Finals, hot: &str) -> i64 {
    let finals = finals.wait_for(Option::is_some).await;
    finals
        .ok()
        .and_then(|finals| finals.as_ref()?.get(hot).copied())
        .unwrap_or(0)
}

/// Resolves once the run says stop.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Sends a subscribe frame per room (with `since_seq` when resuming) and reads until
/// every room answered.
async fn subscribe_all(
    ws: &mut Ws,
    rooms: &[String],
    since: &HashMap<String, i64>,
    hot: &str,
    seen: &mut Seen,
) -> Result<(), String> {
    for room in rooms {
        let mut frame = json!({"type": "subscribe", "room_id": room});
        if let Some(seq) = since.get(room) {
            frame["since_seq"] = json!(seq);
        } else if room == hot {
            frame["since_seq"] = json!(0);
        }
        ws.feed(Message::text(frame.to_string()))
            .await
            .map_err(|e| e.to_string())?;
    }
    ws.flush().await.map_err(|e| e.to_string())?;
    let mut pending = rooms.len();
    while pending > 0 {
        match tokio::time::timeout(STORM_LIMIT, ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                if text.starts_with(r#"{"type":"subscribed""#) {
                    let frame: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
                    let room = frame["room_id"].as_str().unwrap_or_default().to_string();
                    seen.positions
                        .insert(room, frame["last_seq"].as_i64().unwrap_or(0));
                    pending -= 1;
                } else if text.starts_with(r#"{"type":"error""#) {
                    return Err(text.to_string());
                } else {
                    on_frame(&text, hot, seen);
                }
            }
            Ok(Some(Ok(_))) => {}
            _ => return Err("closed while subscribing".into()),
        }
    }
    Ok(())
}

/// Records a hot-room message; everything else (presence, typing) is skipped unparsed.
fn on_frame(text: &str, hot: &str, seen: &mut Seen) {
    if !text.starts_with(r#"{"type":"message""#) {
        return;
    }
    let Ok(frame) = serde_json::from_str::<Value>(text) else {
        return;
    };
    let message = &frame["message"];
    if message["room_id"].as_str() == Some(hot)
        && let Some(seq) = message["seq"].as_i64()
    {
        seen.hot.saw(seq);
    }
}

async fn transactions(db: &tokio_postgres::Client) -> Result<u64, String> {
    let row = db
        .query_one(
            "SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database
              WHERE datname = current_database()",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    // Statistics reach the view when a backend reports them (about once a second).
    Ok(row.get::<_, i64>(0) as u64)
}

async fn hot_positions(
    db: &tokio_postgres::Client,
    hot: &[String],
) -> Result<HashMap<String, i64>, String> {
    let rows = db
        .query(
            "SELECT id::text, last_seq FROM rooms WHERE id::text = ANY($1)",
            &[&hot],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// One Natter node's NATS connection, from the monitoring endpoint.
struct NatsConnection {
    cid: u64,
    subscriptions: u64,
    in_bytes: u64,
    out_bytes: u64,
}

/// The NATS connections named `natter:…` (nodes), or none without a monitoring URL.
async fn nats_connections(monitor: Option<&str>) -> Vec<NatsConnection> {
    let Some(monitor) = monitor else {
        return Vec::new();
    };
    let url = format!("{}/connz?limit=1024", monitor.trim_end_matches('/'));
    let Ok(response) = reqwest::get(&url).await else {
        return Vec::new();
    };
    let Ok(body) = response.json::<Value>().await else {
        return Vec::new();
    };
    body["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["name"].as_str().is_some_and(|n| n.starts_with("natter:")))
        .map(|c| NatsConnection {
            cid: c["cid"].as_u64().unwrap_or(0),
            subscriptions: c["subscriptions"].as_u64().unwrap_or(0),
            in_bytes: c["in_bytes"].as_u64().unwrap_or(0),
            out_bytes: c["out_bytes"].as_u64().unwrap_or(0),
        })
        .collect()
}
