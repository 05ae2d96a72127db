//! `soak`: steady traffic through a cluster while something else (`tests/faults/run`)
//! injects a fault at `--fault-at` seconds, and what the clients saw of it.
//!
//! Every connection is its own user, subscribed to one of `--rooms` rooms from `seq` 0
//! and sending `--rate` messages a second with a `client_msg_id`. When its socket
//! closes, a client does what a real one would: connects to the next node and resumes
//! with `since_seq`; except every fourth, which goes away for good (a phone that lost
//! its signal with the node), so that presence has someone to forget. At the end each
//! client must hold every `seq` of its room exactly once, in order (one that went away,
//! every `seq` up to its last). Alongside, a probe reads a room over REST every 100 ms (round robin
//! over the nodes) and tallies the statuses, and a watcher compares every node's room
//! presence with who is really subscribed, to time how long presence stayed wrong after
//! the fault. `--slow-readers N` also opens N sockets at the fault that subscribe and
//! never read, while a burst of large messages goes to their room.
//!
//! Sends are checked from the sender's side too, as a careful client would make them: a
//! send answered `unavailable`, or unanswered when its socket closed (its commit's
//! outcome unknown), is sent again with the same `client_msg_id`; at the end every
//! acknowledged send must sit at its acknowledged `seq` in what the room's clients
//! received, and no key may have been stored twice (`acked_lost`, `stored_twice`).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt, stream};
use serde_json::{Value, json};
use tokio::{net::TcpSocket, sync::watch};
use tokio_tungstenite::tungstenite::{Message, protocol::frame::coding::CloseCode};

use crate::{
    Options,
    client::{Api, SeqLog, Ws, connect, subscribe},
};

/// How long a client keeps trying other nodes before it gives up.
const RECONNECT_LIMIT: Duration = Duration::from_secs(60);
/// How long the run waits, after sending stops, for every client to catch up.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

pub struct Settings {
    /// WebSockets to open, one user each.
    pub connections: usize,
    /// Rooms every user sends to and follows.
    pub rooms: usize,
    /// Sends per second per connection.
    pub rate: f64,
    /// When into the run the fault is expected (the fault script acts then).
    pub fault_at: Duration,
    /// Connections that read slowly on purpose (they must be closed with 4008, not
    /// slow anyone else).
    pub slow_readers: usize,
}

/// One user's connection and what it saw.
#[derive(Default)]
struct ClientReport {
    sent: u64,
    acked: u64,
    send_errors: BTreeMap<String, u64>,
    seqs: SeqLog,
    /// The `client_msg_id` of each `seq` received.
    keys: HashMap<i64, String>,
    /// (`client_msg_id`, `seq`) of each acknowledged send.
    acks: Vec<(String, i64)>,
    /// Sends (by number) that have had no answer yet.
    unanswered: BTreeSet<u64>,
    /// Sends to make again, with the same key, before any new one.
    to_retry: VecDeque<u64>,
    retried: u64,
    delivered: u64,
    reconnects: Vec<Duration>,
    gave_up: bool,
    /// It went away when its socket closed, by design.
    left: bool,
}

impl ClientReport {
    fn record(&mut self, text: &str) {
        let Ok(frame) = serde_json::from_str::<Value>(text) else {
            return;
        };
        match frame["type"].as_str() {
            Some("message") => {
                let seq = frame["message"]["seq"].as_i64().unwrap_or_default();
                self.seqs.saw(seq);
                if let Some(key) = frame["message"]["client_msg_id"].as_str() {
                    self.keys.insert(seq, key.to_string());
                }
                self.delivered += 1;
            }
            Some("send_ack") => {
                self.acked += 1;
                let key = frame["message"]["client_msg_id"]
                    .as_str()
                    .unwrap_or_default();
                if let Some(number) = send_number(key) {
                    self.unanswered.remove(&number);
                }
                let seq = frame["message"]["seq"].as_i64().unwrap_or_default();
                self.acks.push((key.to_string(), seq));
            }
            Some("error") => {
                let code = frame["code"].as_str().unwrap_or("unknown").to_string();
                if let Some(number) = frame["ref"].as_str().and_then(send_number) {
                    self.unanswered.remove(&number);
                    if code == "unavailable" {
                        self.to_retry.push_back(number);
                    }
                }
                *self.send_errors.entry(code).or_default() += 1;
            }
            _ => {}
        }
    }
}

