// Natter's web client: the page's UI, on the TypeScript SDK. No framework, no build
// step: `natter.js` is the SDK's browser bundle (built from clients/typescript/ and
// committed beside this file), and this module only shows what it reports.
//
// The SDK keeps the server's promises on the client's side (SPEC §1, §13): one socket
// for every room, opened with a single-use ticket; after any disconnect it reconnects
// with backoff and jitter, re-subscribes each room from the last `seq` it delivered and
// delivers each message once, in order; a send not yet acknowledged goes again with its
// `client_msg_id` (stored once) and its promise settles once. What is left here:
// - a send is shown at once as pending, and as a message when `room.send` resolves, or
//   as failed, with a Retry that sends the same `client_msg_id` again;
// - messages are kept by `seq`, so history pages and live events never show one twice;
// - everything another user wrote is put into the page as text (`textContent`), never
//   as HTML, and the page's Content-Security-Policy allows no script but this origin's.
import { ApiError, Natter, TimeoutError } from "./natter.js";

/** The quick reactions each message offers. */
const EMOJIS = ["👍", "❤️", "😂"];
const PAGE = 50;
const RECEIPTS_UP_TO_MEMBERS = 20;
const TYPING_REFRESH_MS = 3000;
const TYPING_IDLE_MS = 4000;
const TYPING_EXPIRY_MS = 7000;
const ROOM_LIST_REFRESH_MS = 10000;

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

/** A send's `client_msg_id`, chosen here so that its pending item has a key; works
 * outside secure contexts too (plain http on a LAN address). */
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
  /** The signed-in user's SDK client: its socket and REST calls. */
  client: null,
  /** Room ids whose SDK handle has this page's listeners. */
  wired: new Set(),
  me: null,
  /** Room id → chat-list entry: the server's room plus `unread`, `lastRead` and
   * `following` (subscribed through the SDK). */
  rooms: new Map(),
  /** Room id → what is loaded of an opened room (see `roomView`). */
  views: new Map(),
  /** The open room's id. */
  current: null,
  /** `client_msg_id` → a send not yet stored, as the page shows it: `{room_id, text, failed}`. */
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
// The SDK

/** The signed-in client's REST calls (`natter.rest`). */
const rest = () => state.client.rest;

/** Awaits an SDK call; a 401 means the session is over. */
async function call(request) {
  try {
    return await request;
  } catch (error) {
    if (error instanceof ApiError && error.status === 401 && state.me) signOut("Your session ended. Please sign in again.");
    throw error;
  }
}

/** What went wrong, for a person. */
function describe(error) {
  if (error instanceof ApiError) return error.detail;
  if (error instanceof TimeoutError) return "no answer from the server";
  return "the server could not be reached";
}

function reportError(error) {
  if (error instanceof ApiError && error.status === 401) return;
  toast(error instanceof ApiError ? error.detail : "The server could not be reached.");
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
    const fetching = call(rest().getUser(userId))
      .then((user) => { rememberUser(user); renderNames(); })
      .catch(() => state.users.set(userId, { display_name: "Someone", username: "" }));
    state.users.set(userId, fetching);
  }
  return "…";
}

// ---------------------------------------------------------------------------------------
// Live events: the SDK's socket state and each room's events.

const CONNECTION_TEXT = { connecting: "Connecting…", open: "Connected", reconnecting: "Reconnecting…", closed: "Disconnected" };

function onConnectionState(connection) {
  setConnection(CONNECTION_TEXT[connection], connection === "open");
  if (connection === "open") {
    // Rooms created or joined elsewhere while the socket was down.
    refreshRooms();
    return;
  }
  // Typing is ephemeral: whoever was typing is forgotten with the socket.
  for (const view of state.views.values()) view.typing.clear();
  renderTyping();
  // The SDK gives up only when the token is refused (4001, or a 401 for a ticket); this
  // page's own close stops listening first.
  if (connection === "closed") signOut("Your session expired. Please sign in again.");
}

function setConnection(text, up) {
  const status = $("connection");
  status.textContent = text;
  status.classList.toggle("up", up);
}

/** Subscribes a room of the chat list from the `seq` the list showed; the SDK keeps it
 * subscribed, resuming from its last delivered `seq`, until it is unsubscribed. */
