"""The client: REST calls, and one WebSocket for every room that resumes after any
disconnect without losing, repeating or reordering a message."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import random
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from ._errors import ApiError, ClosedError, ConnectionLost
from ._rest import Rest
from ._types import (
    DeletedEvent,
    EditedEvent,
    Event,
    Message,
    MessageEvent,
    PresenceEvent,
    ReactionEvent,
    ReadEvent,
    State,
    TypingEvent,
    UnsubscribedEvent,
)

log = logging.getLogger("natter")

TokenFunction = Callable[[], Awaitable[str]]
StateListener = Callable[[State], object]

# Close codes (docs/API.md): 1012 the node is draining (another is ready at once), 4001
# the token expired, 4008 this socket fell behind (resume with since_seq).
DRAINING = 1012
TOKEN_EXPIRED = 4001
# A socket that stayed open this long starts the next backoff from the beginning.
STABLE_AFTER_SECS = 5.0


@dataclass
class _PendingSend:
    room_id: str
    frame: dict[str, Any]
    future: asyncio.Future[Message]


class Natter:
    """A Natter client: `async with Natter(base_url, token=...) as natter:`.

    `token` is a string, or an async function returning one that is called again when
    the server closes the socket with 4001 (token expired) or a REST call answers 401.
    No token is needed for `rest.register` and `rest.login`.

    Every wait is bounded: `request_timeout` for HTTP requests and the socket's
    handshake, `ack_timeout` for an answer to a frame (a `send` included, across
    reconnects), `backoff_max` between reconnect attempts. Each room buffers at most
    `event_queue_size` events: past that its messages are fetched again (from the last
    one delivered) once the application has read half of them.
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | TokenFunction | None = None,
        request_timeout: float = 10.0,
        ack_timeout: float = 30.0,
        backoff_base: float = 0.25,
        backoff_max: float = 10.0,
        event_queue_size: int = 1000,
        max_pending_sends: int = 256,
        ping_interval: float = 20.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        if isinstance(token, str) or token is None:
            self._token_fn: TokenFunction | None = None
            self._token: str | None = token
        else:
            self._token_fn = token
            self._token = None
        self._request_timeout = request_timeout
        self._ack_timeout = ack_timeout
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._event_queue_size = event_queue_size
        self._ping_interval = ping_interval
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=request_timeout)
        self.rest = Rest(self._http, self._get_token)
        self._rooms: dict[str, Room] = {}
        self._listeners: list[StateListener] = []
        self._state: State = "closed"
        self._ws: ClientConnection | None = None
        self._runner: asyncio.Task[None] | None = None
        self._closing = False
        self._close_called = False
        self._closed = asyncio.Event()
        self._token_stale = False
        self._token_lock = asyncio.Lock()
        self._pending: dict[str, _PendingSend] = {}
        self._send_slots = asyncio.Semaphore(max_pending_sends)
        self._subscribing: deque[Room] = deque()
        self._waiters: dict[str, deque[tuple[str, asyncio.Future[None]]]] = {
            "typing": deque(),
            "read_upto": deque(),
        }
        self._tasks: set[asyncio.Task[Any]] = set()
        #: The URL of the current (or last) socket: it carries a single-use ticket.
        self.socket_url: str | None = None
        #: How many sockets this client opened so far.
        self.connections = 0
        #: The close code of the last socket that closed (1006: the connection broke).
        self.last_close_code: int | None = None

    # Lifecycle

    async def __aenter__(self) -> Natter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def state(self) -> State:
        return self._state

    def on(self, event: Literal["state"], listener: StateListener) -> Callable[[], None]:
        """Calls `listener(state)` on each change of the connection's state
        (`connecting`, `open`, `reconnecting`, `closed`); returns a function that
        removes it."""
        if event != "state":
            raise ValueError(f"unknown event {event!r}: only 'state'")
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def room(self, room_id: str) -> Room:
        """The handle of a room (the same one for each call with that id)."""
        room = self._rooms.get(room_id)
        if room is None:
            room = self._rooms[room_id] = Room(self, room_id, self._event_queue_size)
        return room

    async def connect(self) -> None:
        """Opens the socket now (it opens by itself on a room's first use) and waits,
        bounded, until it is open."""
        self._ensure_running()
        deadline = asyncio.get_running_loop().time() + self._ack_timeout
        while self._state != "open":
            if self._closing:
                raise ClosedError("the client is closed")
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("the socket did not open in time")
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        """Closes the socket (code 1000, not reconnected) and the HTTP client; pending
        sends fail with `ClosedError`."""
        if self._close_called:
            return
        self._close_called = True
        self._closing = True
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(1000), 2)
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(BaseException):
                await self._runner
        for task in list(self._tasks):
            task.cancel()
        self._fail_all(ClosedError("the client is closed"))
        self._closed.set()
        self._set_state("closed")
        await self._http.aclose()

    # Tokens

    async def _get_token(self, refresh: bool = False) -> str | None:
        if self._token_fn is None:
            return self._token
        async with self._token_lock:
            if refresh or self._token is None:
                self._token = await asyncio.wait_for(self._token_fn(), self._request_timeout)
            return self._token

    # The socket

    def _ensure_running(self) -> None:
        if self._closing:
            raise ClosedError("the client is closed")
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self._run())

    def _set_state(self, state: State) -> None:
        if state == self._state:
            return
        self._state = state
        for listener in list(self._listeners):
            try:
                result = listener(state)
                if inspect.isawaitable(result):
                    self._spawn(result)
            except Exception:
                log.exception("a state listener failed")

    def _spawn(self, awaitable: Awaitable[Any]) -> None:
        async def run() -> None:
            await awaitable

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with full jitter: uniform in [0, min(max, base * 2^n)]."""
        return random.uniform(0, min(self._backoff_max, self._backoff_base * 2**attempt))

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closed.wait(), seconds)

    async def _open_socket(self) -> ClientConnection:
        if self._token_fn is None and self._token is None:
            raise ClosedError("a token is needed to open the socket")
        if self._token_stale:
            await self._get_token(refresh=True)
            self._token_stale = False
        ticket = (await self.rest.create_ws_ticket())["ticket"]
        scheme = "wss" if self.base_url.startswith("https:") else "ws"
        url = f"{scheme}:{self.base_url.split(':', 1)[1]}/v1/ws?ticket={quote(ticket, safe='')}"
        ws = await connect(
            url,
            open_timeout=self._request_timeout,
            ping_interval=self._ping_interval,
            ping_timeout=self._ping_interval,
            close_timeout=2,
            max_queue=64,
        )
        self.socket_url = url
        self.connections += 1
        return ws

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        attempt = 0
        self._set_state("connecting")
        while not self._closing:
            try:
                ws = await self._open_socket()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if self._token_fn is None and isinstance(error, ApiError) and error.status == 401:
                    return await self._give_up(ClosedError("the token expired"))
                if isinstance(error, ClosedError):
                    return await self._give_up(error)
                log.info("natter: could not open the socket: %r", error)
                self._set_state("reconnecting")
                await self._pause(self._backoff(attempt))
                attempt += 1
                continue
            opened_at = loop.time()
            self._ws = ws
            self._set_state("open")
            try:
                await self._on_open(ws)
                async for raw in ws:
                    self._on_frame(raw)
            except ConnectionClosed:
                pass
            finally:
                self._ws = None
                self._on_socket_lost()
            if self._closing:
                return
            code = ws.close_code
            self.last_close_code = code
            log.info("natter: socket closed with %s", code)
            if loop.time() - opened_at > STABLE_AFTER_SECS:
                attempt = 0
            if code == TOKEN_EXPIRED:
                if self._token_fn is None:
                    return await self._give_up(ClosedError("the token expired (4001)"))
                self._token_stale = True
            self._set_state("reconnecting")
            if code == DRAINING and attempt == 0:
                # Another node is ready at once; a little jitter spreads the herd.
                await self._pause(random.uniform(0, 0.2))
            else:
                await self._pause(self._backoff(attempt))
            attempt += 1

    async def _give_up(self, error: Exception) -> None:
        self._closing = True
        self._fail_all(error)
        self._closed.set()
        self._set_state("closed")

    def _fail_all(self, error: Exception) -> None:
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(error)
        for room in self._rooms.values():
            room._fail_waiters(error)
        for waiters in self._waiters.values():
            while waiters:
                _, future = waiters.popleft()
                if not future.done():
                    future.set_exception(error)

    async def _on_open(self, ws: ClientConnection) -> None:
        """Re-subscribes each room from the last `seq` it delivered, then sends again
        every `send` not yet acknowledged, with its `client_msg_id`."""
        for room in self._rooms.values():
            if room._wanted:
                room._overflow = False
                self._subscribing.append(room)
                await ws.send(json.dumps(room._subscribe_frame()))
        for pending in list(self._pending.values()):
            await ws.send(json.dumps(pending.frame))

    def _on_socket_lost(self) -> None:
        self._subscribing.clear()
        for waiters in self._waiters.values():
            while waiters:
                _, future = waiters.popleft()
                if not future.done():
                    future.set_exception(ConnectionLost("the socket closed"))

    async def _send_frame(self, frame: dict[str, Any]) -> bool:
        ws = self._ws
        if ws is None:
            return False
        try:
            await ws.send(json.dumps(frame))
        except ConnectionClosed:
            return False
        return True

    def _on_frame(self, raw: str | bytes) -> None:
        try:
            frame = json.loads(raw)
            kind = frame["type"]
        except (ValueError, KeyError, TypeError):
            log.warning("natter: a frame that is not JSON with a type")
            return
        room = self._rooms.get(frame.get("room_id") or "")
        if kind in ("message", "message_edited"):
            message: Message = frame["message"]
            room = self._rooms.get(message["room_id"])
            if room is not None:
                if kind == "message":
                    room._on_message(message)
                else:
                    room._push(EditedEvent(room.id, message))
        elif kind == "send_ack":
            pending = self._pending.pop(frame.get("client_msg_id") or "", None)
            if pending is not None and not pending.future.done():
                pending.future.set_result(frame["message"])
        elif kind == "subscribed" and room is not None:
            with contextlib.suppress(ValueError):
                self._subscribing.remove(room)
            room._on_subscribed(int(frame["last_seq"]))
        elif kind == "unsubscribed" and room is not None:
            room._on_unsubscribed(frame.get("reason"))
        elif kind in ("typing_ack", "read_ack"):
            self._answer("typing" if kind == "typing_ack" else "read_upto", frame["room_id"])
        elif kind == "error":
            self._on_error(frame)
        elif room is not None:
            event: Event | None = None
            if kind == "message_deleted":
                event = DeletedEvent(room.id, frame["message_id"], int(frame["seq"]))
            elif kind == "reaction":
                event = ReactionEvent(
                    room.id, frame["message_id"], frame["emoji"], frame["user_id"], frame["added"]
                )
            elif kind == "typing":
                event = TypingEvent(room.id, frame["user_id"], bool(frame["value"]))
            elif kind == "read":
                event = ReadEvent(room.id, frame["user_id"], int(frame["seq"]))
            elif kind == "presence":
                event = PresenceEvent(room.id, frame["user_id"], frame["status"])
            if event is not None:
                room._push(event)

    def _answer(self, kind: str, room_id: str, error: Exception | None = None) -> None:
        waiters = self._waiters[kind]
        for index, (waiting_room, future) in enumerate(waiters):
            if waiting_room == room_id or error is not None:
                del waiters[index]
                if not future.done():
                    if error is None:
                        future.set_result(None)
                    else:
                        future.set_exception(error)
                return

    def _on_error(self, frame: dict[str, Any]) -> None:
        ref = frame.get("ref")
        error = ApiError(0, str(frame.get("code")), str(frame.get("message")))
        pending = self._pending.get(ref or "")
        if pending is not None:
            if error.code == "unavailable":
                # Safe to retry: the client_msg_id keeps it from being stored twice.
                self._spawn(self._resend_later(pending))
                return
            del self._pending[ref or ""]
            if not pending.future.done():
                pending.future.set_exception(error)
        elif ref == "subscribe" and self._subscribing:
            room = self._subscribing.popleft()
            room._wanted = False
            room._fail_waiters(error)
        elif ref in self._waiters:
            self._answer(ref, "", error)
        else:
            log.warning("natter: error frame %s: %s", error.code, error.message)

    async def _resend_later(self, pending: _PendingSend) -> None:
        await self._pause(random.uniform(0.2, 1.0))
        if self._pending.get(pending.frame["client_msg_id"]) is pending:
            await self._send_frame(pending.frame)

    async def _send(self, frame: dict[str, Any]) -> Message:
        client_msg_id: str = frame["client_msg_id"]
        existing = self._pending.get(client_msg_id)
        if existing is not None:
            return await asyncio.wait_for(asyncio.shield(existing.future), self._ack_timeout)
        self._ensure_running()
        await asyncio.wait_for(self._send_slots.acquire(), self._ack_timeout)
        try:
            future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
            pending = _PendingSend(frame["room_id"], frame, future)
            self._pending[client_msg_id] = pending
            await self._send_frame(frame)
            return await asyncio.wait_for(asyncio.shield(future), self._ack_timeout)
        finally:
            if self._pending.get(client_msg_id) is pending:
                del self._pending[client_msg_id]
            self._send_slots.release()

    async def _ask(self, kind: str, frame: dict[str, Any]) -> None:
        """Sends a `typing` or `read_upto` frame and waits for its ack."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[kind].append((frame["room_id"], future))
        if not await self._send_frame(frame):
            with contextlib.suppress(ValueError):
                self._waiters[kind].remove((frame["room_id"], future))
            raise ConnectionLost("the socket is not open")
        await asyncio.wait_for(asyncio.shield(future), self._ack_timeout)


