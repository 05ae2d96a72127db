// `natter.rest`: one typed call per `/v1` operation of Natter's OpenAPI document. Each
// method is the camelCase of its `operationId`; OPERATIONS maps the operationIds to their
// HTTP method and path, and the SDK's tests check both against the live `/openapi.json`.

import {
  ApiError,
  BotKey,
  BotList,
  CreatedWebhook,
  Deliveries,
  MemberList,
  Message,
  MessagePage,
  MyRoomList,
  NewPushSubscription,
  NotificationLevel,
  NotificationSettings,
  OnlineUserList,
  PushSubscription,
  PushSubscriptionList,
  Room,
  RoomKind,
  RoomList,
  RotatedSecret,
  Session,
  Ticket,
  User,
  UserList,
  VapidPublicKey,
  WebhookList,
} from "./types";

/** operationId -> [HTTP method, path as the OpenAPI document spells it]. */
export const OPERATIONS: Readonly<Record<string, readonly [string, string]>> = {
  register: ["POST", "/v1/auth/register"],
  login: ["POST", "/v1/auth/login"],
  get_me: ["GET", "/v1/users/me"],
  get_user: ["GET", "/v1/users/{user_id}"],
  create_room: ["POST", "/v1/rooms"],
  list_rooms: ["GET", "/v1/rooms"],
  get_room: ["GET", "/v1/rooms/{room_id}"],
  rename_room: ["PATCH", "/v1/rooms/{room_id}"],
  delete_room: ["DELETE", "/v1/rooms/{room_id}"],
  join_room: ["POST", "/v1/rooms/{room_id}/join"],
  leave_room: ["POST", "/v1/rooms/{room_id}/leave"],
  mark_read: ["POST", "/v1/rooms/{room_id}/read"],
  open_direct_room: ["POST", "/v1/dms"],
  list_members: ["GET", "/v1/rooms/{room_id}/members"],
  add_member: ["PUT", "/v1/rooms/{room_id}/members/{user_id}"],
  remove_member: ["DELETE", "/v1/rooms/{room_id}/members/{user_id}"],
  send_message: ["POST", "/v1/rooms/{room_id}/messages"],
  list_messages: ["GET", "/v1/rooms/{room_id}/messages"],
  search_messages: ["GET", "/v1/rooms/{room_id}/messages/search"],
  edit_message: ["PATCH", "/v1/rooms/{room_id}/messages/{message_id}"],
  delete_message: ["DELETE", "/v1/rooms/{room_id}/messages/{message_id}"],
  add_reaction: ["PUT", "/v1/rooms/{room_id}/messages/{message_id}/reactions/{emoji}"],
  remove_reaction: ["DELETE", "/v1/rooms/{room_id}/messages/{message_id}/reactions/{emoji}"],
  list_my_rooms: ["GET", "/v1/me/rooms"],
  list_online_users: ["GET", "/v1/presence"],
  list_room_presence: ["GET", "/v1/rooms/{room_id}/presence"],
  create_ws_ticket: ["POST", "/v1/ws/tickets"],
  create_bot: ["POST", "/v1/bots"],
  list_bots: ["GET", "/v1/bots"],
  replace_bot_token: ["POST", "/v1/bots/{id}/token"],
  delete_bot: ["DELETE", "/v1/bots/{id}"],
  create_webhook: ["POST", "/v1/rooms/{room_id}/webhooks"],
  list_webhooks: ["GET", "/v1/rooms/{room_id}/webhooks"],
  delete_webhook: ["DELETE", "/v1/rooms/{room_id}/webhooks/{id}"],
  rotate_webhook_secret: ["POST", "/v1/rooms/{room_id}/webhooks/{id}/rotate"],
  replay_webhook: ["POST", "/v1/rooms/{room_id}/webhooks/{id}/replay"],
  list_webhook_deliveries: ["GET", "/v1/rooms/{room_id}/webhooks/{id}/deliveries"],
  get_notification_settings: ["GET", "/v1/rooms/{room_id}/notifications"],
  set_notification_settings: ["PUT", "/v1/rooms/{room_id}/notifications"],
  get_vapid_public_key: ["GET", "/v1/push/vapid-public-key"],
  create_push_subscription: ["POST", "/v1/me/push-subscriptions"],
  list_push_subscriptions: ["GET", "/v1/me/push-subscriptions"],
  delete_push_subscription: ["DELETE", "/v1/me/push-subscriptions/{id}"],
};

/** `list_room_presence` -> `listRoomPresence`: the method name of an operationId. */
export function methodName(operationId: string): string {
  return operationId.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase());
}

/** Returns the token; `refresh` asks the token function for a new one. */
export type TokenSource = (refresh: boolean) => Promise<string | undefined>;

type Query = Record<string, string | number | undefined>;
type Body = Record<string, unknown>;

