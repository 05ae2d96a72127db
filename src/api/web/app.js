// Natter's web client: no framework, no build step, only the public API.
//
// How it keeps the server's promises on its side (SPEC §1):
// - One WebSocket carries every room of the chat list. Each room remembers the highest
//   `seq` it has seen (`lastSeq`); after any disconnect the client reconnects with
//   backoff and subscribes each room with `since_seq = lastSeq`, so the server replays
//   exactly what was missed. Messages are kept by `seq`, so nothing is shown twice.
// - A send is shown at once as pending, under a random `client_msg_id`. It stays
//   pending until its `send_ack` (or its own `message` event) arrives, and is sent
//   again with the same id after a reconnect: the server stores it once either way.
// - Everything another user wrote is put into the page as text (`textContent`), never
//   as HTML, and the page's Content-Security-Policy allows no script but this one.
"use strict";

/** The quick reactions each message offers. */
const EMOJIS = ["👍", "❤️", "😂"];
const PAGE = 50;
const RECEIPTS_UP_TO_MEMBERS = 20;
const TYPING_REFRESH_MS = 3000;
const TYPING_IDLE_MS = 4000;
const TYPING_EXPIRY_MS = 7000;
const ROOM_LIST_REFRESH_MS = 10000;
const PING_EVERY_MS = 20000;
const PONG_WITHIN_MS = 10000;

const $ = (id) => document.getElementById(id);

/** Builds an element: `el("li", {class: "x", dataset: {seq: 1}}, child, "text")`. */
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key in node && typeof value !== "string") node[key] = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child);
  }
  return node;
}

/** A random id that works outside secure contexts too (plain http on a LAN address). */
function randomId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function formatTime(ms) {
  const date = new Date(ms);
  const today = new Date().toDateString() === date.toDateString();
  const options = today ? { hour: "2-digit", minute: "2-digit" } : { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" };
  return date.toLocaleString([], options);
}

let toastTimer = 0;
function toast(text) {
  const box = $("toast");
  box.textContent = text;
  box.classList.add("show");
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => box.classList.remove("show"), 4000);
}

// ---------------------------------------------------------------------------------------
// State

const state = {
  token: localStorage.getItem("natter.token"),
  me: null,
  /** Room id → chat-list entry: the server's room plus `unread`, `lastSeq`, `lastRead`. */
  rooms: new Map(),
  /** Room id → what is loaded of an opened room (see `roomView`). */
  views: new Map(),
  /** The open room's id. */
  current: null,
  /** `client_msg_id` → a send not yet acknowledged: `{room_id, text, failed}`. */
  pending: new Map(),
  /** User id → `{display_name, username}` (or a promise while it is fetched). */
  users: new Map(),
  /** The message being edited: `{room_id, id}`. */
  editing: null,
};

/** The loaded part of a room: messages by seq, members, who is here and typing. */
function roomView(roomId) {
  let view = state.views.get(roomId);
  if (!view) {
    view = { messages: new Map(), oldest: null, hasMore: true, loading: false, loaded: false,
      members: new Map(), here: new Set(), typing: new Map() };
    state.views.set(roomId, view);
  }
  return view;
}

// ---------------------------------------------------------------------------------------
// REST

