"""The SDK against real nodes: REST and socket flows, one ticket-opened socket for
several rooms, resume after a killed and a drained node, a lost ack, and 4001."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from conftest import PASSWORD, Balancer, env, nodes, register, run, unique, wait_until

from natter import (
    ApiError,
    DeletedEvent,
    EditedEvent,
    Event,
    MessageEvent,
    Natter,
    PresenceEvent,
    ReactionEvent,
    ReadEvent,
    Room,
    TypingEvent,
    UnsubscribedEvent,
)


class Collector:
    """Reads a room's events in the background."""

    def __init__(self, room: Room) -> None:
        self.events: list[Event] = []
        self._task = asyncio.ensure_future(self._read(room.events()))

    async def _read(self, events: AsyncIterator[Event]) -> None:
        async for event in events:
            self.events.append(event)

    def seqs(self) -> list[int]:
        return [e.message["seq"] for e in self.events if isinstance(e, MessageEvent)]

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    async def first(self, kind: type, limit: float = 10.0) -> Any:
        await wait_until(lambda: self.of(kind), limit, f"a {kind.__name__}")
        return self.of(kind)[0]

    def stop(self) -> None:
        self._task.cancel()


async def _flow() -> None:
    base = nodes()[0]
    async with Natter(base) as anonymous:
        alice_session = await anonymous.rest.register(unique("alice"), PASSWORD, "Alice")
        bob_name = unique("bob")
        await anonymous.rest.register(bob_name, PASSWORD)
        bob_session = await anonymous.rest.login(bob_name, PASSWORD)
        with pytest.raises(ApiError) as refused:
            await anonymous.rest.get_me()
        assert refused.value.status == 401 and refused.value.code == "unauthorized"
    alice_id, bob_id = alice_session["user"]["id"], bob_session["user"]["id"]

    states: list[str] = []
    alice = Natter(base, token=alice_session["token"])
    alice.on("state", states.append)

    async def bob_token() -> str:
        return bob_session["token"]

    async with alice, Natter(base, token=bob_token) as bob:
        assert (await alice.rest.get_me())["id"] == alice_id
        assert (await alice.rest.get_user(bob_id))["username"] == bob_name
        room = await alice.rest.create_room(unique("flow"), "public")
        await bob.rest.join_room(room["id"])
        assert (await bob.rest.get_room(room["id"]))["member_count"] == 2
        members = await alice.rest.list_members(room["id"], limit=10)
        assert {m["user_id"] for m in members["members"]} == {alice_id, bob_id}
        assert room["id"] in {r["id"] for r in (await bob.rest.list_rooms(limit=200))["rooms"]}

        alice_room, bob_room = alice.room(room["id"]), bob.room(room["id"])
        assert alice.room(room["id"]) is alice_room
        alice_events, bob_events = Collector(alice_room), Collector(bob_room)
        assert await alice_room.subscribe() == 0
        assert await bob_room.subscribe(since_seq=0) == 0
        assert states == ["connecting", "open"]
        presence = await alice_events.first(PresenceEvent)
        assert presence.status == "joined"

        sent = await alice_room.send("hello bob", client_msg_id="flow-1")
        assert sent["seq"] == 1 and sent["client_msg_id"] == "flow-1"
        assert sent["sender_id"] == alice_id and sent["text"] == "hello bob"
        again = await alice_room.send("hello bob", client_msg_id="flow-1")
        assert again["id"] == sent["id"], "the same client_msg_id is the same message"
        first = await bob_events.first(MessageEvent)
        assert first.message["id"] == sent["id"]

        reply = await bob_room.send("hi alice", reply_to=sent["id"])
        assert reply["reply_to"] == sent["id"] and reply["seq"] == 2

        await bob_room.typing(True)
        typing = await alice_events.first(TypingEvent)
        assert (typing.user_id, typing.value) == (bob_id, True)
        await bob_room.mark_read(2)
        read = await alice_events.first(ReadEvent)
        assert (read.user_id, read.seq) == (bob_id, 2)

        edited = await alice.rest.edit_message(room["id"], sent["id"], "hello, bob")
        assert edited["edited_at"] is not None
        assert (await bob_events.first(EditedEvent)).message["text"] == "hello, bob"
        reacted = await bob.rest.add_reaction(room["id"], sent["id"], "👍")
        assert reacted["reactions"][0]["emoji"] == "👍"
        reaction = await alice_events.first(ReactionEvent)
        assert (reaction.user_id, reaction.emoji, reaction.added) == (bob_id, "👍", True)
        await bob.rest.remove_reaction(room["id"], sent["id"], "👍")
        deleted = await alice.rest.delete_message(room["id"], sent["id"])
        assert deleted["deleted"] and deleted["text"] == ""
        assert (await bob_events.first(DeletedEvent)).message_id == sent["id"]

        page = await bob.rest.list_messages(room["id"], limit=10)
        assert [m["seq"] for m in page["messages"]] == [1, 2]
        found = await bob.rest.search_messages(room["id"], "alice")
        assert [m["seq"] for m in found["messages"]] == [2]
        await alice.rest.mark_read(room["id"], 2)
        mine = await alice.rest.list_my_rooms()
        assert any(r["id"] == room["id"] and r["last_read_seq"] == 2 for r in mine["rooms"])
        online = await alice.rest.list_online_users(limit=200)
        assert alice_id in {u["id"] for u in online["users"]}
        here = await alice.rest.list_room_presence(room["id"])
        assert {u["id"] for u in here["users"]} >= {alice_id, bob_id}
        assert (await alice.rest.create_ws_ticket())["ticket"]

        renamed = await alice.rest.rename_room(room["id"], "renamed")
        assert renamed["name"] == "renamed"
        private = await alice.rest.create_room(unique("private"), "private")
        await alice.rest.add_member(private["id"], bob_id)
        await alice.rest.remove_member(private["id"], bob_id)
        direct = await alice.rest.open_direct_room(bob_id)
        assert direct["kind"] == "direct"

        bot = await alice.rest.create_bot(unique("bot"), "Bot")
        assert bot["user"]["bot"] and bot["token"].startswith("ntb_")
        assert bot["user"]["id"] in {
            b["user"]["id"] for b in (await alice.rest.list_bots())["bots"]
        }
        replaced = await alice.rest.replace_bot_token(bot["user"]["id"])
        assert replaced["token"] != bot["token"]
        await alice.rest.delete_bot(bot["user"]["id"])

        hook = await alice.rest.create_webhook(room["id"], "http://127.0.0.1:9/hook")
        assert hook["secret"].startswith("whsec_")
        assert [w["id"] for w in (await alice.rest.list_webhooks(room["id"]))["webhooks"]] == [
            hook["id"]
        ]
        rotated = await alice.rest.rotate_webhook_secret(room["id"], hook["id"])
        assert rotated["secret"] != hook["secret"]
        await alice.rest.replay_webhook(room["id"], hook["id"], 1)
        assert "state" in await alice.rest.list_webhook_deliveries(room["id"], hook["id"], 5)
        await alice.rest.delete_webhook(room["id"], hook["id"])

        await bob_room.unsubscribe()
        assert (await bob_events.first(UnsubscribedEvent)).reason is None
        await bob.rest.leave_room(room["id"])
        await alice.rest.delete_room(room["id"])
        # Alice's subscription ends with the room.
        gone = await alice_events.first(UnsubscribedEvent)
        assert gone.reason == "room_deleted"
        assert alice_events.seqs() == [1, 2] and bob_events.seqs() == [1, 2]
        alice_events.stop()
        bob_events.stop()
    assert states[-1] == "closed"
    assert alice.connections == 1


