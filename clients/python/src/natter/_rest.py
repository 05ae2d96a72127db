"""Typed calls for the `/v1` operations of Natter's OpenAPI document.

Each method is named after its operation's `operationId`; `OPERATIONS` maps them to
their HTTP method and path, and the SDK's tests check both against `/openapi.json`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, cast
from urllib.parse import quote

import httpx

from ._errors import ApiError
from ._types import (
    BotKey,
    BotList,
    CreatedWebhook,
    Deliveries,
    MemberList,
    Message,
    MessagePage,
    MyRoomList,
    NewRoomKind,
    NotificationSettings,
    OnlineUserList,
    PushSubscription,
    PushSubscriptionList,
    Room,
    RoomList,
    RotatedSecret,
    Session,
    Ticket,
    User,
    UserList,
    VapidPublicKey,
    WebhookList,
)

# operationId -> (HTTP method, path as the OpenAPI document spells it).
OPERATIONS: Mapping[str, tuple[str, str]] = {
    "register": ("POST", "/v1/auth/register"),
    "login": ("POST", "/v1/auth/login"),
    "get_me": ("GET", "/v1/users/me"),
    "get_user": ("GET", "/v1/users/{user_id}"),
    "create_room": ("POST", "/v1/rooms"),
    "list_rooms": ("GET", "/v1/rooms"),
    "get_room": ("GET", "/v1/rooms/{room_id}"),
    "rename_room": ("PATCH", "/v1/rooms/{room_id}"),
    "delete_room": ("DELETE", "/v1/rooms/{room_id}"),
    "join_room": ("POST", "/v1/rooms/{room_id}/join"),
    "leave_room": ("POST", "/v1/rooms/{room_id}/leave"),
    "mark_read": ("POST", "/v1/rooms/{room_id}/read"),
    "open_direct_room": ("POST", "/v1/dms"),
    "list_members": ("GET", "/v1/rooms/{room_id}/members"),
    "add_member": ("PUT", "/v1/rooms/{room_id}/members/{user_id}"),
    "remove_member": ("DELETE", "/v1/rooms/{room_id}/members/{user_id}"),
    "send_message": ("POST", "/v1/rooms/{room_id}/messages"),
    "list_messages": ("GET", "/v1/rooms/{room_id}/messages"),
    "search_messages": ("GET", "/v1/rooms/{room_id}/messages/search"),
    "edit_message": ("PATCH", "/v1/rooms/{room_id}/messages/{message_id}"),
    "delete_message": ("DELETE", "/v1/rooms/{room_id}/messages/{message_id}"),
    "add_reaction": ("PUT", "/v1/rooms/{room_id}/messages/{message_id}/reactions/{emoji}"),
    "remove_reaction": ("DELETE", "/v1/rooms/{room_id}/messages/{message_id}/reactions/{emoji}"),
    "list_my_rooms": ("GET", "/v1/me/rooms"),
    "list_online_users": ("GET", "/v1/presence"),
    "list_room_presence": ("GET", "/v1/rooms/{room_id}/presence"),
    "create_ws_ticket": ("POST", "/v1/ws/tickets"),
    "create_bot": ("POST", "/v1/bots"),
    "list_bots": ("GET", "/v1/bots"),
    "replace_bot_token": ("POST", "/v1/bots/{id}/token"),
    "delete_bot": ("DELETE", "/v1/bots/{id}"),
    "create_webhook": ("POST", "/v1/rooms/{room_id}/webhooks"),
    "list_webhooks": ("GET", "/v1/rooms/{room_id}/webhooks"),
    "delete_webhook": ("DELETE", "/v1/rooms/{room_id}/webhooks/{id}"),
    "rotate_webhook_secret": ("POST", "/v1/rooms/{room_id}/webhooks/{id}/rotate"),
    "replay_webhook": ("POST", "/v1/rooms/{room_id}/webhooks/{id}/replay"),
    "list_webhook_deliveries": ("GET", "/v1/rooms/{room_id}/webhooks/{id}/deliveries"),
    "get_notification_settings": ("GET", "/v1/rooms/{room_id}/notifications"),
    "set_notification_settings": ("PUT", "/v1/rooms/{room_id}/notifications"),
    "get_vapid_public_key": ("GET", "/v1/push/vapid-public-key"),
    "create_push_subscription": ("POST", "/v1/me/push-subscriptions"),
    "list_push_subscriptions": ("GET", "/v1/me/push-subscriptions"),
    "delete_push_subscription": ("DELETE", "/v1/me/push-subscriptions/{id}"),
}

# Python parameter names for path parameters the document calls `id`.
PATH_ALIASES: Mapping[str, Mapping[str, str]] = {
    "replace_bot_token": {"id": "bot_id"},
    "delete_bot": {"id": "bot_id"},
    "delete_webhook": {"id": "webhook_id"},
    "rotate_webhook_secret": {"id": "webhook_id"},
    "replay_webhook": {"id": "webhook_id"},
    "list_webhook_deliveries": {"id": "webhook_id"},
    "delete_push_subscription": {"id": "subscription_id"},
}

TokenSource = Callable[[bool], Awaitable[str | None]]


def _drop_none(values: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


class Rest:
    """`natter.rest`: one coroutine per `/v1` operation. Errors raise `ApiError`; a
    `401` with a token function fetches a new token and retries once."""

    def __init__(self, http: httpx.AsyncClient, token: TokenSource) -> None:
        self._http = http
        self._token = token

    async def _call(
        self,
        operation: str,
        path_params: Mapping[str, str] | None = None,
        *,
        params: Mapping[str, Any] | None = None,
        body: Mapping[str, Any] | None = None,
        auth: bool = True,
    ) -> Any:
        method, template = OPERATIONS[operation]
        path = template
        aliases = PATH_ALIASES.get(operation, {})
        for name, value in (path_params or {}).items():
            document_name = next((k for k, v in aliases.items() if v == name), name)
            path = path.replace("{" + document_name + "}", quote(str(value), safe=""))
        query = _drop_none(params or {})
        for attempt in range(2):
            headers: dict[str, str] = {}
            if auth:
                token = await self._token(attempt > 0)
                if token is not None:
                    headers["authorization"] = f"Bearer {token}"
            response = await self._http.request(
                method,
                path,
                params=query or None,
                json=_drop_none(body) if body is not None else None,
                headers=headers,
            )
            if response.status_code == 401 and auth and attempt == 0:
                continue
            break
        if response.status_code >= 400:
            try:
                detail = response.json()["error"]
                raise ApiError(
                    response.status_code, detail["code"], detail["message"], detail.get("field")
                )
            except (ValueError, KeyError, TypeError):
                raise ApiError(response.status_code, "http_error", response.text[:200]) from None
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    # Accounts

    async def register(
        self, username: str, password: str, display_name: str | None = None
    ) -> Session:
        body = {"username": username, "password": password, "display_name": display_name}
        return cast(Session, await self._call("register", body=body, auth=False))

    async def login(self, username: str, password: str) -> Session:
        body = {"username": username, "password": password}
        return cast(Session, await self._call("login", body=body, auth=False))

    async def get_me(self) -> User:
        return cast(User, await self._call("get_me"))

    async def get_user(self, user_id: str) -> User:
        return cast(User, await self._call("get_user", {"user_id": user_id}))

    # Rooms

    async def create_room(
        self, name: str, kind: NewRoomKind = "public", member_ids: list[str] | None = None
    ) -> Room:
        body = {"name": name, "kind": kind, "member_ids": member_ids}
        return cast(Room, await self._call("create_room", body=body))

    async def list_rooms(self, cursor: str | None = None, limit: int | None = None) -> RoomList:
        params = {"cursor": cursor, "limit": limit}
        return cast(RoomList, await self._call("list_rooms", params=params))

    async def get_room(self, room_id: str) -> Room:
        return cast(Room, await self._call("get_room", {"room_id": room_id}))

    async def rename_room(self, room_id: str, name: str) -> Room:
        return cast(
            Room, await self._call("rename_room", {"room_id": room_id}, body={"name": name})
        )

    async def delete_room(self, room_id: str) -> None:
        await self._call("delete_room", {"room_id": room_id})

    async def join_room(self, room_id: str) -> None:
        await self._call("join_room", {"room_id": room_id})

    async def leave_room(self, room_id: str) -> None:
        await self._call("leave_room", {"room_id": room_id})

    async def mark_read(self, room_id: str, seq: int) -> None:
        await self._call("mark_read", {"room_id": room_id}, body={"seq": seq})

    async def open_direct_room(self, user_id: str) -> Room:
        return cast(Room, await self._call("open_direct_room", body={"user_id": user_id}))

    async def list_members(
        self, room_id: str, cursor: str | None = None, limit: int | None = None
    ) -> MemberList:
        params = {"cursor": cursor, "limit": limit}
        return cast(
            MemberList, await self._call("list_members", {"room_id": room_id}, params=params)
        )

    async def add_member(self, room_id: str, user_id: str) -> None:
        await self._call("add_member", {"room_id": room_id, "user_id": user_id})

    async def remove_member(self, room_id: str, user_id: str) -> None:
        await self._call("remove_member", {"room_id": room_id, "user_id": user_id})

    # Messages

    async def send_message(
        self,
        room_id: str,
        text: str,
        client_msg_id: str | None = None,
        reply_to: str | None = None,
    ) -> Message:
        """Stores a message; a retry with the same `client_msg_id` answers the stored
        one and never stores it twice."""
        body = {"text": text, "client_msg_id": client_msg_id, "reply_to": reply_to}
        return cast(Message, await self._call("send_message", {"room_id": room_id}, body=body))

    async def list_messages(
        self,
        room_id: str,
        before_seq: int | None = None,
        after_seq: int | None = None,
        limit: int | None = None,
    ) -> MessagePage:
        params = {"before_seq": before_seq, "after_seq": after_seq, "limit": limit}
        page = await self._call("list_messages", {"room_id": room_id}, params=params)
        return cast(MessagePage, page)

    async def search_messages(self, room_id: str, q: str, limit: int | None = None) -> MessagePage:
        params = {"q": q, "limit": limit}
        page = await self._call("search_messages", {"room_id": room_id}, params=params)
        return cast(MessagePage, page)

    async def edit_message(self, room_id: str, message_id: str, text: str) -> Message:
        ids = {"room_id": room_id, "message_id": message_id}
        return cast(Message, await self._call("edit_message", ids, body={"text": text}))

    async def delete_message(self, room_id: str, message_id: str) -> Message:
        ids = {"room_id": room_id, "message_id": message_id}
        return cast(Message, await self._call("delete_message", ids))

    async def add_reaction(self, room_id: str, message_id: str, emoji: str) -> Message:
        ids = {"room_id": room_id, "message_id": message_id, "emoji": emoji}
        return cast(Message, await self._call("add_reaction", ids))

    async def remove_reaction(self, room_id: str, message_id: str, emoji: str) -> Message:
        ids = {"room_id": room_id, "message_id": message_id, "emoji": emoji}
        return cast(Message, await self._call("remove_reaction", ids))

    # Lists and presence

    async def list_my_rooms(
        self, cursor: str | None = None, limit: int | None = None
    ) -> MyRoomList:
        params = {"cursor": cursor, "limit": limit}
        return cast(MyRoomList, await self._call("list_my_rooms", params=params))

    async def list_online_users(
        self, cursor: str | None = None, limit: int | None = None
    ) -> OnlineUserList:
        params = {"cursor": cursor, "limit": limit}
        return cast(OnlineUserList, await self._call("list_online_users", params=params))

    async def list_room_presence(self, room_id: str) -> UserList:
        return cast(UserList, await self._call("list_room_presence", {"room_id": room_id}))

    async def create_ws_ticket(self) -> Ticket:
        return cast(Ticket, await self._call("create_ws_ticket"))

    # Bots

    async def create_bot(self, username: str, display_name: str | None = None) -> BotKey:
        body = {"username": username, "display_name": display_name}
        return cast(BotKey, await self._call("create_bot", body=body))

    async def list_bots(self) -> BotList:
        return cast(BotList, await self._call("list_bots"))

    async def replace_bot_token(self, bot_id: str) -> BotKey:
        return cast(BotKey, await self._call("replace_bot_token", {"bot_id": bot_id}))

    async def delete_bot(self, bot_id: str) -> None:
        await self._call("delete_bot", {"bot_id": bot_id})

    # Webhooks

    async def create_webhook(
        self, room_id: str, url: str, events: list[str] | None = None
    ) -> CreatedWebhook:
        body = {"url": url, "events": events}
        hook = await self._call("create_webhook", {"room_id": room_id}, body=body)
        return cast(CreatedWebhook, hook)

    async def list_webhooks(self, room_id: str) -> WebhookList:
        return cast(WebhookList, await self._call("list_webhooks", {"room_id": room_id}))

    async def delete_webhook(self, room_id: str, webhook_id: str) -> None:
        await self._call("delete_webhook", {"room_id": room_id, "webhook_id": webhook_id})

    async def rotate_webhook_secret(self, room_id: str, webhook_id: str) -> RotatedSecret:
        ids = {"room_id": room_id, "webhook_id": webhook_id}
        return cast(RotatedSecret, await self._call("rotate_webhook_secret", ids))

    async def replay_webhook(self, room_id: str, webhook_id: str, from_seq: int) -> None:
        ids = {"room_id": room_id, "webhook_id": webhook_id}
        await self._call("replay_webhook", ids, body={"from_seq": from_seq})

    async def list_webhook_deliveries(
        self, room_id: str, webhook_id: str, limit: int | None = None
    ) -> Deliveries:
        ids = {"room_id": room_id, "webhook_id": webhook_id}
        page = await self._call("list_webhook_deliveries", ids, params={"limit": limit})
        return cast(Deliveries, page)

    # Notifications

    async def get_notification_settings(self, room_id: str) -> NotificationSettings:
        settings = await self._call("get_notification_settings", {"room_id": room_id})
        return cast(NotificationSettings, settings)

    async def set_notification_settings(
        self,
        room_id: str,
        level: Literal["all", "mentions", "none"],
        muted_until: int | None = None,
    ) -> NotificationSettings:
        body = {"level": level, "muted_until": muted_until}
        ids = {"room_id": room_id}
        settings = await self._call("set_notification_settings", ids, body=body)
        return cast(NotificationSettings, settings)

    async def get_vapid_public_key(self) -> VapidPublicKey:
        return cast(VapidPublicKey, await self._call("get_vapid_public_key"))

    async def create_push_subscription(
        self,
        kind: Literal["webpush", "fcm", "apns"],
        *,
        endpoint: str | None = None,
        keys: Mapping[str, str] | None = None,
        token: str | None = None,
    ) -> PushSubscription:
        """A browser's `PushSubscription` (`kind="webpush"`, its `endpoint` and `keys`
        `{p256dh, auth}`), or a native app's device `token` (`fcm`, `apns`)."""
        body = {"kind": kind, "endpoint": endpoint, "keys": keys, "token": token}
        created = await self._call("create_push_subscription", body=body)
        return cast(PushSubscription, created)

    async def list_push_subscriptions(self) -> PushSubscriptionList:
        return cast(PushSubscriptionList, await self._call("list_push_subscriptions"))

    async def delete_push_subscription(self, subscription_id: str) -> None:
        await self._call("delete_push_subscription", {"subscription_id": subscription_id})