class ApiError extends Error {
  constructor(status, code, message) {
    super(message || `HTTP ${status}`);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  const headers = {};
  if (state.token) headers.authorization = `Bearer ${state.token}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(`/v1${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (response.status === 204) return null;
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const error = new ApiError(response.status, data?.error?.code, data?.error?.message);
    if (response.status === 401 && state.me) signOut("Your session ended. Please sign in again.");
    throw error;
  }
  return data;
}

function reportError(error) {
  if (error instanceof ApiError && error.status === 401) return;
  toast(error instanceof ApiError ? error.message : "The server could not be reached.");
}

// ---------------------------------------------------------------------------------------
// Users

function rememberUser(user) {
  if (user?.id) state.users.set(user.id, { display_name: user.display_name, username: user.username });
}

function userName(userId) {
  if (userId === state.me?.id) return "You";
  const known = state.users.get(userId);
  if (known && !(known instanceof Promise)) return known.display_name;
  if (!known) {
    const fetching = api("GET", `/users/${userId}`)
      .then((user) => { rememberUser(user); renderNames(); })
      .catch(() => state.users.set(userId, { display_name: "Someone", username: "" }));
    state.users.set(userId, fetching);
  }
  return "…";
}

// ---------------------------------------------------------------------------------------
// WebSocket: one socket for every room, resumed with since_seq after any disconnect.

const socket = {
  ws: null,
  open: false,
  connecting: false,
  attempt: 0,
  retryTimer: 0,
  pingTimer: 0,
  pongTimer: 0,

  async connect() {
    if (!state.token || this.connecting) return;
    // A single-use ticket, not the token, goes in the URL: URLs end up in access logs.
    this.connecting = true;
    let ticket;
    try {
      ({ ticket } = await api("POST", "/ws/tickets"));
    } catch {
      this.connecting = false;
      if (state.token) this.retryLater(0);
      return;
    }
    this.connecting = false;
    if (!state.token) return;
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}/v1/ws?ticket=${encodeURIComponent(ticket)}`);
    this.ws = ws;
    ws.onopen = () => {
      this.open = true;
      this.attempt = 0;
      setConnection("Connected", true);
      for (const room of state.rooms.values()) this.subscribe(room);
      for (const [clientMsgId, send] of state.pending) {
        if (!send.failed) this.send({ type: "send", room_id: send.room_id, text: send.text, client_msg_id: clientMsgId });
      }
      this.pingTimer = setInterval(() => this.ping(), PING_EVERY_MS);
      refreshRooms();
    };
    ws.onmessage = (event) => {
      let frame;
      try { frame = JSON.parse(event.data); } catch { return; }
      clearTimeout(this.pongTimer);
      onFrame(frame);
    };
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.open = false;
      this.ws = null;
      clearInterval(this.pingTimer);
      clearTimeout(this.pongTimer);
      for (const view of state.views.values()) view.typing.clear();
      renderTyping();
      if (event.code === 4001) {
        signOut("Your session expired. Please sign in again.");
        return;
      }
      if (!state.token) return;
      this.retryLater(event.code);
    };
  },

  retryLater(code) {
    // 1012 is a node draining: another is ready at once. Otherwise back off, with jitter
    // so that a node's clients do not all return in the same instant.
    const delay = code === 1012 ? 100 : Math.min(10000, 500 * 2 ** this.attempt) * (0.5 + Math.random() / 2);
    this.attempt += 1;
    setConnection("Reconnecting…", false);
    this.retryTimer = setTimeout(() => this.connect(), delay);
  },

  close() {
    clearTimeout(this.retryTimer);
    clearInterval(this.pingTimer);
    const ws = this.ws;
    this.ws = null;
    this.open = false;
    if (ws) ws.close(1000);
  },

  send(frame) {
    if (!this.open) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  },

  subscribe(room) {
    this.send({ type: "subscribe", room_id: room.id, since_seq: room.lastSeq });
  },

  /** A socket that stops answering (a dead NAT mapping, a vanished node) is closed. */
  ping() {
    if (!this.send({ type: "ping" })) return;
    clearTimeout(this.pongTimer);
    const ws = this.ws;
    this.pongTimer = setTimeout(() => ws.close(4000, "no pong"), PONG_WITHIN_MS);
  },
};

function setConnection(text, up) {
  const status = $("connection");
  status.textContent = text;
  status.classList.toggle("up", up);
}

function onFrame(frame) {
  switch (frame.type) {
    case "message": return onMessage(frame.message);
    case "send_ack": return onSendAck(frame.message);
    case "message_edited": return onMessageChanged(frame.message);
    case "message_deleted": return onMessageDeleted(frame);
    case "reaction": return onReaction(frame);
    case "typing": return onTyping(frame);
    case "read": return onRead(frame);
    case "presence": return onPresence(frame);
    case "error": return onErrorFrame(frame);
    case "unsubscribed": return onUnsubscribed(frame);
    default: return undefined; // subscribed, typing_ack, read_ack, pong
  }
}

function onMessage(message) {
  const room = state.rooms.get(message.room_id);
  if (message.client_msg_id && message.sender_id === state.me.id) state.pending.delete(message.client_msg_id);
  if (!room) return;
  rememberMessage(room, message);
  const view = state.views.get(room.id);
  if (view && !view.messages.has(message.seq)) view.messages.set(message.seq, message);
  if (room.id === state.current) {
    if (!view.members.has(message.sender_id)) loadMembersSoon(room.id);
    renderOpenRoom();
    markRead();
  }
  renderRoomList();
}

/** Our own send is stored. Only `message` events move `lastSeq` (they arrive in `seq`
 * order; an ack may overtake an earlier message of someone else's), so the ack shows
 * the message and ends its pending state; its `message` event comes before or after. */
function onSendAck(message) {
  state.pending.delete(message.client_msg_id);
  const view = state.views.get(message.room_id);
  if (view) view.messages.set(message.seq, message);
  if (message.room_id === state.current) renderOpenRoom(true);
}

/** Moves a room's watermark and unread count forward for a message seen live. */
function rememberMessage(room, message) {
  if (message.seq <= room.lastSeq) return;
  room.lastSeq = message.seq;
  room.last_seq = Math.max(room.last_seq, message.seq);
  room.last_message = message;
  room.last_activity_at = Math.max(room.last_activity_at, message.created_at);
  const fromOthers = message.sender_id !== state.me.id;
  if (fromOthers && !message.deleted && message.seq > room.lastRead) room.unread += 1;
}

function onMessageChanged(message) {
  const view = state.views.get(message.room_id);
  const known = view?.messages.get(message.seq);
  if (known) {
    // Live events carry `me: false` (they are serialised once per cluster); keep ours.
    const mine = new Set(known.reactions.filter((r) => r.me).map((r) => r.emoji));
    message.reactions = message.reactions.map((r) => ({ ...r, me: mine.has(r.emoji) }));
    view.messages.set(message.seq, message);
  }
  const room = state.rooms.get(message.room_id);
  if (room?.last_message?.id === message.id) room.last_message = message;
  renderOpenRoom();
  renderRoomList();
}

function onMessageDeleted({ room_id, message_id, seq }) {
  const view = state.views.get(room_id);
  const known = view?.messages.get(seq);
  if (known) view.messages.set(seq, { ...known, deleted: true, text: "", reactions: [] });
  const room = state.rooms.get(room_id);
  if (room?.last_message?.id === message_id) room.last_message = { ...room.last_message, deleted: true, text: "" };
  renderOpenRoom();
  renderRoomList();
}

function onReaction({ room_id, message_id, emoji, user_id, added }) {
  const view = state.views.get(room_id);
  if (!view) return;
  for (const [seq, message] of view.messages) {
    if (message.id !== message_id) continue;
    const reactions = message.reactions.map((r) => ({ ...r }));
    let entry = reactions.find((r) => r.emoji === emoji);
    if (!entry && added) reactions.push((entry = { emoji, count: 0, me: false }));
    if (!entry) return;
    entry.count += added ? 1 : -1;
    if (user_id === state.me.id) entry.me = added;
    view.messages.set(seq, { ...message, reactions: reactions.filter((r) => r.count > 0) });
    renderOpenRoom();
    return;
  }
}

function onTyping({ room_id, user_id, value }) {
  const view = roomView(room_id);
  clearTimeout(view.typing.get(user_id));
  if (value) {
    // The server sends `false` after 6 s without a refresh; this is the backstop.
    view.typing.set(user_id, setTimeout(() => { view.typing.delete(user_id); renderTyping(); }, TYPING_EXPIRY_MS));
  } else {
    view.typing.delete(user_id);
  }
  renderTyping();
}

function onRead({ room_id, user_id, seq }) {
  const member = state.views.get(room_id)?.members.get(user_id);
  if (member) member.last_read_seq = Math.max(member.last_read_seq, seq);
  if (room_id === state.current) renderOpenRoom();
}

function onPresence({ room_id, user_id, status }) {
  const view = roomView(room_id);
  if (status === "joined") view.here.add(user_id);
  else view.here.delete(user_id);
  if (room_id !== state.current) return;
  if (!view.members.has(user_id)) loadMembersSoon(room_id);
  renderMembers();
}

function onErrorFrame(frame) {
  const send = frame.ref && state.pending.get(frame.ref);
  if (send) {
    send.failed = frame.message || frame.code;
    renderOpenRoom();
    return;
  }
  if (frame.code === "not_member" || frame.code === "room_not_found") {
    refreshRooms();
    return;
  }
  if (frame.ref !== "typing" && frame.ref !== "read_upto") toast(frame.message || frame.code);
}

/** Why the server ended a subscription (SPEC §10), as the person reads it. */
const UNSUBSCRIBED_BECAUSE = {
  removed: "You were removed from this room.",
  left: "You left this room.",
  room_deleted: "This room was deleted.",
};

function onUnsubscribed({ room_id, reason }) {
  // Without a reason we asked for it; with one, we lost the room.
  refreshRooms();
  if (room_id === state.current && reason) toast(UNSUBSCRIBED_BECAUSE[reason] ?? "You are no longer in this room.");
}

// ---------------------------------------------------------------------------------------
// Chat list

/** Reloads the chat list: new rooms (a DM, an added membership) get subscribed. */
async function refreshRooms() {
  let page;
  try {
    page = await api("GET", "/me/rooms?limit=200");
  } catch (error) {
    return reportError(error);
  }
  const seen = new Set();
  for (const fresh of page.rooms) {
    seen.add(fresh.id);
    const known = state.rooms.get(fresh.id);
    if (!known) {
      const room = { ...fresh, unread: fresh.unread_count, lastSeq: fresh.last_seq, lastRead: fresh.last_read_seq };
      state.rooms.set(room.id, room);
      socket.subscribe(room);
      continue;
    }
    known.name = fresh.name;
    known.member_count = fresh.member_count;
    known.lastRead = Math.max(known.lastRead, fresh.last_read_seq);
    // The server's count is the truth for rooms not on screen (reads on other devices).
    if (known.id !== state.current && fresh.last_seq <= known.lastSeq) known.unread = fresh.unread_count;
  }
  for (const id of [...state.rooms.keys()]) {
    if (seen.has(id)) continue;
    state.rooms.delete(id);
    state.views.delete(id);
    if (id === state.current) openRoom(null);
  }
  renderRoomList();
}

function renderRoomList() {
  const list = $("room-list");
  const rooms = [...state.rooms.values()].sort((a, b) => b.last_activity_at - a.last_activity_at);
  $("no-rooms").hidden = rooms.length > 0;
  list.replaceChildren(...rooms.map((room) => {
    const last = room.last_message;
    const preview = !last ? "No messages yet" : last.deleted ? "Message deleted" : `${userName(last.sender_id)}: ${last.text}`;
    const unread = room.unread > 0 && room.id !== state.current;
    return el("li", {},
      el("button", {
        type: "button", class: "room", dataset: { roomId: room.id, kind: room.kind },
        "aria-current": room.id === state.current ? "true" : "false",
        "aria-label": `${room.name}${unread ? `, ${room.unread} unread` : ""}`,
        onclick: () => openRoom(room.id),
      },
      el("span", { class: "name" }, room.kind === "direct" ? `@ ${room.name}` : room.kind === "private" ? `🔒 ${room.name}` : `# ${room.name}`),
      unread ? el("span", { class: "unread" }, String(room.unread)) : el("span"),
      el("span", { class: "preview" }, preview)));
  }));
  const total = rooms.reduce((sum, room) => sum + (room.id === state.current ? 0 : room.unread), 0);
  document.title = total > 0 ? `(${total}) Natter` : "Natter";
}