def test_a_full_rest_and_socket_flow() -> None:
    run(_flow())


async def _one_socket() -> None:
    base = nodes()[0]
    owner, other = await register(base, "owner"), await register(base, "other")
    async with Natter(base, token=owner["token"]) as natter, Natter(base, token=other["token"]):
        rooms = [await natter.rest.create_room(unique("r"), "public") for _ in range(3)]
        collectors = {}
        for room in rooms:
            collectors[room["id"]] = Collector(natter.room(room["id"]))
            await natter.room(room["id"]).subscribe()
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            auth = {"authorization": f"Bearer {other['token']}"}
            for room in rooms:
                reply = await http.post(f"/v1/rooms/{room['id']}/join", headers=auth)
                assert reply.status_code == 204
                for n in range(3):
                    reply = await http.post(
                        f"/v1/rooms/{room['id']}/messages", headers=auth, json={"text": f"m{n}"}
                    )
                    assert reply.status_code == 201
        for room in rooms:
            collector = collectors[room["id"]]
            await wait_until(lambda c=collector: len(c.seqs()) == 3, 10, "three messages a room")
            assert collector.seqs() == [1, 2, 3]
            assert {e.room_id for e in collector.events} == {room["id"]}
        assert natter.connections == 1, "one socket for every room"
        url = natter.socket_url or ""
        assert "/v1/ws?ticket=" in url, url
        assert "token=" not in url and owner["token"] not in url, url


