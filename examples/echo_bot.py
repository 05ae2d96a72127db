#!/usr/bin/env python3
"""An echo bot on the Python SDK (`natter`): it joins a room with a bot key and answers
each message a person sends there with a reply that repeats it.

A room owner makes the bot and its key once (`POST /v1/bots`, shown once):

    curl -s $API/v1/bots -H "authorization: Bearer $TOKEN" \\
      -H 'content-type: application/json' -d '{"username":"echo-bot"}' | jq -r .token

then runs it (`pip install ./clients/python` first):

    python3 examples/echo_bot.py --url http://localhost:8080 --key ntb_... --room ROOM_ID

What the SDK does for the bot: one socket, opened with a ticket (the key never goes in a
URL); after any disconnect it resumes the room from the last `seq` it delivered, so each
message is answered once. Each reply's `client_msg_id` is derived from the message it
answers, so even a reply sent twice (a retry, or a second copy of the bot) is stored
once. Messages from bots, itself included, get no answer: two echo bots in one room
would otherwise answer each other for ever.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from natter import ApiError, MessageEvent, Natter

PREFIX = "echo: "
#: The longest text the server stores by default (`MAX_TEXT_CHARS`).
MAX_TEXT_CHARS = 4000


class EchoBot:
    """Answers people's messages in one room; knows which senders are bots."""

    def __init__(self, natter: Natter, room_id: str) -> None:
        self.natter = natter
        self.room = natter.room(room_id)
        self._is_bot: dict[str, bool] = {}

    async def sender_is_bot(self, user_id: str) -> bool:
        known = self._is_bot.get(user_id)
        if known is None:
            known = self._is_bot[user_id] = (await self.natter.rest.get_user(user_id))["bot"]
        return known

    async def run(self, since_seq: int | None) -> None:
        me = await self.natter.rest.get_me()
        self._is_bot[me["id"]] = True
        await self.natter.rest.join_room(self.room.id)
        last_seq = await self.room.subscribe(since_seq=since_seq)
        print(f"ready: {me['username']} in room {self.room.id} at seq {last_seq}", flush=True)
        async for event in self.room.events():
            if not isinstance(event, MessageEvent):
                continue
            message = event.message
            if message["deleted"] or await self.sender_is_bot(message["sender_id"]):
                continue
            reply = (PREFIX + message["text"])[:MAX_TEXT_CHARS]
            try:
                stored = await self.room.send(
                    reply, client_msg_id=f"echo-{message['id']}", reply_to=message["id"]
                )
            except ApiError as error:
                # Rate-limited, removed from the room, ...: skip this one, keep serving.
                print(f"not answered #{message['seq']}: {error}", file=sys.stderr, flush=True)
                continue
            print(f"answered #{message['seq']} with #{stored['seq']}", flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description="Natter echo bot")
    parser.add_argument("--url", required=True, help="a node or balancer, http(s)://host:port")
    parser.add_argument("--key", required=True, help="the bot's key (ntb_...)")
    parser.add_argument("--room", required=True, help="the id of the room to serve")
    parser.add_argument(
        "--since-seq",
        type=int,
        default=None,
        help="also answer the messages after this seq (default: only new ones)",
    )
    args = parser.parse_args()
    async with Natter(args.url, token=args.key) as natter:
        natter.on("state", lambda state: print(f"socket: {state}", file=sys.stderr, flush=True))
        await EchoBot(natter, args.room).run(args.since_seq)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main())
