"""The shapes of Natter's REST bodies (as in `/openapi.json`) and of room events.

The REST shapes say what the OpenAPI document says, field by field (checked by
`tests/test_rest_types.py`): a field the document does not require is `NotRequired`,
even where the server sends it with a null value today."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NotRequired, TypeAlias, TypedDict

RoomKind = Literal["public", "private", "direct"]
NewRoomKind = Literal["public", "private"]
Role = Literal["owner", "member"]


class User(TypedDict):
    id: str
    username: str
    display_name: str
    bot: bool
    online: bool


class Session(TypedDict):
    user: User
    token: str
    expires_at: int


class Reaction(TypedDict):
    emoji: str
    count: int
    me: bool


class Message(TypedDict):
    id: str
    room_id: str
    seq: int
    sender_id: str
    text: str
    created_at: int
    edited_at: NotRequired[int | None]
    deleted: bool
    client_msg_id: NotRequired[str | None]
    reply_to: NotRequired[str | None]
    reactions: list[Reaction]


class MessagePage(TypedDict):
    messages: list[Message]
    has_more: bool


class Room(TypedDict):
    id: str
    name: str
    kind: RoomKind
    owner_id: str
    created_at: int
    last_seq: int
    member_count: int


class RoomList(TypedDict):
    rooms: list[Room]
    next_cursor: NotRequired[str]


NotificationLevel = Literal["all", "mentions", "none"]


class NotificationSettings(TypedDict):
    """What notifies a member of a room while they are away: their `level` (by default
    `all` in direct rooms, `mentions` elsewhere), and nothing before `muted_until`."""

    level: NotificationLevel
    muted_until: NotRequired[int | None]


class MyRoom(Room):
    unread_count: int
    last_read_seq: int
    last_message: NotRequired[Message]
    last_activity_at: int
    notifications: NotificationSettings


class MyRoomList(TypedDict):
    rooms: list[MyRoom]
    next_cursor: NotRequired[str]


class Member(TypedDict):
    user_id: str
    username: str
    display_name: str
    role: Role
    online: bool
    joined_at: int
    last_read_seq: int


class MemberList(TypedDict):
    members: list[Member]
    next_cursor: NotRequired[str]


class UserList(TypedDict):
    users: list[User]


class OnlineUserList(TypedDict):
    users: list[User]
    next_cursor: NotRequired[str]


class Ticket(TypedDict):
    ticket: str
    expires_at: int


class Bot(TypedDict):
    user: User
    created_at: int


class BotList(TypedDict):
    bots: list[Bot]


class BotKey(TypedDict):
    user: User
    token: str


class CreatedWebhook(TypedDict):
    id: str
    url: str
    events: NotRequired[list[str] | None]
    secret: str
    created_at: int


class WebhookView(TypedDict):
    id: str
    url: str
    events: NotRequired[list[str] | None]
    state: str
    created_at: int


class WebhookList(TypedDict):
    webhooks: list[WebhookView]


class RotatedSecret(TypedDict):
    secret: str


class VapidPublicKey(TypedDict):
    """The cluster's VAPID public key (base64url), a browser's `applicationServerKey`."""

    key: str


PushKind = Literal["webpush", "fcm", "apns"]


class PushSubscription(TypedDict):
    id: str
    kind: PushKind
    created_at: int


class PushSubscriptionList(TypedDict):
    subscriptions: list[PushSubscription]


class DeliveryView(TypedDict):
    event_id: str
    type: str
    attempt: int
    status_code: NotRequired[int | None]
    error: NotRequired[str | None]
    duration_ms: int
    at: int


class Deliveries(TypedDict):
    state: str
    deliveries: list[DeliveryView]


# Room events, as `Room.events()` yields them. Each names its room; `type` tells them
# apart (and `match` on the class works too).


@dataclass(frozen=True)
class MessageEvent:
    """A new message; each `seq` of a room is delivered once, in order."""

    room_id: str
    message: Message
    type: Literal["message"] = "message"


@dataclass(frozen=True)
class EditedEvent:
    room_id: str
    message: Message
    type: Literal["edited"] = "edited"


@dataclass(frozen=True)
class DeletedEvent:
    room_id: str
    message_id: str
    seq: int
    type: Literal["deleted"] = "deleted"


@dataclass(frozen=True)
class ReactionEvent:
    room_id: str
    message_id: str
    emoji: str
    user_id: str
    added: bool
    type: Literal["reaction"] = "reaction"


@dataclass(frozen=True)
class TypingEvent:
    room_id: str
    user_id: str
    value: bool
    type: Literal["typing"] = "typing"


@dataclass(frozen=True)
class ReadEvent:
    room_id: str
    user_id: str
    seq: int
    type: Literal["read"] = "read"


@dataclass(frozen=True)
class PresenceEvent:
    room_id: str
    user_id: str
    status: Literal["joined", "left"]
    type: Literal["presence"] = "presence"


@dataclass(frozen=True)
class UnsubscribedEvent:
    """The room's subscription ended: `reason` is None when this client asked, else
    `removed`, `left` or `room_deleted` (the SDK does not re-subscribe then)."""

    room_id: str
    reason: str | None
    type: Literal["unsubscribed"] = "unsubscribed"


Event: TypeAlias = (
    MessageEvent
    | EditedEvent
    | DeletedEvent
    | ReactionEvent
    | TypingEvent
    | ReadEvent
    | PresenceEvent
    | UnsubscribedEvent
)

State = Literal["connecting", "open", "reconnecting", "closed"]
