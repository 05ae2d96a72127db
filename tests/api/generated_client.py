"""A full chat flow through the Python client that openapi-python-client generated from
Natter's /openapi.json (tests/api/generated_client.rs runs it):

    python generated_client.py BASE_URL
"""

import sys

from natter_client import AuthenticatedClient, Client
from natter_client.api.auth import register
from natter_client.api.me import list_my_rooms
from natter_client.api.messages import add_reaction, list_messages, send_message
from natter_client.api.rooms import create_room, join_room, mark_read
from natter_client.models import (
    CreateRoomRequest,
    NewRoomKind,
    ReadRequest,
    RegisterRequest,
    SendMessageRequest,
)

base = sys.argv[1]


def sign_up(username):
    anonymous = Client(base_url=base, raise_on_unexpected_status=True)
    session = register.sync(
        client=anonymous,
        body=RegisterRequest(username=username, password="correct horse battery"),
    )
    assert session.user.username == username, session
    return AuthenticatedClient(
        base_url=base, token=session.token, raise_on_unexpected_status=True
    )


alice = sign_up("alice_generated")
bob = sign_up("bob_generated")

room = create_room.sync(
    client=alice, body=CreateRoomRequest(name="generated", kind=NewRoomKind.PUBLIC)
)
assert room.last_seq == 0, room
assert join_room.sync_detailed(room.id, client=bob).status_code == 204

sent = [
    send_message.sync(
        room.id,
        client=alice,
        body=SendMessageRequest(text=f"hello {i}", client_msg_id=f"generated-{i}"),
    )
    for i in range(1, 6)
]
assert [m.seq for m in sent] == [1, 2, 3, 4, 5], sent

# A retry of a client_msg_id returns the original message (200, not 201).
retry = send_message.sync_detailed(
    room.id,
    client=alice,
    body=SendMessageRequest(text="hello again", client_msg_id="generated-1"),
)
assert retry.status_code == 200 and retry.parsed.id == sent[0].id, retry

latest = list_messages.sync(room.id, client=bob, limit=2)
assert [m.seq for m in latest.messages] == [4, 5] and latest.has_more, latest
older = list_messages.sync(room.id, client=bob, before_seq=4, limit=10)
assert [m.text for m in older.messages] == ["hello 1", "hello 2", "hello 3"], older
assert not older.has_more

reacted = add_reaction.sync(room.id, sent[4].id, "🎉", client=bob)
assert [(r.emoji, r.count, r.me) for r in reacted.reactions] == [("🎉", 1, True)]

assert mark_read.sync_detailed(room.id, client=bob, body=ReadRequest(seq=5)).status_code == 204
mine = list_my_rooms.sync(client=bob)
entry = next(r for r in mine.rooms if r.id == room.id)
assert (entry.unread_count, entry.last_read_seq, entry.last_message.seq) == (0, 5, 5), entry

print("generated client: register, create room, join, send, retry, page, react, read: ok")