/// The number of a send from its `client_msg_id` (`{client}-{number}`).
fn send_number(key: &str) -> Option<u64> {
    key.rsplit_once('-')?.1.parse().ok()
}

/// A connection's part in the run.
struct Client {
    index: usize,
    room: String,
    token: String,
    urls: Arc<Vec<String>>,
    /// Subscribed now: the truth presence is checked against.
    present: Arc<AtomicBool>,
    /// Goes away for good when its socket closes, instead of reconnecting.
    leaves: bool,
}

impl Client {
    async fn open(&self, node: usize, since_seq: i64) -> Result<Ws, String> {
        let path = format!("/v1/ws?token={}", self.token);
        let mut ws = connect(&self.urls[node % self.urls.len()], &path, 1).await?;
        subscribe(&mut ws, &self.room, Some(since_seq)).await?;
        Ok(ws)
    }

    /// Connects to the nodes from `node` on until one takes the subscription.
    async fn reopen(&self, mut node: usize, since_seq: i64) -> Option<(Ws, usize)> {
        let started = Instant::now();
        while started.elapsed() < RECONNECT_LIMIT {
            let attempt = tokio::time::timeout(Duration::from_secs(3), self.open(node, since_seq));
            if let Ok(Ok(ws)) = attempt.await {
                return Some((ws, node));
            }
            node += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    async fn drive(
        self,
        rate: f64,
        stop_sending: Instant,
        mut finals: watch::Receiver<Option<i64>>,
    ) -> ClientReport {
        let mut report = ClientReport::default();
        let Some((mut ws, mut node)) = self.reopen(self.index, 0).await else {
            report.gave_up = true;
            return report;
        };
        self.present.store(true, Ordering::Relaxed);
        let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
        let phase = period.mul_f64((self.index as f64 * 0.618_034) % 1.0);
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + phase, period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if (*finals.borrow()).is_some_and(|last| report.seqs.last_seq >= last) {
                break;
            }
            let closed = tokio::select! {
                _ = ticker.tick(), if rate > 0.0 && Instant::now() < stop_sending => {
                    let number = match report.to_retry.pop_front() {
                        Some(number) => {
                            report.retried += 1;
                            number
                        }
                        None => {
                            report.sent += 1;
                            report.sent - 1
                        }
                    };
                    report.unanswered.insert(number);
                    let frame = json!({"type": "send", "room_id": self.room, "text": "soak",
                                       "client_msg_id": format!("{}-{number}", self.index)});
                    ws.send(Message::text(frame.to_string())).await.is_err()
                }
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(text))) => {
                        report.record(&text);
                        false
                    }
                    Some(Ok(_)) => false,
                    _ => true,
                },
                changed = finals.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    false
                }
            };
            if closed {
                self.present.store(false, Ordering::Relaxed);
                // Their commits' outcome is unknown: the retries will tell.
                let unanswered = std::mem::take(&mut report.unanswered);
                report.to_retry.extend(unanswered);
                if self.leaves {
                    report.left = true;
                    return report;
                }
                let started = Instant::now();
                let Some((fresh, at)) = self.reopen(node + 1, report.seqs.last_seq).await else {
                    report.gave_up = true;
                    return report;
                };
                report.reconnects.push(started.elapsed());
                (ws, node) = (fresh, at);
                self.present.store(true, Ordering::Relaxed);
            }
        }
        self.present.store(false, Ordering::Relaxed);
        let _ = ws.close(None).await;
        report
    }
}