// ---------------------------------------------------------------------------------------
// The open room

async function openRoom(roomId) {
  stopTyping();
  cancelEdit();
  state.current = roomId;
  $("app").classList.toggle("in-room", roomId !== null);
  $("composer").hidden = roomId === null;
  $("members-button").disabled = roomId === null;
  $("messages").replaceChildren();
  items.clear();
  const room = roomId && state.rooms.get(roomId);
  $("room-title").textContent = room ? room.name : "Pick a room";
  renderRoomMeta(room);
  $("history-status").textContent = "";
  renderRoomList();
  renderTyping();
  if (!room) { $("members").hidden = true; return; }
  const view = roomView(roomId);
  renderHistoryStatus(view);
  quietly(() => renderOpenRoom(true));
  $("text").focus();
  await Promise.all([
    view.loaded ? null : loadOlder(roomId),
    loadMembers(roomId),
  ]);
  markRead();
}

function renderRoomMeta(room) {
  $("room-meta").textContent = room ? `${room.kind} · ${room.member_count} member${room.member_count === 1 ? "" : "s"}` : "";
}

/** Loads the page of history before the oldest message held (the latest page at first). */
async function loadOlder(roomId) {
  const view = roomView(roomId);
  if (view.loading || (view.loaded && !view.hasMore)) return;
  view.loading = true;
  $("history-status").textContent = "Loading…";
  const query = view.oldest ? `before_seq=${view.oldest}&limit=${PAGE}` : `limit=${PAGE}`;
  try {
    const page = await api("GET", `/rooms/${roomId}/messages?${query}`);
    for (const message of page.messages) {
      if (!view.messages.has(message.seq)) view.messages.set(message.seq, message);
    }
    const first = page.messages[0]?.seq;
    view.oldest = first === undefined ? view.oldest : Math.min(first, view.oldest ?? first);
    view.hasMore = page.has_more;
    view.loaded = true;
  } catch (error) {
    reportError(error);
  } finally {
    view.loading = false;
  }
  if (roomId !== state.current) return;
  renderHistoryStatus(view);
  quietly(() => renderOpenRoom());
  // A first page shorter than the screen leaves nothing to scroll: fetch on.
  const history = $("history");
  if (view.hasMore && history.scrollHeight <= history.clientHeight) loadOlder(roomId);
}