def test_one_socket_for_several_rooms_is_opened_with_a_ticket() -> None:
    run(_one_socket())


async def _failover() -> None:
    urls = nodes()
    kill_pid, drain_pid = int(env("NATTER_SDK_KILL_PID")), int(env("NATTER_SDK_DRAIN_PID"))
    survivor = urls[2]
    balancer = Balancer(urls, allowed=[0])
    front = await balancer.start()
    reader, writer = await register(survivor, "reader"), await register(survivor, "writer")
    token_calls = 0

    async def token() -> str:
        nonlocal token_calls
        token_calls += 1
        return str(reader["token"])

    states: list[str] = []
    async with (
        Natter(front, token=token, backoff_base=0.05, backoff_max=0.5) as natter,
        httpx.AsyncClient(base_url=survivor, timeout=10) as http,
    ):
        natter.on("state", states.append)
        auth = {"authorization": f"Bearer {writer['token']}"}
        rooms = []
        for _ in range(2):
            reply = await http.post(
                "/v1/rooms", headers=auth, json={"name": unique("f"), "kind": "public"}
            )
            rooms.append(reply.json()["id"])
            await natter.rest.join_room(rooms[-1])
        collectors = {room: Collector(natter.room(room)) for room in rooms}
        for room in rooms:
            await natter.room(room).subscribe()
        assert balancer.links and {link.backend for link in balancer.links} == {0}

        total = 80
        sent: dict[str, list[int]] = {room: [] for room in rooms}

        async def write() -> None:
            for n in range(total):
                room = rooms[n % 2]
                reply = await http.post(
                    f"/v1/rooms/{room}/messages", headers=auth, json={"text": f"w{n}"}
                )
                assert reply.status_code == 201, reply.text
                sent[room].append(reply.json()["seq"])
                await asyncio.sleep(0.02)

        writing = asyncio.ensure_future(write())
        await wait_until(lambda: len(collectors[rooms[0]].seqs()) >= 5, 10, "live messages")
        # The node under the socket dies mid-conversation; the balancer sends the
        # reconnect to the drainable node. The SDK's own sends during the outage wait
        # and go once the socket is back.
        balancer.allowed = []
        os.kill(kill_pid, signal.SIGKILL)
        own = [asyncio.ensure_future(natter.room(rooms[0]).send(f"own {n}")) for n in range(3)]
        # No node takes the reconnect until the writer has sent more during the outage.
        at_kill = sum(map(len, sent.values()))
        await wait_until(lambda: sum(map(len, sent.values())) >= at_kill + 6, 10, "outage")
        assert natter.state == "reconnecting"
        balancer.allowed = [1]
        await wait_until(
            lambda: natter.connections >= 2 and natter.state == "open", 15, "reconnected"
        )
        assert {link.backend for link in balancer.links} <= {1}
        await asyncio.sleep(0.3)
        # That node is drained (SIGTERM: sockets closed with 1012); the next one is the
        # survivor.
        balancer.allowed = []
        os.kill(drain_pid, signal.SIGTERM)
        at_drain = sum(map(len, sent.values()))
        await wait_until(lambda: sum(map(len, sent.values())) >= at_drain + 6, 10, "outage")
        balancer.allowed = [2]
        await writing
        stored = await asyncio.gather(*own)
        await wait_until(
            lambda: natter.connections >= 3 and natter.state == "open", 15, "reconnected twice"
        )
        for room in rooms:
            page = await natter.rest.list_messages(room, limit=200)
            last = page["messages"][-1]["seq"]
            collector = collectors[room]
            await wait_until(lambda c=collector, n=last: len(c.seqs()) >= n, 15, "all messages")
            await asyncio.sleep(0.2)
            assert collector.seqs() == list(range(1, last + 1)), "each seq once, in order"
        own_ids = [m["id"] for m in stored]
        history = (await natter.rest.list_messages(rooms[0], limit=200))["messages"]
        assert sorted(m["id"] for m in history if m["text"].startswith("own ")) == sorted(own_ids)
        assert "reconnecting" in states and states[-1] == "open"
        assert token_calls == 1, "a string token is fetched once; only 4001 refreshes it"
    await balancer.stop()


def test_a_killed_then_a_drained_node_lose_repeat_and_reorder_nothing() -> None:
    run(_failover())