/// Reads a room over REST every 100 ms, round robin over the nodes, until `until`;
/// tallies the statuses (`0`: the node did not answer).
async fn probe_rest(
    api: Arc<Api>,
    nodes: usize,
    room: String,
    token: String,
    until: Instant,
) -> BTreeMap<u16, u64> {
    let mut statuses = BTreeMap::new();
    let mut node = 0;
    while Instant::now() < until {
        let (status, _) = api.get(node, &format!("/v1/rooms/{room}"), &token).await;
        *statuses.entry(status).or_default() += 1;
        node = (node + 1) % nodes;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    statuses
}

/// A room and its members: each user's id, and whether they are subscribed now.
type RoomMembers = (String, Vec<(String, Arc<AtomicBool>)>);

/// From `fault` until `until`, compares every answering node's presence of each room
/// with who is subscribed; returns how long after the fault it was last seen wrong.
async fn watch_presence(
    api: Arc<Api>,
    nodes: usize,
    rooms: Vec<RoomMembers>,
    token: String,
    fault: Instant,
    until: Instant,
) -> Duration {
    tokio::time::sleep_until(fault.into()).await;
    let mut last_wrong = None;
    while Instant::now() < until {
        let checked_at = Instant::now();
        for (room, members) in &rooms {
            let truth: HashSet<&str> = members
                .iter()
                .filter(|(_, present)| present.load(Ordering::Relaxed))
                .map(|(id, _)| id.as_str())
                .collect();
            for node in 0..nodes {
                let (status, body) = api
                    .get(node, &format!("/v1/rooms/{room}/presence"), &token)
                    .await;
                if status != 200 {
                    continue;
                }
                let seen: HashSet<&str> = body["users"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|user| user["id"].as_str())
                    .collect();
                if seen != truth {
                    last_wrong = Some(checked_at);
                    let missing: Vec<_> = truth.difference(&seen).collect();
                    let extra: Vec<_> = seen.difference(&truth).collect();
                    eprintln!(
                        "[soak] {:.1}s presence on node {node} of room {room}: missing {missing:?}, extra {extra:?}",
                        checked_at.duration_since(fault).as_secs_f64()
                    );
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    last_wrong.map_or(Duration::ZERO, |at| at.duration_since(fault))
}

/// Opens `count` sockets to `room` that subscribe and then never read, with small
/// receive buffers, so the node's queue to them fills.
async fn open_slow_readers(urls: &[String], room: &str, token: &str, count: usize) -> Vec<Ws> {
    let mut sockets = Vec::new();
    for i in 0..count {
        let base = &urls[i % urls.len()];
        let Some(host) = base.strip_prefix("http://") else {
            continue;
        };
        let Ok(Some(addr)) = tokio::net::lookup_host(host).await.map(|mut a| a.next()) else {
            continue;
        };
        let Ok(socket) = TcpSocket::new_v4() else {
            continue;
        };
        let _ = socket.set_recv_buffer_size(4096);
        let Ok(stream) = socket.connect(addr).await else {
            continue;
        };
        let url = format!("ws://{host}/v1/ws?token={token}");
        if let Ok((mut ws, _)) = tokio_tungstenite::client_async(url, stream).await
            && subscribe(&mut ws, room, None).await.is_ok()
        {
            sockets.push(ws);
        }
    }
    sockets
}

/// How many of the slow readers the server closed with 4008 (reading what they
/// buffered first).
async fn closed_as_slow(sockets: Vec<Ws>) -> usize {
    let mut closed = 0;
    for mut ws in sockets {
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(Ok(frame)) = ws.next().await {
                if let Message::Close(Some(close)) = frame {
                    return close.code == CloseCode::from(4008);
                }
            }
            false
        });
        if read.await.unwrap_or(false) {
            closed += 1;
        }
    }
    closed
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

pub async fn run(options: &Options, settings: Settings) -> Result<bool, String> {
    let nodes = options.urls.len();
    let api = Arc::new(Api::new(&options.urls));
    let run = crate::scenario::uuid_fragment();
    let accounts: Vec<(String, String)> = stream::iter(0..settings.connections)
        .map(|i| {
            let (api, run) = (api.clone(), run.clone());
            async move { api.account(i, &run).await }
        })
        .buffered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let owner = accounts[0].0.clone();
    let mut rooms = Vec::new();
    for i in 0..settings.rooms {
        rooms.push(api.create_room(i, &owner).await?);
    }
    for (i, (token, _)) in accounts.iter().enumerate().skip(1) {
        api.join(i, token, &rooms[i % settings.rooms]).await?;
    }
    eprintln!(
        "[soak] {} users in {} rooms over {nodes} nodes; fault at {:?}",
        settings.connections, settings.rooms, settings.fault_at
    );

    let started = Instant::now();
    let stop_sending = started + options.duration;
    let fault = started + settings.fault_at;
    let urls = Arc::new(options.urls.clone());
    let (final_tx, final_rx) = watch::channel(None::<Vec<i64>>);
    let mut members: Vec<Vec<(String, Arc<AtomicBool>)>> = vec![Vec::new(); settings.rooms];
    let mut clients = Vec::new();
    for (index, (token, id)) in accounts.iter().enumerate() {
        let room_index = index % settings.rooms;
        let present = Arc::new(AtomicBool::new(false));
        members[room_index].push((id.clone(), present.clone()));
        let client = Client {
            index,
            room: rooms[room_index].clone(),
            token: token.clone(),
            urls: urls.clone(),
            present,
            leaves: index % 4 == 3,
        };
        // Each client learns its own room's final `seq` once sending has stopped.
        let (room_tx, room_rx) = watch::channel(None);
        let mut all = final_rx.clone();
        tokio::spawn(async move {
            while all.changed().await.is_ok() {
                let last = all.borrow().as_ref().map(|finals| finals[room_index]);
                if last.is_some() {
                    let _ = room_tx.send(last);
                    return;
                }
            }
        });
        clients.push(tokio::spawn(client.drive(
            settings.rate,
            stop_sending,
            room_rx,
        )));
    }
    let probe = tokio::spawn(probe_rest(
        api.clone(),
        nodes,
        rooms[0].clone(),
        owner.clone(),
        stop_sending,
    ));
    let presence = tokio::spawn(watch_presence(
        api.clone(),
        nodes,
        rooms.iter().cloned().zip(members).collect(),
        owner.clone(),
        fault,
        stop_sending,
    ));
    let slow = if settings.slow_readers > 0 {
        let (api, urls, room, token) = (api.clone(), urls.clone(), rooms[0].clone(), owner.clone());
        let count = settings.slow_readers;
        Some(tokio::spawn(async move {
            tokio::time::sleep_until(fault.into()).await;
            let sockets = open_slow_readers(&urls, &room, &token, count).await;
            // A burst of large messages the slow readers cannot take.
            let text = "x".repeat(3900);
            let statuses = Mutex::new(BTreeMap::<u16, u64>::new());
            let posted = AtomicU64::new(0);
            stream::iter(0..1500)
                .for_each_concurrent(16, |i| {
                    let (api, room, token, text) = (&api, &room, &token, &text);
                    let (statuses, posted) = (&statuses, &posted);
                    async move {
                        let body = json!({"text": text});
                        let path = format!("/v1/rooms/{room}/messages");
                        let status = api.post_status(i, &path, token, body).await;
                        *statuses.lock().unwrap().entry(status).or_default() += 1;
                        posted.fetch_add(1, Ordering::Relaxed);
                    }
                })
                .await;
            eprintln!("[soak] burst: {:?}", statuses.lock().unwrap());
            sockets
        }))
    } else {
        None
    };

    tokio::time::sleep_until(stop_sending.into()).await;
    // Both watchers finish before any client leaves, or its leaving would look wrong.
    let rest = probe.await.unwrap_or_default();
    let presence_heal = presence.await.unwrap_or_default();
    // The rooms' final positions, from whichever node answers.
    let mut finals = Vec::new();
    for room in &rooms {
        let deadline = Instant::now() + DRAIN_LIMIT;
        let mut node = 0;
        let last = loop {
            node += 1;
            let (status, body) = api.get(node, &format!("/v1/rooms/{room}"), &owner).await;
            if status == 200 {
                break body["last_seq"].as_i64().unwrap_or_default();
            }
            if Instant::now() > deadline {
                return Err(format!("no node answers for room {room}"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        finals.push(last);
    }
    let _ = final_tx.send(Some(finals.clone()));
    let mut reports = Vec::new();
    for (index, client) in clients.into_iter().enumerate() {
        let report = tokio::time::timeout(DRAIN_LIMIT, client).await;
        match report {
            Ok(Ok(report)) => reports.push((index % settings.rooms, report)),
            _ => {
                reports.push((
                    index % settings.rooms,
                    ClientReport {
                        gave_up: true,
                        ..ClientReport::default()
                    },
                ));
            }
        }
    }
    let slow_closed = match slow {
        Some(task) => Some(closed_as_slow(task.await.unwrap_or_default()).await),
        None => None,
    };

    let (mut lost, mut duplicated, mut reordered, mut delivered) = (0u64, 0u64, 0u64, 0u64);
    let (mut sent, mut acked, mut gave_up, mut left) = (0u64, 0u64, 0u64, 0u64);
    let mut send_errors = BTreeMap::<String, u64>::new();
    let mut reconnects = Vec::new();
    let (acked_lost, stored_twice) = check_acks(&reports, settings.rooms);
    let retried: u64 = reports.iter().map(|(_, report)| report.retried).sum();
    for (room_index, report) in &reports {
        let last = match report.left {
            true => report.seqs.last_seq,
            false => finals[*room_index],
        };
        left += u64::from(report.left);
        let (client_lost, client_duplicated) = report.seqs.lost_and_duplicated(last);
        lost += client_lost;
        duplicated += client_duplicated;
        delivered += report.delivered;
        reordered += report.seqs.reordered;
        sent += report.sent;
        acked += report.acked;
        gave_up += u64::from(report.gave_up);
        for (code, count) in &report.send_errors {
            *send_errors.entry(code.clone()).or_default() += count;
        }
        reconnects.extend(report.reconnects.iter().copied());
    }
    reconnects.sort();
    let ms = |d: Duration| (d.as_secs_f64() * 1000.0).round() as u64;
    let summary = json!({
        "connections": settings.connections,
        "sent": sent,
        "acked": acked,
        "retried": retried,
        "acked_lost": acked_lost,
        "stored_twice": stored_twice,
        "send_errors": send_errors,
        "delivered": delivered,
        "lost": lost,
        "duplicated": duplicated,
        "reordered": reordered,
        "clients_gave_up": gave_up,
        "clients_left": left,
        "reconnects": reconnects.len(),
        "reconnect_p99_ms": ms(percentile(&reconnects, 0.99)),
        "reconnect_max_ms": ms(reconnects.last().copied().unwrap_or_default()),
        "presence_wrong_for_ms": ms(presence_heal),
        "rest_statuses": rest.iter().map(|(s, n)| (s.to_string(), *n)).collect::<BTreeMap<_, _>>(),
        "slow_readers": settings.slow_readers,
        "slow_readers_closed_4008": slow_closed,
    });
    if options.json {
        println!("{summary}");
    } else {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary).unwrap_or_default()
        );
    }
    Ok(lost == 0
        && duplicated == 0
        && reordered == 0
        && gave_up == 0
        && acked_lost == 0
        && stored_twice == 0)
}

/// Checks every acknowledged send against what its room's clients received: returns
/// how many acknowledged sends are not at their acknowledged `seq` (or were received
/// with another key there), and how many keys were stored at more than one `seq`.
fn check_acks(reports: &[(usize, ClientReport)], rooms: usize) -> (u64, u64) {
    let mut received: Vec<HashMap<i64, &str>> = vec![HashMap::new(); rooms];
    let mut conflicting = 0;
    for (room, report) in reports {
        for (seq, key) in &report.keys {
            match received[*room].insert(*seq, key) {
                Some(before) if before != key => conflicting += 1,
                _ => {}
            }
        }
    }
    let mut acked_lost = conflicting;
    for (room, report) in reports {
        for (key, seq) in &report.acks {
            if received[*room].get(seq) != Some(&key.as_str()) {
                acked_lost += 1;
            }
        }
    }
    let mut stored_twice = 0;
    for room in &received {
        let mut seen = HashSet::new();
        stored_twice += room.values().filter(|key| !seen.insert(**key)).count() as u64;
    }
    (acked_lost, stored_twice)
}