/** Renders history without a screen reader reading it out: the message list is a live
 * region for new messages, not for pages loaded on request. */
function quietly(render) {
  const list = $("messages");
  list.setAttribute("aria-live", "off");
  render();
  requestAnimationFrame(() => list.setAttribute("aria-live", "polite"));
}

function renderHistoryStatus(view) {
  const status = $("history-status");
  if (!view.loaded) status.textContent = "Loading…";
  else if (view.hasMore) status.replaceChildren(el("button", { type: "button", class: "link", id: "load-older", onclick: () => loadOlder(state.current) }, "Load earlier messages"));
  else status.textContent = "This is the beginning of the room.";
}

/** Reloads the open room's members once for a burst of news about people not in it. */
let membersTimer = 0;
function loadMembersSoon(roomId) {
  clearTimeout(membersTimer);
  membersTimer = setTimeout(() => { if (roomId === state.current) loadMembers(roomId); }, 300);
}

async function loadMembers(roomId) {
  try {
    const [members, presence] = await Promise.all([
      api("GET", `/rooms/${roomId}/members?limit=200`),
      api("GET", `/rooms/${roomId}/presence`),
    ]);
    const view = roomView(roomId);
    view.members = new Map(members.members.map((m) => [m.user_id, m]));
    for (const m of members.members) rememberUser({ id: m.user_id, ...m });
    view.here = new Set(presence.users.map((u) => u.id));
    const room = state.rooms.get(roomId);
    if (room && !members.next_cursor) room.member_count = view.members.size;
    if (roomId === state.current) { renderRoomMeta(room); renderMembers(); renderNames(); }
  } catch (error) {
    reportError(error);
  }
}