async def _lost_ack() -> None:
    survivor = nodes()[2]
    balancer = Balancer([survivor])
    front = await balancer.start()
    session = await register(survivor, "acker")
    async with (
        Natter(front, token=session["token"], backoff_base=0.05, backoff_max=0.5) as natter,
        Natter(survivor, token=session["token"]) as direct,
    ):
        room = await natter.rest.create_room(unique("ack"), "public")
        handle = natter.room(room["id"])
        events = Collector(handle)
        await handle.subscribe()
        # Every byte from the server to this client is dropped from now on: the send
        # reaches the node and is stored, its ack never arrives.
        balancer.mute()
        sending = asyncio.ensure_future(handle.send("ack lost", client_msg_id="lost-1"))

        async def stored() -> list[Any]:
            page = await direct.rest.list_messages(room["id"])
            return [m for m in page["messages"] if m["client_msg_id"] == "lost-1"]

        for _ in range(250):
            if await stored():
                break
            await asyncio.sleep(0.02)
        assert len(await stored()) == 1
        assert not sending.done(), "the ack was dropped"
        balancer.cut()
        message = await asyncio.wait_for(sending, 15)
        assert message["client_msg_id"] == "lost-1" and message["seq"] == 1
        assert natter.connections == 2
        await wait_until(lambda: events.seqs() == [1], 10, "the message event")
        await asyncio.sleep(0.3)
        assert events.seqs() == [1], "its event is delivered once"
        assert len(await stored()) == 1, "stored once"
    await balancer.stop()


def test_a_send_whose_ack_is_lost_resolves_once_after_the_reconnect() -> None:
    run(_lost_ack())


async def _token_expiry() -> None:
    base = env("NATTER_SDK_SHORT_TOKEN_URL")
    name = unique("short")
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        reply = await http.post("/v1/auth/register", json={"username": name, "password": PASSWORD})
        assert reply.status_code == 201
        issued: list[str] = []

        async def token() -> str:
            login = await http.post("/v1/auth/login", json={"username": name, "password": PASSWORD})
            assert login.status_code == 200
            issued.append(login.json()["token"])
            return issued[-1]

        states: list[str] = []
        async with Natter(base, token=token, backoff_base=0.05, backoff_max=0.5) as natter:
            natter.on("state", states.append)
            room = await natter.rest.create_room(unique("ttl"), "public")
            handle = natter.room(room["id"])
            events = Collector(handle)
            await handle.subscribe()
            await handle.send("before expiry")
            # The token lives 3 s: the server closes the socket with 4001 and the SDK
            # asks the token function for a new one, then buys a new ticket.
            await wait_until(lambda: len(issued) >= 2 and natter.state == "open", 10, "4001")
            assert "reconnecting" in states
            after = await handle.send("after expiry")
            assert after["seq"] == 2
            await wait_until(lambda: events.seqs() == [1, 2], 10, "both messages")
            assert issued[0] != issued[1]
            assert natter.connections >= 2


def test_a_4001_close_asks_the_token_function_again() -> None:
    run(_token_expiry())


async def _slow_reader() -> None:
    slow, survivor = env("NATTER_SDK_SLOW_URL"), nodes()[2]
    balancer = Balancer([slow], small_buffers=True)
    front = await balancer.start()
    session = await register(survivor, "slow")
    async with (
        Natter(front, token=session["token"], backoff_base=0.05, backoff_max=0.5) as natter,
        httpx.AsyncClient(base_url=survivor, timeout=10) as http,
    ):
        room = await natter.rest.create_room(unique("slow"), "public")
        events = Collector(natter.room(room["id"]))
        await natter.room(room["id"]).subscribe()
        # The client stops reading: the node's socket buffers fill, then its 64-event
        # queue, and it closes the socket with 4008 behind what is buffered.
        balancer.pause()
        auth = {"authorization": f"Bearer {session['token']}"}
        text = "x" * 3900
        total = 1200

        async def post() -> None:
            reply = await http.post(
                f"/v1/rooms/{room['id']}/messages", headers=auth, json={"text": text}
            )
            assert reply.status_code == 201, reply.text

        for _ in range(total // 40):
            await asyncio.gather(*(post() for _ in range(40)))
        balancer.resume()
        await wait_until(lambda: len(events.seqs()) >= total, 30, "every message")
        await asyncio.sleep(0.2)
        assert events.seqs() == list(range(1, total + 1)), "each seq once, in order"
        assert natter.connections >= 2 and natter.state == "open"
        assert natter.last_close_code == 4008, natter.last_close_code
    await balancer.stop()


def test_a_slow_reader_closed_with_4008_resumes_from_its_last_seq() -> None:
    run(_slow_reader())