class Room:
    """A room's handle: `natter.room(room_id)`."""

    def __init__(self, natter: Natter, room_id: str, queue_size: int) -> None:
        self._natter = natter
        self.id = room_id
        #: The `seq` of the last message delivered (or the position subscribed at).
        self.last_seq: int | None = None
        self._queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=queue_size)
        self._wanted = False
        self._overflow = False
        self._subscribe_waiters: list[asyncio.Future[int]] = []
        self._unsubscribe_waiters: list[asyncio.Future[None]] = []

    def _subscribe_frame(self) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": "subscribe", "room_id": self.id}
        if self.last_seq is not None:
            frame["since_seq"] = self.last_seq
        return frame

    async def subscribe(self, since_seq: int | None = None) -> int:
        """Subscribes (and stays subscribed across reconnects): messages after
        `since_seq` are replayed first, then live events follow. Returns the room's
        live position (`subscribed.last_seq`)."""
        natter = self._natter
        natter._ensure_running()
        if since_seq is not None:
            self.last_seq = since_seq
        self._wanted = True
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._subscribe_waiters.append(future)
        if natter._ws is not None:
            natter._subscribing.append(self)
            await natter._send_frame(self._subscribe_frame())
        return await asyncio.wait_for(asyncio.shield(future), natter._ack_timeout)

    async def unsubscribe(self) -> None:
        """Ends the subscription; the room is no longer re-subscribed."""
        self._wanted = False
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._unsubscribe_waiters.append(future)
        if await self._natter._send_frame({"type": "unsubscribe", "room_id": self.id}):
            with contextlib.suppress(ConnectionLost):
                await asyncio.wait_for(asyncio.shield(future), self._natter._ack_timeout)

    async def send(
        self,
        text: str,
        client_msg_id: str | None = None,
        reply_to: str | None = None,
        attachment_ids: list[str] | None = None,
    ) -> Message:
        """Sends a message and returns it as stored. Until it is acknowledged it is sent
        again, with the same `client_msg_id`, after each reconnect: it is stored once
        and this resolves once.

        The socket's `send` frame carries only text; a reply or attachments go over
        REST (also idempotent by `client_msg_id`), retried on a failed connection."""
        client_msg_id = client_msg_id or str(uuid.uuid4())
        if reply_to is not None or attachment_ids is not None:
            return await self._send_over_rest(text, client_msg_id, reply_to, attachment_ids)
        frame = {"type": "send", "room_id": self.id, "text": text, "client_msg_id": client_msg_id}
        return await self._natter._send(frame)

    async def _send_over_rest(
        self,
        text: str,
        client_msg_id: str,
        reply_to: str | None,
        attachment_ids: list[str] | None,
    ) -> Message:
        natter = self._natter
        body: dict[str, Any] = {"text": text, "client_msg_id": client_msg_id}
        if reply_to is not None:
            body["reply_to"] = reply_to
        if attachment_ids is not None:
            body["attachment_ids"] = attachment_ids
        loop = asyncio.get_running_loop()
        deadline = loop.time() + natter._ack_timeout
        attempt = 0
        while True:
            try:
                message = await natter.rest._call("send_message", {"room_id": self.id}, body=body)
                return message  # type: ignore[no-any-return]
            except (httpx.TransportError, ApiError) as error:
                retry = not isinstance(error, ApiError) or error.status in (502, 503, 504)
                if not retry or loop.time() > deadline:
                    raise
            await natter._pause(natter._backoff(attempt))
            attempt += 1

    async def typing(self, value: bool) -> None:
        """Tells the room this user is (or stopped) typing; nothing while the socket is
        down (typing is ephemeral)."""
        if self._natter._ws is None:
            return
        with contextlib.suppress(ConnectionLost):
            await self._natter._ask(
                "typing", {"type": "typing", "room_id": self.id, "value": value}
            )

    async def mark_read(self, seq: int) -> None:
        """Moves this user's read watermark to `seq` (over the socket, or REST while the
        socket is down)."""
        frame = {"type": "read_upto", "room_id": self.id, "seq": seq}
        try:
            await self._natter._ask("read_upto", frame)
        except ConnectionLost:
            await self._natter.rest.mark_read(self.id, seq)

    async def events(self) -> AsyncIterator[Event]:
        """The room's events, until the client closes: `message` (each `seq` once, in
        order), `edited`, `deleted`, `reaction`, `typing`, `read`, `presence`,
        `unsubscribed`."""
        closed = self._natter._closed
        while True:
            if not self._queue.empty():
                event = self._queue.get_nowait()
            elif closed.is_set():
                return
            else:
                getter = asyncio.ensure_future(self._queue.get())
                closer = asyncio.ensure_future(closed.wait())
                try:
                    await asyncio.wait({getter, closer}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    closer.cancel()
                    if not getter.done():
                        getter.cancel()
                if getter.cancelled() or not getter.done():
                    continue
                event = getter.result()
            self._after_get()
            yield event

    # Frames from the socket

    def _push(self, event: Event) -> None:
        # Events other than messages are at most once (docs/API.md): when the
        # application is this far behind, they are dropped.
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(event)

    def _on_message(self, message: Message) -> None:
        seq = int(message["seq"])
        if not self._wanted or self._overflow:
            return
        if self.last_seq is not None and seq <= self.last_seq:
            return  # a duplicate, or older than what was delivered
        try:
            self._queue.put_nowait(MessageEvent(self.id, message))
        except asyncio.QueueFull:
            # Delivered later from last_seq, once the application catches up.
            self._overflow = True
            return
        self.last_seq = seq

    def _after_get(self) -> None:
        if self._overflow and self._queue.qsize() <= self._queue.maxsize // 2 and self._wanted:
            natter = self._natter
            if natter._ws is not None:
                self._overflow = False
                natter._subscribing.append(self)
                natter._spawn(natter._send_frame(self._subscribe_frame()))

    def _on_subscribed(self, last_seq: int) -> None:
        if self.last_seq is None:
            self.last_seq = last_seq
        for future in self._subscribe_waiters:
            if not future.done():
                future.set_result(last_seq)
        self._subscribe_waiters.clear()

    def _on_unsubscribed(self, reason: str | None) -> None:
        if reason is not None:
            self._wanted = False
        for future in self._unsubscribe_waiters:
            if not future.done():
                future.set_result(None)
        self._unsubscribe_waiters.clear()
        self._push(UnsubscribedEvent(self.id, reason))

    def _fail_waiters(self, error: Exception) -> None:
        waiters: list[asyncio.Future[Any]] = [*self._subscribe_waiters, *self._unsubscribe_waiters]
        for future in waiters:
            if not future.done():
                future.set_exception(error)
        self._subscribe_waiters.clear()
        self._unsubscribe_waiters.clear()