/** Rendered list items by key (`s<seq>`, `p<client_msg_id>`): `{source, extra, node}`.
 * Messages are replaced, never mutated, when they change, so an item whose message
 * object and extras are unchanged is reused: re-rendering keeps focus and scroll. */
const items = new Map();

function item(key, source, extra, build) {
  const known = items.get(key);
  if (known && known.source === source && known.extra === extra) return known.node;
  const node = build();
  items.set(key, { source, extra, node });
  return node;
}

/** Makes `parent`'s children exactly `nodes`, moving only what must move. */
function reconcile(parent, nodes) {
  let cursor = parent.firstChild;
  for (const node of nodes) {
    if (node === cursor) cursor = cursor.nextSibling;
    else parent.insertBefore(node, cursor);
  }
  while (cursor) {
    const next = cursor.nextSibling;
    cursor.remove();
    cursor = next;
  }
}

/** Brings the message list in line with the open room's state, keeping the scroll. */
function renderOpenRoom(toBottom = false) {
  const roomId = state.current;
  if (!roomId) return;
  const view = roomView(roomId);
  const history = $("history");
  const list = $("messages");
  const atBottom = toBottom || history.scrollHeight - history.scrollTop - history.clientHeight < 40;
  const heightBefore = history.scrollHeight;
  const firstBefore = list.firstElementChild;
  const receipts = receiptsBySeq(view);
  const nodes = [...view.messages.values()].sort((a, b) => a.seq - b.seq).map((m) => {
    const readers = receipts.get(m.seq);
    const extra = `${userName(m.sender_id)}|${readers ?? ""}`;
    return item(`s${m.seq}`, m, extra, () => messageItem(m, readers));
  });
  for (const [id, send] of state.pending) {
    if (send.room_id === roomId) nodes.push(item(`p${id}`, send, String(send.failed), () => pendingItem(id, send)));
  }
  reconcile(list, nodes);
  if (atBottom) history.scrollTop = history.scrollHeight;
  else if (firstBefore && list.firstElementChild !== firstBefore) history.scrollTop += history.scrollHeight - heightBefore;
}

/** For rooms small enough to show them: seq → names of members who read up to it. */
function receiptsBySeq(view) {
  const result = new Map();
  if (view.members.size > RECEIPTS_UP_TO_MEMBERS || view.messages.size === 0) return result;
  const seqs = [...view.messages.keys()].sort((a, b) => a - b);
  for (const member of view.members.values()) {
    if (member.user_id === state.me.id || member.last_read_seq <= 0) continue;
    let at = null;
    for (const seq of seqs) { if (seq <= member.last_read_seq) at = seq; else break; }
    if (at === null) continue;
    if (!result.has(at)) result.set(at, []);
    result.get(at).push(member.display_name);
  }
  return result;
}

