"""End-to-end faults against the compose cluster, through the load balancer only.

Clients register, subscribe over WebSockets and track every message by seq while a
sender posts at a steady rate. Meanwhile the scenario kills a Natter container, takes a
NATS node off the network, restarts every Natter node one at a time, and scales the
Natter service out to four nodes. Clients that lose their socket reconnect through the
balancer and resume with since_seq. At the end
every client must hold seq 1..N exactly once, in order; the run prints what each fault
cost and exits non-zero on any loss, duplicate or reordering.

With --ha (the stack with docker-compose.ha.yml) the one fault is the Postgres primary's
container killed: Patroni promotes the synchronous standby, the sender retries each send
with its client_msg_id until it is acknowledged, and the room must end at exactly the
number of acknowledged sends (nothing acknowledged lost, nothing stored twice).

In both, from outside the stack: Postgres refuses the password compose once published
(natter-local-only), and a nats-server started on the compose network that routes to
nats-1:6222 without the route password is refused and never becomes a peer (no route
to it on nats-1, none on it, and a subscription to everything on it receives no room
traffic), while the same server with the password does (so the check can fail).

Run by tests/compose/run, which starts the cluster.
"""

import argparse
import asyncio
import json
import shlex
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

CLIENTS = 6
SENDERS = 6
RATE_PER_SECOND = 20


