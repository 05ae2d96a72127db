// Wire types of Natter's API (docs/API.md), as the server spells them (snake_case).

export type State = "connecting" | "open" | "reconnecting" | "closed";
export type RoomKind = "public" | "private" | "direct";

// REST bodies. Each says what the OpenAPI document says, field by field (checked by
// test/rest_types.test.mjs): a field the document does not require is optional, even where
// the server sends it with a null value today.

export interface User {
  id: string;
  username: string;
  display_name: string;
  bot: boolean;
  online: boolean;
}
export interface Session {
  user: User;
  token: string;
  expires_at: number;
}
export interface Reaction {
  emoji: string;
  count: number;
  me: boolean;
}
export interface Message {
  id: string;
  room_id: string;
  seq: number;
  sender_id: string;
  text: string;
  created_at: number;
  edited_at?: number | null;
  deleted: boolean;
  client_msg_id?: string | null;
  reply_to?: string | null;
  reactions: Reaction[];
}
export interface MessagePage {
  messages: Message[];
  has_more: boolean;
}
export interface Room {
  id: string;
  name: string;
  kind: RoomKind;
  owner_id: string;
  created_at: number;
  last_seq: number;
  member_count: number;
}
export interface RoomList {
  rooms: Room[];
  next_cursor?: string;
}
export interface MyRoom extends Room {
  unread_count: number;
  last_read_seq: number;
  last_message?: Message;
  last_activity_at: number;
  notifications: NotificationSettings;
}
export type NotificationLevel = "all" | "mentions" | "none";
/** What notifies a member of a room while they are away: their `level` (by default
 * `all` in direct rooms, `mentions` elsewhere), and nothing before `muted_until`. */
export interface NotificationSettings {
  level: NotificationLevel;
  muted_until?: number | null;
}
export interface MyRoomList {
  rooms: MyRoom[];
  next_cursor?: string;
}
export type Role = "owner" | "member";
export interface Member {
  user_id: string;
  username: string;
  display_name: string;
  role: Role;
  online: boolean;
  joined_at: number;
  /** The highest `seq` this member has marked read: what read receipts show. */
  last_read_seq: number;
}
export interface MemberList {
  members: Member[];
  next_cursor?: string;
}
/** A room's users online (`listRoomPresence`): one page. */
export interface UserList {
  users: User[];
}
/** Users online anywhere (`listOnlineUsers`), a page at a time. */
export interface OnlineUserList {
  users: User[];
  next_cursor?: string;
}
export interface Ticket {
  ticket: string;
  expires_at: number;
}
export interface BotKey {
  user: User;
  token: string;
}
export interface Bot {
  user: User;
  created_at: number;
}
export interface BotList {
  bots: Bot[];
}
/** A webhook as listed (its secret is shown only when created or rotated). */
export interface Webhook {
  id: string;
  url: string;
  events?: string[] | null;
  state: string;
  created_at: number;
}
export interface CreatedWebhook {
  id: string;
  url: string;
  events?: string[] | null;
  secret: string;
  created_at: number;
}
export interface WebhookList {
  webhooks: Webhook[];
}
export interface RotatedSecret {
  secret: string;
}
/** The cluster's VAPID public key (base64url), for `PushManager.subscribe`'s
 * `applicationServerKey`. */
export interface VapidPublicKey {
  key: string;
}
export type PushKind = "webpush" | "fcm" | "apns";
/** A device to notify: a browser's `PushSubscription.toJSON()` with `kind: "webpush"`,
 * or a native app's device token. */
export type NewPushSubscription =
  | { kind: "webpush"; endpoint: string; keys: { p256dh: string; auth: string }; token?: never }
  | { kind: "fcm" | "apns"; token: string; endpoint?: never; keys?: never };
export interface PushSubscription {
  id: string;
  kind: PushKind;
  created_at: number;
}
export interface PushSubscriptionList {
  subscriptions: PushSubscription[];
}
export interface Delivery {
  event_id: string;
  type: string;
  attempt: number;
  status_code?: number | null;
  error?: string | null;
  duration_ms: number;
  at: number;
}
export interface Deliveries {
  state: string;
  deliveries: Delivery[];
}

// Room events, as `room.on(name, fn)` delivers them.
export interface RoomEvents {
  message: { roomId: string; message: Message };
  edited: { roomId: string; message: Message };
  deleted: { roomId: string; messageId: string; seq: number };
  reaction: { roomId: string; messageId: string; emoji: string; userId: string; added: boolean };
  typing: { roomId: string; userId: string; value: boolean };
  read: { roomId: string; userId: string; seq: number };
  presence: { roomId: string; userId: string; status: string };
  unsubscribed: { roomId: string; reason: string | null };
}
export type RoomEventName = keyof RoomEvents;

/** An error answer of the API (HTTP) or an `error` frame (status 0). `message` is
 * `code: detail`; `detail` is the server's sentence alone, to show to a person. */
export class ApiError extends Error {
  readonly detail: string;
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly field?: string,
  ) {
    super(`${code}: ${message}`);
    this.name = "ApiError";
    this.detail = message;
  }
}

/** The client was closed (by the app, or because its token expired for good). */
export class ClosedError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ClosedError";
  }
}

/** A bounded wait ran out. */
export class TimeoutError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "TimeoutError";
  }
}