function messageItem(message, readers) {
  const mine = message.sender_id === state.me.id;
  const room = state.rooms.get(message.room_id);
  const canDelete = mine || room?.owner_id === state.me.id;
  const classes = ["msg", mine && "mine", message.deleted && "deleted"].filter(Boolean).join(" ");
  return el("li", { class: classes, dataset: { seq: message.seq, id: message.id } },
    el("div", { class: "meta" },
      el("span", { class: "sender" }, userName(message.sender_id)),
      el("time", { datetime: new Date(message.created_at).toISOString(), title: new Date(message.created_at).toLocaleString() }, formatTime(message.created_at)),
      message.edited_at && !message.deleted ? el("span", { class: "edited" }, "(edited)") : null),
    el("p", { class: "text" }, message.deleted ? "Message deleted" : message.text),
    message.deleted ? null : reactionChips(message),
    message.deleted ? null : el("div", { class: "tools" },
      el("span", { class: "palette", role: "group", "aria-label": "React" },
        ...EMOJIS.map((emoji) => el("button", { type: "button", class: "react", dataset: { emoji }, title: `React ${emoji}`, onclick: () => toggleReaction(message, emoji) }, emoji))),
      mine ? el("button", { type: "button", class: "edit", onclick: () => startEdit(message) }, "Edit") : null,
      canDelete ? el("button", { type: "button", class: "delete", onclick: (event) => deleteMessage(message, event.currentTarget) }, "Delete") : null),
    readers ? el("div", { class: "receipts" }, `Seen by ${readers.join(", ")}`) : null);
}

function reactionChips(message) {
  return el("div", { class: "reactions" }, ...message.reactions.map((r) =>
    el("button", { type: "button", class: "reaction", dataset: { emoji: r.emoji }, "aria-pressed": r.me ? "true" : "false",
      "aria-label": `${r.emoji} ${r.count}${r.me ? ", including you" : ""}`, onclick: () => toggleReaction(message, r.emoji) },
    `${r.emoji} ${r.count}`)));
}

function pendingItem(clientMsgId, send) {
  return el("li", { class: `msg mine ${send.failed ? "failed" : "pending"}`, dataset: { clientMsgId } },
    el("div", { class: "meta" }, el("span", { class: "sender" }, "You")),
    el("p", { class: "text" }, send.text),
    el("div", { class: "state" }, send.failed ? `Not sent: ${send.failed} ` : "Sending…",
      send.failed ? el("button", { type: "button", class: "link retry", onclick: () => retrySend(clientMsgId) }, "Retry") : null));
}

/** Re-renders what shows other users' names, once a name is learnt. */
function renderNames() {
  renderOpenRoom();
  renderRoomList();
  renderTyping();
}

function renderTyping() {
  const names = state.current ? [...roomView(state.current).typing.keys()].map(userName) : [];
  $("typing").textContent = names.length === 0 ? "" : names.length === 1 ? `${names[0]} is typing…` : `${names.slice(0, -1).join(", ")} and ${names.at(-1)} are typing…`;
}

function renderMembers() {
  const view = roomView(state.current);
  const room = state.rooms.get(state.current);
  const members = [...view.members.values()].sort((a, b) => a.display_name.localeCompare(b.display_name));
  $("member-list").replaceChildren(...members.map((m) => {
    const here = view.here.has(m.user_id);
    return el("li", { dataset: { userId: m.user_id } },
      el("span", { class: here ? "dot online" : "dot", role: "img", "aria-label": here ? "online" : "offline", title: here ? "online" : "offline" }),
      el("span", { class: "name" }, m.user_id === state.me.id ? `${m.display_name} (you)` : m.display_name),
      m.role === "owner" ? el("span", { class: "role" }, "owner") : null,
      m.user_id === state.me.id ? null : el("button", { type: "button", class: "quiet small dm", onclick: () => startDirect(m.user_id) }, "Message"));
  }));
  const owner = room?.owner_id === state.me.id;
  $("room-admin").hidden = !(owner && room.kind === "private");
  $("leave-button").hidden = owner || room?.kind === "direct";
}

// ---------------------------------------------------------------------------------------
// Actions

function submitComposer(event) {
  event.preventDefault();
  const input = $("text");
  const text = input.value;
  if (!text.trim() || !state.current) return;
  if (state.editing) {
    const { room_id, id } = state.editing;
    cancelEdit();
    api("PATCH", `/rooms/${room_id}/messages/${id}`, { text }).then(onMessageChanged, reportError);
  } else {
    const clientMsgId = randomId();
    state.pending.set(clientMsgId, { room_id: state.current, text, failed: null });
    socket.send({ type: "send", room_id: state.current, text, client_msg_id: clientMsgId });
    renderOpenRoom(true);
  }
  input.value = "";
  autosize();
  stopTyping();
}

function retrySend(clientMsgId) {
  const send = state.pending.get(clientMsgId);
  if (!send) return;
  send.failed = null;
  socket.send({ type: "send", room_id: send.room_id, text: send.text, client_msg_id: clientMsgId });
  renderOpenRoom();
}

async function toggleReaction(message, emoji) {
  const current = state.views.get(message.room_id)?.messages.get(message.seq) ?? message;
  const mine = current.reactions.some((r) => r.emoji === emoji && r.me);
  try {
    const updated = await api(mine ? "DELETE" : "PUT", `/rooms/${message.room_id}/messages/${message.id}/reactions/${encodeURIComponent(emoji)}`);
    const view = state.views.get(message.room_id);
    if (view) view.messages.set(updated.seq, updated);
    renderOpenRoom();
  } catch (error) {
    reportError(error);
  }
}