function defined(values: Body): Body {
  const out: Body = {};
  for (const [key, value] of Object.entries(values)) if (value !== undefined) out[key] = value;
  return out;
}

/** Errors reject with `ApiError`; a 401 with a token function fetches a new token and
 * retries once. Each request is bounded by `timeoutMs`. */
export class Rest {
  constructor(
    private readonly baseUrl: string,
    private readonly token: TokenSource,
    private readonly timeoutMs: number,
    private readonly fetchFn: typeof fetch,
  ) {}

  /** Calls the operation `operationId`. The typed methods below are built on it. */
  async call(
    operationId: string,
    pathParams: Record<string, string> = {},
    options: { query?: Query; body?: Body; auth?: boolean } = {},
  ): Promise<any> {
    const [method, template] = OPERATIONS[operationId];
    const path = template.replace(/\{(\w+)\}/g, (_, name: string) => {
      const value = pathParams[name];
      if (value === undefined) throw new TypeError(`${operationId}: missing ${name}`);
      return encodeURIComponent(value);
    });
    const url = new URL(this.baseUrl + path);
    for (const [key, value] of Object.entries(options.query ?? {})) {
      if (value !== undefined) url.searchParams.set(key, String(value));
    }
    const auth = options.auth ?? true;
    let response: Response | undefined;
    for (let attempt = 0; attempt < 2; attempt++) {
      const headers: Record<string, string> = {};
      if (auth) {
        const token = await this.token(attempt > 0);
        if (token !== undefined) headers.authorization = `Bearer ${token}`;
      }
      let body: string | undefined;
      if (options.body !== undefined) {
        headers["content-type"] = "application/json";
        body = JSON.stringify(defined(options.body));
      }
      const abort = new AbortController();
      const timer = setTimeout(() => abort.abort(), this.timeoutMs);
      try {
        response = await this.fetchFn(url.toString(), {
          method,
          headers,
          body,
          signal: abort.signal,
        });
        if (response.status === 401 && auth && attempt === 0) continue;
        const text = await response.text();
        if (response.status >= 400) {
          let error: ApiError;
          try {
            const detail = JSON.parse(text).error;
            error = new ApiError(response.status, detail.code, detail.message, detail.field);
          } catch {
            error = new ApiError(response.status, "http_error", text.slice(0, 200));
          }
          throw error;
        }
        return text === "" ? undefined : JSON.parse(text);
      } finally {
        clearTimeout(timer);
      }
    }
    throw new ApiError(401, "unauthorized", "unauthorized");
  }

  // Accounts

  register(username: string, password: string, displayName?: string): Promise<Session> {
    const body = { username, password, display_name: displayName };
    return this.call("register", {}, { body, auth: false });
  }
  login(username: string, password: string): Promise<Session> {
    return this.call("login", {}, { body: { username, password }, auth: false });
  }
  getMe(): Promise<User> {
    return this.call("get_me");
  }
  getUser(userId: string): Promise<User> {
    return this.call("get_user", { user_id: userId });
  }

  // Rooms

  createRoom(
    name: string,
    kind: Exclude<RoomKind, "direct"> = "public",
    memberIds?: string[],
  ): Promise<Room> {
    return this.call("create_room", {}, { body: { name, kind, member_ids: memberIds } });
  }
  listRooms(options: { cursor?: string; limit?: number } = {}): Promise<RoomList> {
    return this.call("list_rooms", {}, { query: options });
  }
  getRoom(roomId: string): Promise<Room> {
    return this.call("get_room", { room_id: roomId });
  }
  renameRoom(roomId: string, name: string): Promise<Room> {
    return this.call("rename_room", { room_id: roomId }, { body: { name } });
  }
  async deleteRoom(roomId: string): Promise<void> {
    await this.call("delete_room", { room_id: roomId });
  }
  async joinRoom(roomId: string): Promise<void> {
    await this.call("join_room", { room_id: roomId });
  }
  async leaveRoom(roomId: string): Promise<void> {
    await this.call("leave_room", { room_id: roomId });
  }
  async markRead(roomId: string, seq: number): Promise<void> {
    await this.call("mark_read", { room_id: roomId }, { body: { seq } });
  }
  openDirectRoom(userId: string): Promise<Room> {
    return this.call("open_direct_room", {}, { body: { user_id: userId } });
  }
  listMembers(roomId: string, options: { cursor?: string; limit?: number } = {}): Promise<MemberList> {
    return this.call("list_members", { room_id: roomId }, { query: options });
  }
  async addMember(roomId: string, userId: string): Promise<void> {
    await this.call("add_member", { room_id: roomId, user_id: userId });
  }
  async removeMember(roomId: string, userId: string): Promise<void> {
    await this.call("remove_member", { room_id: roomId, user_id: userId });
  }

  // Messages