def log(message):
    print(f"[scenario {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Cluster:
    def __init__(self, port, project, compose):
        self.base = f"http://127.0.0.1:{port}"
        self.ws = f"ws://127.0.0.1:{port}"
        self.project = project
        self.compose = compose

    def request(self, method, path, token=None, body=None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("content-type", "application/json")
        if token:
            request.add_header("authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as error:
            return error.code, None
        except (urllib.error.URLError, OSError):
            return 0, None

    async def call(self, method, path, token=None, body=None):
        return await asyncio.to_thread(self.request, method, path, token, body)

    def page(self, path):
        with urllib.request.urlopen(self.base + path, timeout=10) as response:
            return response.read().decode()

    def docker(self, *args):
        return subprocess.run(["docker", *args], check=True, capture_output=True, text=True).stdout

    def patroni_member(self, role):
        """(service, container) of the Patroni member whose REST API answers 200 on
        /ROLE (`primary`, or `sync` for the synchronous standby), or None."""
        check = f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:8008/{role}', timeout=2)"
        for service in ("postgres", "postgres-2"):
            for container in self.containers(service):
                probe = subprocess.run(["docker", "exec", container, "python3", "-c", check],
                                       capture_output=True)
                if probe.returncode == 0:
                    return service, container
        return None

    def containers(self, service):
        out = subprocess.run(
            [*self.compose, "ps", "-q", service], check=True, capture_output=True, text=True
        ).stdout
        return [line for line in out.split() if line]

    async def wait_healthy(self, container, timeout=90):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.docker("inspect", "-f", "{{.State.Health.Status}}", container).strip()
            if state == "healthy":
                return
            await asyncio.sleep(0.5)
        raise RuntimeError(f"{container} not healthy after {timeout}s")


class Client:
    """A WebSocket client that resumes with since_seq whenever its socket drops."""

    def __init__(self, cluster, name, token, room):
        self.cluster, self.name, self.token, self.room = cluster, name, token, room
        self.seqs = []
        self.last = 0
        self.subscribed = asyncio.Event()
        self.down_since = None
        self.outages = []
        self.close_codes = Counter()

    async def run(self, stop):
        while not stop.is_set():
            try:
                url = f"{self.cluster.ws}/v1/ws?token={self.token}"
                async with connect(url, open_timeout=5, ping_interval=None, max_queue=None) as ws:
                    await ws.send(json.dumps(
                        {"type": "subscribe", "room_id": self.room, "since_seq": self.last}))
                    async for raw in ws:
                        frame = json.loads(raw)
                        if frame["type"] == "subscribed":
                            self.subscribed.set()
                            if self.down_since is not None:
                                self.outages.append(time.monotonic() - self.down_since)
                                self.down_since = None
                        elif frame["type"] == "message":
                            seq = frame["message"]["seq"]
                            self.seqs.append(seq)
                            self.last = max(self.last, seq)
                        if stop.is_set():
                            return
            except ConnectionClosed as closed:
                self.close_codes[closed.rcvd.code if closed.rcvd else 1006] += 1
            except (InvalidHandshake, OSError, TimeoutError, asyncio.TimeoutError):
                self.close_codes["connect failed"] += 1
            if self.down_since is None:
                self.down_since = time.monotonic()
            await asyncio.sleep(0.2)


async def sender(cluster, users, room, stop, sent, rest_errors):
    i = 0
    while not stop.is_set():
        user = users[i % len(users)]
        body = {"text": f"message {i}", "client_msg_id": f"e2e-{i}"}
        while True:
            status, _ = await cluster.call("POST", f"/v1/rooms/{room}/messages", user["token"], body)
            if status in (200, 201):
                break
            # Retried with the same client_msg_id: idempotent, never stored twice.
            rest_errors[status] += 1
            await asyncio.sleep(0.2)
        sent.append(i)
        i += 1
        await asyncio.sleep(1 / RATE_PER_SECOND)


async def settle(clients, timeout=30):
    """Waits until every client is connected again."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(c.down_since is None and c.subscribed.is_set() for c in clients):
            return
        await asyncio.sleep(0.2)
    raise RuntimeError("clients did not reconnect")


def outage_summary(clients, since):
    outages = [o for c in clients for o in c.outages[since[c.name]:]]
    for c in clients:
        since[c.name] = len(c.outages)
    if not outages:
        return {"clients_reconnected": 0}
    return {
        "clients_reconnected": len(outages),
        "reconnect_s_median": round(statistics.median(outages), 2),
        "reconnect_s_max": round(max(outages), 2),
    }


def postgres_refuses_the_old_default(cluster):
    """Postgres takes the generated password and not the one compose once published,
    over TCP as any container on the network would connect."""
    container = cluster.containers("postgres")[0]
    query = ["psql", "-h", "postgres", "-U", "natter", "-d", "natter", "-tAc", "select 1"]
    old = subprocess.run(["docker", "exec", "-e", "PGPASSWORD=natter-local-only", container, *query],
                         capture_output=True, text=True)
    assert old.returncode != 0 and "password authentication failed" in old.stderr, \
        f"Postgres took the old default password: {old.returncode} {old.stderr}"
    generated = subprocess.run(
        ["docker", "exec", container, "sh", "-c", 'PGPASSWORD="$(cat /pg-auth/password)" exec "$@"', "sh", *query],
        capture_output=True, text=True)
    assert generated.stdout.strip() == "1", f"the generated password: {generated.stderr}"
    log("Postgres refuses the old default password and takes the generated one")


async def rogue_route(cluster, project, route_password=None, seconds=3):
    """Starts a nats-server (the stack's own NATS image) on the compose network that
    routes to nats-1:6222, with the route password or without, subscribes to everything
    on it while the sender runs, and returns (whether it is a peer, messages received)."""
    nats_1 = cluster.containers("nats-1")[0]
    image = cluster.docker("inspect", "-f", "{{.Config.Image}}", nats_1).strip()
    credentials = f"natter-route:{route_password}@" if route_password else ""
    name = f"{project}-rogue-{'with' if route_password else 'without'}-password"
    cluster.docker("run", "-d", "--rm", "--name", name, "--network", f"{project}_default",
                   "-p", "127.0.0.1::4222", image, "--name", name, "--cluster_name", "natter",
                   "--cluster", "nats://0.0.0.0:6222", "--routes", f"nats://{credentials}nats-1:6222")
    try:
        port = int(cluster.docker("port", name, "4222/tcp").split()[0].rsplit(":", 1)[1])
        for _ in range(50):
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                if (await asyncio.wait_for(reader.readline(), 2)).startswith(b"INFO"):
                    break
                writer.close()
            except (OSError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError(f"{name}'s client port never answered")
        writer.write(b'CONNECT {"verbose":false,"pedantic":false}\r\nSUB > 1\r\nPING\r\n')
        await writer.drain()

        def routes_on_nats_1():
            out = cluster.docker("exec", nats_1, "wget", "-qO-", "http://127.0.0.1:8222/routez")
            return [r for r in json.loads(out)["routes"] if r.get("remote_name") == name]

        # Until nats-1 has refused it (its log says so) or taken it as a peer.
        deadline, peer = time.monotonic() + 15, False
        while time.monotonic() < deadline:
            peer = bool(await asyncio.to_thread(routes_on_nats_1))
            refused = "Authorization Violation" in subprocess.run(
                ["docker", "logs", name], capture_output=True, text=True).stderr
            if peer or refused:
                break
            await asyncio.sleep(0.3)
        else:
            raise RuntimeError(f"{name} was neither refused nor routed within 15 s")
        # Room traffic flows meanwhile (the sender posts 20 a second).
        received, until = 0, time.monotonic() + seconds
        while (left := until - time.monotonic()) > 0:
            try:
                line = await asyncio.wait_for(reader.readline(), left)
            except asyncio.TimeoutError:
                break
            if line.startswith(b"MSG ") or line.startswith(b"HMSG "):
                received += 1
            elif line.startswith(b"PING"):
                writer.write(b"PONG\r\n")
        peer = peer or bool(await asyncio.to_thread(routes_on_nats_1))
        writer.close()
        return peer, received
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


async def rogue_routes(cluster, project, report):
    started = time.monotonic()
    peer, received = await rogue_route(cluster, project)
    if peer or received:
        log(f"FAILED: a nats-server without the route password became a peer "
            f"(routed: {peer}, room messages it received: {received})")
        sys.exit(1)
    nats_1 = cluster.containers("nats-1")[0]
    password = cluster.docker("exec", nats_1, "cat", "/config/route-password").strip()
    control_peer, control_received = await rogue_route(cluster, project, password)
    if not (control_peer and control_received):
        log(f"FAILED: the check cannot see a peer: with the route password the server routed: "
            f"{control_peer}, received {control_received} messages")
        sys.exit(1)
    report["rogue nats-server routes to nats-1:6222"] = {
        "without the password: peer, messages received": [peer, received],
        "with it (the check's control): peer, messages received": [control_peer, control_received],
        "took_s": round(time.monotonic() - started, 2),
    }
    log("a nats-server without the route password is refused; with it, it would be a peer")


async def node_faults(cluster, clients, since, report, project):
    """A killed Natter container, a NATS node off the network, a rolling restart of
    every node and a scale-out, each waited out by the clients."""
    natter = cluster.containers("natter")
    log(f"natter containers: {len(natter)}; killing one")
    started = time.monotonic()
    cluster.docker("kill", natter[0])
    await asyncio.sleep(1)
    await settle(clients)
    report["docker kill natter"] = {**outage_summary(clients, since),
                                    "settled_s": round(time.monotonic() - started, 2)}
    cluster.docker("start", natter[0])
    await cluster.wait_healthy(natter[0])

    nats = cluster.containers("nats-2")[0]
    network = f"{project}_default"
    log("disconnecting nats-2 from the network")
    cluster.docker("network", "disconnect", network, nats)
    before = [len(c.seqs) for c in clients]
    await asyncio.sleep(6)
    during = min(len(c.seqs) - b for c, b in zip(clients, before))
    cluster.docker("network", "connect", "--alias", "nats-2", network, nats)
    await settle(clients)
    report["nats-2 off the network for 6 s"] = {
        **outage_summary(clients, since),
        "min_messages_delivered_per_client_meanwhile": during,
    }
    if during == 0:
        log("FAILED: messages stopped flowing while a NATS node was off the network")
        sys.exit(1)

    log("rolling restart of every natter node")
    started = time.monotonic()
    for container in cluster.containers("natter"):
        cluster.docker("restart", "-t", "20", container)
        await cluster.wait_healthy(container)
        await settle(clients)
    report["rolling restart"] = {**outage_summary(clients, since),
                                 "took_s": round(time.monotonic() - started, 2)}

    log("scaling out to 4 natter nodes")
    subprocess.run([*cluster.compose, "up", "-d", "--no-recreate", "--scale", "natter=4"],
                   check=True, capture_output=True)
    for container in cluster.containers("natter"):
        await cluster.wait_healthy(container)
    nodes, deadline = set(), time.monotonic() + 20
    while len(nodes) < 4 and time.monotonic() < deadline:
        # Concurrent requests, so least-connections balancing spreads them out.
        replies = await asyncio.gather(*(cluster.call("GET", "/readyz") for _ in range(12)))
        nodes.update(body["node_id"] for status, body in replies if status == 200)
        await asyncio.sleep(0.2)
    report["scale out to 4 (no file edited)"] = {"nodes_behind_the_balancer": len(nodes)}
    if len(nodes) != 4:
        log(f"FAILED: the balancer reached {len(nodes)} nodes after scaling to 4")
        sys.exit(1)


async def postgres_failover(cluster, clients, since, sent, report):
    """Kills the Patroni primary's container under traffic; times until sends are
    acknowledged again, then starts it again (it rejoins as a standby)."""
    # Patroni promotes only the synchronous standby: wait until there is one.
    deadline = time.monotonic() + 90
    while not await asyncio.to_thread(cluster.patroni_member, "sync"):
        if time.monotonic() > deadline:
            raise RuntimeError("no synchronous standby within 90 s")
        await asyncio.sleep(0.5)
    primary = await asyncio.to_thread(cluster.patroni_member, "primary")
    assert primary, "no Patroni member is primary"
    service, container = primary
    log(f"killing the Postgres primary ({service})")
    started = time.monotonic()
    cluster.docker("kill", container)
    while True:
        new = await asyncio.to_thread(cluster.patroni_member, "primary")
        if new and new[0] != service:
            break
        if time.monotonic() - started > 90:
            raise RuntimeError("no standby was promoted within 90 s")
        await asyncio.sleep(0.5)
    promoted = time.monotonic() - started
    before = len(sent)
    while len(sent) == before:
        if time.monotonic() - started > 120:
            raise RuntimeError("no send was acknowledged after the promotion")
        await asyncio.sleep(0.1)
    report["docker kill postgres primary"] = {
        "killed": service,
        "promoted": new[0],
        "promoted_after_s": round(promoted, 2),
        "writes_resumed_after_s": round(time.monotonic() - started, 2),
        **outage_summary(clients, since),
    }
    cluster.docker("start", container)
    await cluster.wait_healthy(container)
    await asyncio.sleep(3)


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--project", required=True)
    parser.add_argument("--compose", required=True, help="the compose command, shell-quoted")
    parser.add_argument("--ha", action="store_true", help="kill the Postgres primary instead")
    args = parser.parse_args()
    cluster = Cluster(args.port, args.project, shlex.split(args.compose))

    # The web client is the first thing a `docker compose up` user opens.
    page = await asyncio.to_thread(cluster.page, "/")
    script = await asyncio.to_thread(cluster.page, "/app.js")
    sdk = await asyncio.to_thread(cluster.page, "/natter.js")
    assert '<script src="/app.js"' in page and "./natter.js" in script and "since_seq" in sdk, "the web client"
    log("the web client is served through the load balancer")
    # SPEC §10: the balancer does not route /metrics; each node serves it on its own port.
    status, _ = await cluster.call("GET", "/metrics")
    assert status == 404, f"/metrics through the balancer: {status}"

    users = []
    for i in range(max(CLIENTS, SENDERS)):
        status, body = await cluster.call(
            "POST", "/v1/auth/register", body={"username": f"e2e{i}", "password": "password-e2e"})
        assert status == 201, status
        users.append({"name": f"e2e{i}", "token": body["token"]})
    status, room = await cluster.call(
        "POST", "/v1/rooms", users[0]["token"], {"name": "e2e", "kind": "public"})
    assert status == 201, status
    room = room["id"]
    await asyncio.to_thread(postgres_refuses_the_old_default, cluster)
    for user in users[1:]:
        status, _ = await cluster.call("POST", f"/v1/rooms/{room}/join", user["token"], {})
        assert status == 204, status

    stop_clients, stop_sender = asyncio.Event(), asyncio.Event()
    clients = [Client(cluster, u["name"], u["token"], room) for u in users[:CLIENTS]]
    client_tasks = [asyncio.create_task(c.run(stop_clients)) for c in clients]
    await asyncio.wait_for(asyncio.gather(*(c.subscribed.wait() for c in clients)), 30)
    sent, rest_errors = [], Counter()
    sending = asyncio.create_task(sender(cluster, users[:SENDERS], room, stop_sender, sent, rest_errors))
    report, since = {}, {c.name: 0 for c in clients}
    await asyncio.sleep(3)

    if args.ha:
        await postgres_failover(cluster, clients, since, sent, report)
    else:
        await node_faults(cluster, clients, since, report, args.project)
    await rogue_routes(cluster, args.project, report)

    await asyncio.sleep(2)
    stop_sender.set()
    await sending
    total = len(sent)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(c.last < total for c in clients):
        await asyncio.sleep(0.2)
    stop_clients.set()
    for task in client_tasks:
        task.cancel()
    await asyncio.gather(*client_tasks, return_exceptions=True)
    status, body = await cluster.call("GET", f"/v1/rooms/{room}", users[0]["token"])
    stored = body["last_seq"] if status == 200 else None
    if stored != total:
        log(f"FAILED: {total} sends acknowledged, the room holds {stored} messages")
        sys.exit(1)

    expected = list(range(1, total + 1))
    failures = 0
    per_client = {}
    for c in clients:
        counts = Counter(c.seqs)
        lost = sum(1 for s in expected if s not in counts)
        duplicated = sum(n - 1 for n in counts.values() if n > 1)
        reordered = sum(1 for a, b in zip(c.seqs, c.seqs[1:]) if b <= a)
        per_client[c.name] = {"lost": lost, "duplicated": duplicated, "reordered": reordered,
                              "closes": dict(c.close_codes)}
        failures += lost + duplicated + reordered
    result = {"messages": total, "faults": report, "rest_errors_retried": dict(rest_errors),
              "clients": per_client}
    print(json.dumps(result, indent=2))
    if failures:
        log(f"FAILED: {failures} lost, duplicated or reordered deliveries")
        sys.exit(1)
    # The clients opened their sockets with ?token= (the compatibility path): the
    # balancer's log has their requests, without the query string.
    lb_log = subprocess.run(["docker", "logs", cluster.containers("lb")[0]],
                            capture_output=True, text=True).stdout
    assert "/v1/ws" in lb_log, "the balancer logs requests"
    assert "token=" not in lb_log and users[0]["token"] not in lb_log, "a token in the balancer's log"
    # NATS's monitoring port is not reachable from other containers.
    monitor = subprocess.run(
        ["docker", "exec", cluster.containers("nats-1")[0], "wget", "-qO-", "-T", "2", "http://nats-2:8222/varz"],
        capture_output=True, text=True)
    assert monitor.returncode != 0, "nats-2's monitoring port answered another container"
    log(f"passed: {total} messages to {len(clients)} clients, none lost, duplicated or reordered")


asyncio.run(main())