function startEdit(message) {
  state.editing = { room_id: message.room_id, id: message.id };
  $("editing").hidden = false;
  $("text").value = message.text;
  $("text").focus();
  autosize();
}

function cancelEdit() {
  if (!state.editing) return;
  state.editing = null;
  $("editing").hidden = true;
  $("text").value = "";
  autosize();
}

/** Deletes on the second click, so one slip of the finger deletes nothing. */
function deleteMessage(message, button) {
  if (button.dataset.armed !== "yes") {
    button.dataset.armed = "yes";
    button.textContent = "Really delete?";
    setTimeout(() => { button.dataset.armed = ""; button.textContent = "Delete"; }, 4000);
    return;
  }
  api("DELETE", `/rooms/${message.room_id}/messages/${message.id}`).then(
    (tombstone) => onMessageDeleted({ room_id: tombstone.room_id, message_id: tombstone.id, seq: tombstone.seq }),
    reportError,
  );
}

/** Marks the open room read up to its latest message, while the page is seen. */
function markRead() {
  const room = state.rooms.get(state.current);
  if (!room || document.visibilityState !== "visible") return;
  const history = $("history");
  if (history.scrollHeight - history.scrollTop - history.clientHeight > 40) return;
  const latest = Math.max(0, ...roomView(room.id).messages.keys());
  room.unread = 0;
  if (latest > room.lastRead) {
    room.lastRead = latest;
    socket.send({ type: "read_upto", room_id: room.id, seq: latest });
  }
  renderRoomList();
}

let typingSentAt = 0;
let typingIdleTimer = 0;
function onInput() {
  autosize();
  if (!state.current || state.editing) return;
  if ($("text").value === "") return stopTyping();
  const now = Date.now();
  if (now - typingSentAt > TYPING_REFRESH_MS) {
    typingSentAt = now;
    socket.send({ type: "typing", room_id: state.current, value: true });
  }
  clearTimeout(typingIdleTimer);
  typingIdleTimer = setTimeout(stopTyping, TYPING_IDLE_MS);
}

function stopTyping() {
  clearTimeout(typingIdleTimer);
  if (typingSentAt === 0 || !state.current) return;
  typingSentAt = 0;
  socket.send({ type: "typing", room_id: state.current, value: false });
}

function autosize() {
  const input = $("text");
  input.style.height = "auto";
  input.style.height = `${Math.min(input.scrollHeight + 2, 144)}px`;
}

async function startDirect(userId) {
  try {
    const room = await api("POST", "/dms", { user_id: userId });
    closeDialogs();
    await refreshRooms();
    openRoom(room.id);
  } catch (error) {
    reportError(error);
  }
}

async function joinRoom(roomId) {
  try {
    await api("POST", `/rooms/${roomId}/join`);
    closeDialogs();
    await refreshRooms();
    openRoom(roomId);
  } catch (error) {
    reportError(error);
  }
}

async function leaveRoom() {
  const roomId = state.current;
  try {
    await api("POST", `/rooms/${roomId}/leave`);
    socket.send({ type: "unsubscribe", room_id: roomId });
    $("members").hidden = true;
    await refreshRooms();
  } catch (error) {
    reportError(error);
  }
}

function closeDialogs() {
  for (const dialog of document.querySelectorAll("dialog[open]")) dialog.close();
}

/** A dialog listing users, each with one action (start a DM, add to the room). */
async function showPeople(title, hint, action, label) {
  const dialog = $("people-dialog");
  $("people-heading").textContent = title;
  $("people-hint").textContent = hint;
  const list = $("people-list");
  list.replaceChildren(el("li", { class: "muted" }, "Loading…"));
  dialog.showModal();
  try {
    const { users } = await api("GET", "/presence");
    users.forEach(rememberUser);
    const others = users.filter((u) => u.id !== state.me.id);
    list.replaceChildren(...(others.length ? others.map((u) => el("li", { dataset: { userId: u.id } },
      el("span", { class: "dot online", role: "img", "aria-label": "online" }),
      el("span", { class: "name" }, `${u.display_name} (@${u.username})`),
      el("button", { type: "button", onclick: () => action(u.id) }, label))) : [el("li", { class: "muted" }, "Nobody else is online.")]));
  } catch (error) {
    dialog.querySelector(".error").textContent = error.message;
  }
}