  /** Stores a message; a retry with the same `clientMsgId` answers the stored one and
   * never stores it twice. */
  sendMessage(
    roomId: string,
    text: string,
    options: { clientMsgId?: string; replyTo?: string; attachmentIds?: string[] } = {},
  ): Promise<Message> {
    const body = {
      text,
      client_msg_id: options.clientMsgId,
      reply_to: options.replyTo,
      attachment_ids: options.attachmentIds,
    };
    return this.call("send_message", { room_id: roomId }, { body });
  }
  listMessages(
    roomId: string,
    options: { beforeSeq?: number; afterSeq?: number; limit?: number } = {},
  ): Promise<MessagePage> {
    const query = { before_seq: options.beforeSeq, after_seq: options.afterSeq, limit: options.limit };
    return this.call("list_messages", { room_id: roomId }, { query });
  }
  searchMessages(roomId: string, q: string, options: { limit?: number } = {}): Promise<MessagePage> {
    return this.call("search_messages", { room_id: roomId }, { query: { q, limit: options.limit } });
  }
  editMessage(roomId: string, messageId: string, text: string): Promise<Message> {
    const ids = { room_id: roomId, message_id: messageId };
    return this.call("edit_message", ids, { body: { text } });
  }
  deleteMessage(roomId: string, messageId: string): Promise<Message> {
    return this.call("delete_message", { room_id: roomId, message_id: messageId });
  }
  addReaction(roomId: string, messageId: string, emoji: string): Promise<Message> {
    return this.call("add_reaction", { room_id: roomId, message_id: messageId, emoji });
  }
  removeReaction(roomId: string, messageId: string, emoji: string): Promise<Message> {
    return this.call("remove_reaction", { room_id: roomId, message_id: messageId, emoji });
  }

  // Lists and presence

  listMyRooms(options: { cursor?: string; limit?: number } = {}): Promise<MyRoomList> {
    return this.call("list_my_rooms", {}, { query: options });
  }
  listOnlineUsers(options: { cursor?: string; limit?: number } = {}): Promise<OnlineUserList> {
    return this.call("list_online_users", {}, { query: options });
  }
  listRoomPresence(roomId: string): Promise<UserList> {
    return this.call("list_room_presence", { room_id: roomId });
  }
  createWsTicket(): Promise<Ticket> {
    return this.call("create_ws_ticket");
  }

  // Bots

  createBot(username: string, displayName?: string): Promise<BotKey> {
    return this.call("create_bot", {}, { body: { username, display_name: displayName } });
  }
  listBots(): Promise<BotList> {
    return this.call("list_bots");
  }
  replaceBotToken(botId: string): Promise<BotKey> {
    return this.call("replace_bot_token", { id: botId });
  }
  async deleteBot(botId: string): Promise<void> {
    await this.call("delete_bot", { id: botId });
  }

  // Webhooks

  createWebhook(roomId: string, url: string, events?: string[]): Promise<CreatedWebhook> {
    return this.call("create_webhook", { room_id: roomId }, { body: { url, events } });
  }
  listWebhooks(roomId: string): Promise<WebhookList> {
    return this.call("list_webhooks", { room_id: roomId });
  }
  async deleteWebhook(roomId: string, webhookId: string): Promise<void> {
    await this.call("delete_webhook", { room_id: roomId, id: webhookId });
  }
  rotateWebhookSecret(roomId: string, webhookId: string): Promise<RotatedSecret> {
    return this.call("rotate_webhook_secret", { room_id: roomId, id: webhookId });
  }
  async replayWebhook(roomId: string, webhookId: string, fromSeq: number): Promise<void> {
    await this.call("replay_webhook", { room_id: roomId, id: webhookId }, { body: { from_seq: fromSeq } });
  }
  listWebhookDeliveries(
    roomId: string,
    webhookId: string,
    options: { limit?: number } = {},
  ): Promise<Deliveries> {
    return this.call("list_webhook_deliveries", { room_id: roomId, id: webhookId }, { query: options });
  }

  // Notifications

  getNotificationSettings(roomId: string): Promise<NotificationSettings> {
    return this.call("get_notification_settings", { room_id: roomId });
  }
  setNotificationSettings(
    roomId: string,
    level: NotificationLevel,
    mutedUntil?: number,
  ): Promise<NotificationSettings> {
    return this.call(
      "set_notification_settings",
      { room_id: roomId },
      { body: { level, muted_until: mutedUntil } },
    );
  }
  getVapidPublicKey(): Promise<VapidPublicKey> {
    return this.call("get_vapid_public_key");
  }
  createPushSubscription(device: NewPushSubscription): Promise<PushSubscription> {
    return this.call("create_push_subscription", {}, { body: { ...device } });
  }
  listPushSubscriptions(): Promise<PushSubscriptionList> {
    return this.call("list_push_subscriptions");
  }
  async deletePushSubscription(subscriptionId: string): Promise<void> {
    await this.call("delete_push_subscription", { id: subscriptionId });
  }
}
