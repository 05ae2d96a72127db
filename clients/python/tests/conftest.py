"""Shared helpers for the SDK's tests. They run against real Natter nodes (on a real
Postgres and NATS), named by environment variables that `tests/api/python_sdk.rs` sets:

- `NATTER_SDK_NODES`: comma-separated base URLs of nodes on one database;
- `NATTER_SDK_KILL_PID` / `NATTER_SDK_DRAIN_PID`: pids of two of those nodes (the first
  and second URL) that a test may SIGKILL and SIGTERM;
- `NATTER_SDK_SHORT_TOKEN_URL`: a node of that cluster whose tokens live 3 s;
- `NATTER_SDK_SLOW_URL`: a node of that cluster that closes a socket 64 events behind.

A test whose variables are missing fails: nothing is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import pytest

T = TypeVar("T")

PASSWORD = "correct horse battery"


def env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run these tests through `tests/api/python_sdk.rs`")
    return value


def nodes() -> list[str]:
    return env("NATTER_SDK_NODES").split(",")


def run(coroutine: Coroutine[Any, Any, T], limit: float = 60.0) -> T:
    """Runs one test's coroutine, bounded."""
    return asyncio.run(asyncio.wait_for(coroutine, limit))


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


async def register(base_url: str, prefix: str = "u") -> dict[str, Any]:
    """A new user on the node at `base_url`: its session (`user`, `token`)."""
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        name = unique(prefix)
        reply = await http.post("/v1/auth/register", json={"username": name, "password": PASSWORD})
        assert reply.status_code == 201, reply.text
        session: dict[str, Any] = reply.json()
        return session


async def wait_until(predicate: Any, limit: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what}: not within {limit} s")
        await asyncio.sleep(0.02)


@dataclass(eq=False)
class _Link:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    backend: int
    muted: bool = False
    flowing: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Balancer:
    """A tiny round-robin TCP balancer in front of the nodes, as a load balancer would
    be: a connection goes to the next allowed node that accepts it. Tests choose which
    nodes are allowed, mute a connection's server-to-client direction (its bytes are
    dropped, as a lost ack would be) and cut every connection."""

    backends: list[str]
    allowed: list[int] = field(default_factory=list)
    small_buffers: bool = False
    links: set[_Link] = field(default_factory=set)
    _next: int = 0
    _server: asyncio.Server | None = None

    async def start(self) -> str:
        if not self.allowed:
            self.allowed = list(range(len(self.backends)))
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()

    def mute(self) -> None:
        for link in self.links:
            link.muted = True

    def pause(self) -> None:
        """Stops reading from the nodes on current connections: the node's socket
        writes block, as a slow reader's would (with `small_buffers`, soon)."""
        for link in self.links:
            link.flowing.clear()

    def resume(self) -> None:
        for link in self.links:
            link.flowing.set()

    def cut(self) -> None:
        for link in list(self.links):
            link.client.transport.abort()
            link.upstream.transport.abort()
        self.links.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = None
        for _ in range(len(self.allowed)):
            index = self.allowed[self._next % len(self.allowed)]
            self._next += 1
            address = urlsplit(self.backends[index])
            try:
                sock = socket.socket()
                if self.small_buffers:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.setblocking(False)
                await asyncio.wait_for(
                    asyncio.get_running_loop().sock_connect(sock, (address.hostname, address.port)),
                    2,
                )
                upstream = await asyncio.open_connection(sock=sock)
                break
            except (OSError, TimeoutError):
                sock.close()
                continue
        if upstream is None:
            writer.transport.abort()
            return
        up_reader, up_writer = upstream
        link = _Link(writer, up_writer, index)
        link.flowing.set()
        self.links.add(link)

        async def pipe(
            source: asyncio.StreamReader, sink: asyncio.StreamWriter, down: bool
        ) -> None:
            with contextlib.suppress(Exception):
                while True:
                    if down:
                        await link.flowing.wait()
                    data = await source.read(65536)
                    if not data:
                        break
                    if down and link.muted:
                        continue
                    sink.write(data)
                    await sink.drain()
            sink.transport.abort()

        try:
            await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True))
        finally:
            self.links.discard(link)


# Every frame the SDK receives in these tests is checked against the node's AsyncAPI
# document (SPEC §13), as tests/api/frame_schema.rs checks the Rust tests' sockets: the
# SDK's own sockets see frames (tickets, resumes after kills and 4008s) no other test does.
_frame_problems: list[str] = []
_frame_validators: dict[str, Any] = {}


def _check_frame(raw: str | bytes) -> None:
    import json

    from jsonschema import Draft7Validator

    if not _frame_validators:
        document = httpx.get(nodes()[0] + "/asyncapi.json", timeout=10).json()
        (channel,) = [name for name, c in document["channels"].items() if c["address"] == "/v1/ws"]
        for operation in document["operations"].values():
            if operation["action"] != "send" or not operation["channel"]["$ref"].endswith(
                "/" + channel
            ):
                continue
            for ref in operation["messages"]:
                key = ref["$ref"].rsplit("/", 1)[-1]
                message = document["channels"][channel]["messages"][key]["$ref"]
                name = document["components"]["messages"][message.rsplit("/", 1)[-1]]["name"]
                root = {"$ref": message + "/payload", "components": document["components"]}
                _frame_validators[name] = Draft7Validator(root)
    frame = json.loads(raw)
    validator = _frame_validators.get(frame.get("type"))
    if validator is None:
        _frame_problems.append(f"no message for type {frame.get('type')!r}: {raw!r:.300}")
        return
    for error in validator.iter_errors(frame):
        _frame_problems.append(f"{frame['type']}: {list(error.absolute_path)} {error.message:.300}")


@pytest.fixture(autouse=True)
def every_received_frame_matches_the_asyncapi_document(monkeypatch: pytest.MonkeyPatch) -> Any:
    from natter import _client

    receive = _client.Natter._on_frame

    def checked(self: Any, raw: str | bytes) -> None:
        _check_frame(raw)
        receive(self, raw)

    monkeypatch.setattr(_client.Natter, "_on_frame", checked)
    yield
    problems = list(_frame_problems)
    _frame_problems.clear()
    assert not problems, "frames that do not match /asyncapi.json:\n" + "\n".join(problems)