async function showBrowse() {
  const dialog = $("browse-dialog");
  const list = $("browse-list");
  list.replaceChildren(el("li", { class: "muted" }, "Loading…"));
  dialog.showModal();
  try {
    const { rooms } = await api("GET", "/rooms?limit=200");
    const open = rooms.filter((r) => r.kind === "public");
    list.replaceChildren(...(open.length ? open.map((r) => el("li", { dataset: { roomId: r.id } },
      el("span", { class: "name" }, `# ${r.name}`),
      el("span", { class: "muted small" }, `${r.member_count}`),
      state.rooms.has(r.id)
        ? el("button", { type: "button", onclick: () => { closeDialogs(); openRoom(r.id); } }, "Open")
        : el("button", { type: "button", class: "join", onclick: () => joinRoom(r.id) }, "Join"))) : [el("li", { class: "muted" }, "No public rooms yet.")]));
  } catch (error) {
    dialog.querySelector(".error").textContent = error.message;
  }
}

async function createRoom(event) {
  event.preventDefault();
  const form = $("new-room-form");
  const name = $("room-name").value;
  const kind = form.querySelector("input[name=kind]:checked").value;
  try {
    const room = await api("POST", "/rooms", { name, kind });
    form.reset();
    closeDialogs();
    await refreshRooms();
    openRoom(room.id);
  } catch (error) {
    form.querySelector(".error").textContent = error.message;
  }
}

// ---------------------------------------------------------------------------------------
// Signing in and out

async function authenticate(register) {
  const username = $("username").value.trim();
  const password = $("password").value;
  const displayName = $("display-name").value.trim();
  const body = { username, password };
  if (register && displayName) body.display_name = displayName;
  $("auth-error").textContent = "";
  try {
    const session = await api("POST", register ? "/auth/register" : "/auth/login", body);
    state.token = session.token;
    localStorage.setItem("natter.token", session.token);
    $("password").value = "";
    await start();
  } catch (error) {
    $("auth-error").textContent = error instanceof ApiError ? error.message : "The server could not be reached.";
  }
}

function signOut(reason) {
  socket.close();
  localStorage.removeItem("natter.token");
  Object.assign(state, { token: null, me: null, current: null, editing: null });
  for (const map of [state.rooms, state.views, state.pending, state.users]) map.clear();
  $("app").hidden = true;
  $("auth").hidden = false;
  $("auth-error").textContent = reason || "";
  $("username").focus();
}

async function start() {
  try {
    state.me = await api("GET", "/users/me");
  } catch {
    return signOut("");
  }
  rememberUser(state.me);
  $("me-name").textContent = state.me.display_name;
  $("auth").hidden = true;
  $("app").hidden = false;
  await refreshRooms();
  openRoom(null);
  socket.connect();
}

function bind() {
  $("auth-form").addEventListener("submit", (event) => { event.preventDefault(); authenticate(false); });
  $("register-button").addEventListener("click", () => authenticate(true));
  $("logout-button").addEventListener("click", () => signOut(""));
  $("composer").addEventListener("submit", submitComposer);
  $("text").addEventListener("input", onInput);
  $("text").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) submitComposer(event);
    if (event.key === "Escape") cancelEdit();
  });
  $("cancel-edit").addEventListener("click", cancelEdit);
  $("history").addEventListener("scroll", () => {
    if ($("history").scrollTop < 80 && state.current) loadOlder(state.current);
    markRead();
  });
  $("back-button").addEventListener("click", () => openRoom(null));
  $("members-button").addEventListener("click", () => {
    const panel = $("members");
    panel.hidden = !panel.hidden;
    $("members-button").setAttribute("aria-expanded", String(!panel.hidden));
    if (!panel.hidden) renderMembers();
  });
  $("close-members").addEventListener("click", () => { $("members").hidden = true; $("members-button").setAttribute("aria-expanded", "false"); });
  $("leave-button").addEventListener("click", leaveRoom);
  $("new-room-button").addEventListener("click", () => { $("new-room-form").querySelector(".error").textContent = ""; $("new-room-dialog").showModal(); });
  $("new-room-form").addEventListener("submit", createRoom);
  $("browse-button").addEventListener("click", showBrowse);
  $("new-dm-button").addEventListener("click", () => showPeople("Direct chat", "People online now:", startDirect, "Message"));
  $("add-member-button").addEventListener("click", () => showPeople("Add people", "People online now:", async (userId) => {
    try {
      await api("PUT", `/rooms/${state.current}/members/${userId}`);
      closeDialogs();
      loadMembers(state.current);
    } catch (error) {
      reportError(error);
    }
  }, "Add"));
  for (const button of document.querySelectorAll("dialog .close")) button.addEventListener("click", closeDialogs);
  document.addEventListener("visibilitychange", markRead);
  setInterval(() => { if (state.me && socket.open) refreshRooms(); }, ROOM_LIST_REFRESH_MS);
}

bind();
if (state.token) start(); else signOut("");