function follow(room) {
  const client = state.client;
  const handle = client.room(room.id);
  if (!state.wired.has(room.id)) {
    state.wired.add(room.id);
    handle.on("message", ({ message }) => onMessage(message));
    handle.on("edited", ({ message }) => onMessageChanged(message));
    handle.on("deleted", onMessageDeleted);
    handle.on("reaction", onReaction);
    handle.on("typing", onTyping);
    handle.on("read", onRead);
    handle.on("presence", onPresence);
    handle.on("unsubscribed", onUnsubscribed);
  }
  room.following = true;
  handle.subscribe({ sinceSeq: room.last_seq }).catch((error) => {
    // A timeout only means the socket is not open yet: the SDK subscribes when it is.
    // An error answer (access lost meanwhile, a subscribe budget spent) ends the
    // subscription: the next refresh of the list follows the room again if it is there.
    if (state.client !== client || !(error instanceof ApiError)) return;
    room.following = false;
    refreshRooms();
  });
}

/** A message of a followed room: the SDK delivers each `seq` once, in order. */
function onMessage(message) {
  const room = state.rooms.get(message.room_id);
  // Our own send, stored: its `message` event may come before `room.send` resolves.
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

/** Our own send is stored (`room.send` resolved). The chat list moves with `message`
 * events only, which come in `seq` order (an ack may overtake someone else's earlier
 * message), so this shows the message and ends its pending state; its `message`
 * event comes before or after. */
function onSent(message) {
  state.pending.delete(message.client_msg_id);
  const view = state.views.get(message.room_id);
  if (view) view.messages.set(message.seq, message);
  if (message.room_id === state.current) renderOpenRoom(true);
}

/** Moves a room's entry in the list and its unread count forward for a new message. */
function rememberMessage(room, message) {
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

function onMessageDeleted({ roomId, messageId, seq }) {
  const view = state.views.get(roomId);
  const known = view?.messages.get(seq);
  if (known) view.messages.set(seq, { ...known, deleted: true, text: "", reactions: [] });
  const room = state.rooms.get(roomId);
  if (room?.last_message?.id === messageId) room.last_message = { ...room.last_message, deleted: true, text: "" };
  renderOpenRoom();
  renderRoomList();
}

function onReaction({ roomId, messageId, emoji, userId, added }) {
  const view = state.views.get(roomId);
  if (!view) return;
  for (const [seq, message] of view.messages) {
    if (message.id !== messageId) continue;
    const reactions = message.reactions.map((r) => ({ ...r }));
    let entry = reactions.find((r) => r.emoji === emoji);
    if (!entry && added) reactions.push((entry = { emoji, count: 0, me: false }));
    if (!entry) return;
    entry.count += added ? 1 : -1;
    if (userId === state.me.id) entry.me = added;
    view.messages.set(seq, { ...message, reactions: reactions.filter((r) => r.count > 0) });
    renderOpenRoom();
    return;
  }
}

function onTyping({ roomId, userId, value }) {
  const view = roomView(roomId);
  clearTimeout(view.typing.get(userId));
  if (value) {
    // The server sends `false` after 6 s without a refresh; this is the backstop.
    view.typing.set(userId, setTimeout(() => { view.typing.delete(userId); renderTyping(); }, TYPING_EXPIRY_MS));
  } else {
    view.typing.delete(userId);
  }
  renderTyping();
}

function onRead({ roomId, userId, seq }) {
  const member = state.views.get(roomId)?.members.get(userId);
  if (member) member.last_read_seq = Math.max(member.last_read_seq, seq);
  if (roomId === state.current) renderOpenRoom();
}

function onPresence({ roomId, userId, status }) {
  const view = roomView(roomId);
  if (status === "joined") view.here.add(userId);
  else view.here.delete(userId);
  if (roomId !== state.current) return;
  if (!view.members.has(userId)) loadMembersSoon(roomId);
  renderMembers();
}

/** Why the server ended a subscription (SPEC §10), as the person reads it. */
const UNSUBSCRIBED_BECAUSE = {
  removed: "You were removed from this room.",
  left: "You left this room.",
  room_deleted: "This room was deleted.",
};

function onUnsubscribed({ roomId, reason }) {
  // Without a reason we asked for it; with one, we lost the room, and the SDK stops
  // following it: if the list still has it (access given back), it is followed again.
  const room = state.rooms.get(roomId);
  if (room && reason) room.following = false;
  refreshRooms();
  if (roomId === state.current && reason) toast(UNSUBSCRIBED_BECAUSE[reason] ?? "You are no longer in this room.");
}

// ---------------------------------------------------------------------------------------
// Chat list

/** Reloads the chat list: new rooms (a DM, an added membership) get subscribed. */
async function refreshRooms() {
  const client = state.client;
  if (!client) return;
  let page;
  try {
    page = await call(client.rest.listMyRooms({ limit: 200 }));
  } catch (error) {
    return reportError(error);
  }
  if (state.client !== client) return;
  const seen = new Set();
  for (const fresh of page.rooms) {
    seen.add(fresh.id);
    const known = state.rooms.get(fresh.id);
    if (!known) {
      const room = { ...fresh, unread: fresh.unread_count, lastRead: fresh.last_read_seq, following: false };
      state.rooms.set(room.id, room);
      follow(room);
      continue;
    }
    if (!known.following) follow(known);
    known.name = fresh.name;
    known.member_count = fresh.member_count;
    known.lastRead = Math.max(known.lastRead, fresh.last_read_seq);
    // The server's count is the truth for rooms not on screen (reads on other devices)
    // once the SDK has delivered every message it counts.
    const delivered = client.room(known.id).lastSeq ?? 0;
    if (known.id !== state.current && fresh.last_seq <= delivered) known.unread = fresh.unread_count;
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
  const query = view.oldest ? { beforeSeq: view.oldest, limit: PAGE } : { limit: PAGE };
  try {
    const page = await call(rest().listMessages(roomId, query));
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
      call(rest().listMembers(roomId, { limit: 200 })),
      call(rest().listRoomPresence(roomId)),
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
    call(rest().editMessage(room_id, id, text)).then(onMessageChanged, reportError);
  } else {
    const clientMsgId = randomId();
    state.pending.set(clientMsgId, { room_id: state.current, text, failed: null });
    send(clientMsgId);
    renderOpenRoom(true);
  }
  input.value = "";
  autosize();
  stopTyping();
}

/** Hands a pending send to the SDK, which sends it now or once the socket is back, and
 * again after each reconnect until it is stored. */
function send(clientMsgId) {
  const client = state.client;
  const pending = state.pending.get(clientMsgId);
  client.room(pending.room_id).send(pending.text, { clientMsgId }).then(
    (message) => { if (state.client === client) onSent(message); },
    (error) => {
      // Refused, or no answer within the SDK's bound: shown with a Retry, which sends
      // the same `client_msg_id`, so a send that did arrive is still stored once.
      if (state.client !== client || state.pending.get(clientMsgId) !== pending) return;
      pending.failed = describe(error);
      renderOpenRoom();
    },
  );
}

function retrySend(clientMsgId) {
  const pending = state.pending.get(clientMsgId);
  if (!pending) return;
  pending.failed = null;
  send(clientMsgId);
  renderOpenRoom();
}

async function toggleReaction(message, emoji) {
  const current = state.views.get(message.room_id)?.messages.get(message.seq) ?? message;
  const mine = current.reactions.some((r) => r.emoji === emoji && r.me);
  try {
    const args = [message.room_id, message.id, emoji];
    const updated = await call(mine ? rest().removeReaction(...args) : rest().addReaction(...args));
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
  call(rest().deleteMessage(message.room_id, message.id)).then(
    (tombstone) => onMessageDeleted({ roomId: tombstone.room_id, messageId: tombstone.id, seq: tombstone.seq }),
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
    // Over the socket, or over REST while it is down.
    state.client.room(room.id).markRead(latest).catch(() => undefined);
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
    sendTyping(true);
  }
  clearTimeout(typingIdleTimer);
  typingIdleTimer = setTimeout(stopTyping, TYPING_IDLE_MS);
}

function stopTyping() {
  clearTimeout(typingIdleTimer);
  if (typingSentAt === 0 || !state.current) return;
  typingSentAt = 0;
  sendTyping(false);
}

/** Typing is ephemeral: the SDK drops it while the socket is down, and so may we. */
function sendTyping(value) {
  state.client.room(state.current).typing(value).catch(() => undefined);
}

function autosize() {
  const input = $("text");
  input.style.height = "auto";
  input.style.height = `${Math.min(input.scrollHeight + 2, 144)}px`;
}

async function startDirect(userId) {
  try {
    const room = await call(rest().openDirectRoom(userId));
    closeDialogs();
    await refreshRooms();
    openRoom(room.id);
  } catch (error) {
    reportError(error);
  }
}

async function joinRoom(roomId) {
  try {
    await call(rest().joinRoom(roomId));
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
    await call(rest().leaveRoom(roomId));
    // Not awaited: the server also ends the subscription itself (`unsubscribed`, "left").
    state.client.room(roomId).unsubscribe().catch(() => undefined);
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
    const { users } = await call(rest().listOnlineUsers());
    users.forEach(rememberUser);
    const others = users.filter((u) => u.id !== state.me.id);
    list.replaceChildren(...(others.length ? others.map((u) => el("li", { dataset: { userId: u.id } },
      el("span", { class: "dot online", role: "img", "aria-label": "online" }),
      el("span", { class: "name" }, `${u.display_name} (@${u.username})`),
      el("button", { type: "button", onclick: () => action(u.id) }, label))) : [el("li", { class: "muted" }, "Nobody else is online.")]));
  } catch (error) {
    dialog.querySelector(".error").textContent = describe(error);
  }
}

async function showBrowse() {
  const dialog = $("browse-dialog");
  const list = $("browse-list");
  list.replaceChildren(el("li", { class: "muted" }, "Loading…"));
  dialog.showModal();
  try {
    const { rooms } = await call(rest().listRooms({ limit: 200 }));
    const open = rooms.filter((r) => r.kind === "public");
    list.replaceChildren(...(open.length ? open.map((r) => el("li", { dataset: { roomId: r.id } },
      el("span", { class: "name" }, `# ${r.name}`),
      el("span", { class: "muted small" }, `${r.member_count}`),
      state.rooms.has(r.id)
        ? el("button", { type: "button", onclick: () => { closeDialogs(); openRoom(r.id); } }, "Open")
        : el("button", { type: "button", class: "join", onclick: () => joinRoom(r.id) }, "Join"))) : [el("li", { class: "muted" }, "No public rooms yet.")]));
  } catch (error) {
    dialog.querySelector(".error").textContent = describe(error);
  }
}

async function createRoom(event) {
  event.preventDefault();
  const form = $("new-room-form");
  const name = $("room-name").value;
  const kind = form.querySelector("input[name=kind]:checked").value;
  try {
    const room = await call(rest().createRoom(name, kind));
    form.reset();
    closeDialogs();
    await refreshRooms();
    openRoom(room.id);
  } catch (error) {
    form.querySelector(".error").textContent = describe(error);
  }
}

// ---------------------------------------------------------------------------------------
// Signing in and out

async function authenticate(register) {
  const username = $("username").value.trim();
  const password = $("password").value;
  const displayName = $("display-name").value.trim();
  $("auth-error").textContent = "";
  // Signing in needs no token, so no socket: this client only makes the one REST call.
  const anonymous = new Natter({ baseUrl: location.origin }).rest;
  try {
    const session = register
      ? await anonymous.register(username, password, displayName || undefined)
      : await anonymous.login(username, password);
    state.token = session.token;
    localStorage.setItem("natter.token", session.token);
    $("password").value = "";
    await start();
  } catch (error) {
    $("auth-error").textContent = error instanceof ApiError ? error.detail : "The server could not be reached.";
  }
}

/** Stops listening to the client before closing it: its `closed` state means a refused
 * token only when the page did not ask for it. */
let stopWatchingConnection = null;

function signOut(reason) {
  const client = state.client;
  stopWatchingConnection?.();
  stopWatchingConnection = null;
  client?.close();
  localStorage.removeItem("natter.token");
  Object.assign(state, { token: null, client: null, me: null, current: null, editing: null });
  for (const map of [state.rooms, state.views, state.pending, state.users, state.wired]) map.clear();
  $("app").hidden = true;
  $("auth").hidden = false;
  $("auth-error").textContent = reason || "";
  $("username").focus();
}

async function start() {
  const client = new Natter({ baseUrl: location.origin, token: state.token });
  state.client = client;
  try {
    state.me = await client.rest.getMe();
  } catch (error) {
    return signOut(error instanceof ApiError && error.status === 401 ? "" : "The server could not be reached.");
  }
  rememberUser(state.me);
  $("me-name").textContent = state.me.display_name;
  $("auth").hidden = true;
  $("app").hidden = false;
  setConnection(CONNECTION_TEXT.connecting, false);
  stopWatchingConnection = client.on("state", onConnectionState);
  await refreshRooms();
  openRoom(null);
  // Rooms open the socket on their first use; with none yet, it opens now all the same,
  // so that the page says it is connected. The SDK bounds the wait; it keeps trying.
  client.connect().catch(() => undefined);
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
      await call(rest().addMember(state.current, userId));
      closeDialogs();
      loadMembers(state.current);
    } catch (error) {
      reportError(error);
    }
  }, "Add"));
  for (const button of document.querySelectorAll("dialog .close")) button.addEventListener("click", closeDialogs);
  document.addEventListener("visibilitychange", markRead);
  // Rooms others put us in (a direct chat, an added membership) have no event of
  // their own: the list is read again while the socket is up.
  setInterval(() => { if (state.me && state.client?.state === "open") refreshRooms(); }, ROOM_LIST_REFRESH_MS);
}

bind();
if (state.token) start(); else signOut("");
