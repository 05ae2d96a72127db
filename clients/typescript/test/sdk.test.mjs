// The SDK against real nodes: a REST and socket flow, one ticket-opened socket for several
// rooms, resume after a killed and a drained node, a lost ack, 4001 and 4008.

import assert from "node:assert/strict";
import { test } from "node:test";

import {
  ApiError,
  Balancer,
  Collector,
  Natter,
  PASSWORD,
  WebSocket,
  env,
  http,
  nodes,
  register,
  sleep,
  unique,
  waitUntil,
} from "./helpers.mjs";

const LIMIT = { timeout: 60_000 };
const FAST = { backoffBaseMs: 50, backoffMaxMs: 500 };

test("a full REST and socket flow", LIMIT, async () => {
  const base = nodes()[2];
  const anonymous = new Natter({ baseUrl: base, WebSocket });
  const aliceSession = await anonymous.rest.register(unique("alice"), PASSWORD, "Alice");
  const bobName = unique("bob");
  await anonymous.rest.register(bobName, PASSWORD);
  const bobSession = await anonymous.rest.login(bobName, PASSWORD);
  await assert.rejects(anonymous.rest.getMe(), (e) => e instanceof ApiError && e.status === 401 && e.code === "unauthorized");
  // `detail` is the envelope's sentence alone, for a page to show (the web client does).
  await assert.rejects(anonymous.rest.login(bobName, "not the password"), (e) =>
    e instanceof ApiError && e.status === 401 && e.detail.length > 0 && e.message === `${e.code}: ${e.detail}`);
  anonymous.close();
  const aliceId = aliceSession.user.id;
  const bobId = bobSession.user.id;

  const states = [];
  const alice = new Natter({ baseUrl: base, token: aliceSession.token, WebSocket });
  alice.on("state", (s) => states.push(s));
  const bob = new Natter({ baseUrl: base, token: async () => bobSession.token, WebSocket });
  try {
    assert.equal((await alice.rest.getMe()).id, aliceId);
    assert.equal((await alice.rest.getUser(bobId)).username, bobName);
    const room = await alice.rest.createRoom(unique("flow"), "public");
    await bob.rest.joinRoom(room.id);
    assert.equal((await bob.rest.getRoom(room.id)).member_count, 2);
    const members = await alice.rest.listMembers(room.id, { limit: 10 });
    assert.deepEqual(new Set(members.members.map((m) => m.user_id)), new Set([aliceId, bobId]));
    const listed = await bob.rest.listRooms({ limit: 200 });
    assert.ok(listed.rooms.some((r) => r.id === room.id));

    const aliceRoom = alice.room(room.id);
    const bobRoom = bob.room(room.id);
    assert.equal(alice.room(room.id), aliceRoom);
    const aliceEvents = new Collector(aliceRoom);
    const bobEvents = new Collector(bobRoom);
    assert.equal(await aliceRoom.subscribe(), 0);
    assert.equal(await bobRoom.subscribe({ sinceSeq: 0 }), 0);
    assert.deepEqual(states, ["connecting", "open"]);
    assert.equal((await aliceEvents.first("presence")).status, "joined");

    const sent = await aliceRoom.send("hello bob", { clientMsgId: "flow-1" });
    assert.equal(sent.seq, 1);
    assert.equal(sent.client_msg_id, "flow-1");
    assert.equal(sent.sender_id, aliceId);
    assert.equal(sent.text, "hello bob");
    const again = await aliceRoom.send("hello bob", { clientMsgId: "flow-1" });
    assert.equal(again.id, sent.id, "the same clientMsgId is the same message");
    assert.equal((await bobEvents.first("message")).message.id, sent.id);

    const reply = await bobRoom.send("hi alice", { replyTo: sent.id });
    assert.equal(reply.reply_to, sent.id);
    assert.equal(reply.seq, 2);

    await bobRoom.typing(true);
    const typing = await aliceEvents.first("typing");
    assert.deepEqual([typing.userId, typing.value], [bobId, true]);
    await bobRoom.markRead(2);
    const read = await aliceEvents.first("read");
    assert.deepEqual([read.userId, read.seq], [bobId, 2]);

    const edited = await alice.rest.editMessage(room.id, sent.id, "hello, bob");
    assert.notEqual(edited.edited_at, null);
    assert.equal((await bobEvents.first("edited")).message.text, "hello, bob");
    const reacted = await bob.rest.addReaction(room.id, sent.id, "👍");
    assert.equal(reacted.reactions[0].emoji, "👍");
    const reaction = await aliceEvents.first("reaction");
    assert.deepEqual([reaction.userId, reaction.emoji, reaction.added], [bobId, "👍", true]);
    await bob.rest.removeReaction(room.id, sent.id, "👍");
    const deleted = await alice.rest.deleteMessage(room.id, sent.id);
    assert.ok(deleted.deleted);
    assert.equal(deleted.text, "");
    assert.equal((await bobEvents.first("deleted")).messageId, sent.id);

    const page = await bob.rest.listMessages(room.id, { limit: 10 });
    assert.deepEqual(page.messages.map((m) => m.seq), [1, 2]);
    const found = await bob.rest.searchMessages(room.id, "alice");
    assert.deepEqual(found.messages.map((m) => m.seq), [2]);
    await alice.rest.markRead(room.id, 2);
    const mine = await alice.rest.listMyRooms();
    assert.ok(mine.rooms.some((r) => r.id === room.id && r.last_read_seq === 2));
    const online = await alice.rest.listOnlineUsers({ limit: 200 });
    assert.ok(online.users.some((u) => u.id === aliceId));
    const here = await alice.rest.listRoomPresence(room.id);
    const hereIds = new Set(here.users.map((u) => u.id));
    assert.ok(hereIds.has(aliceId) && hereIds.has(bobId));
    assert.ok((await alice.rest.createWsTicket()).ticket);

    assert.equal((await alice.rest.renameRoom(room.id, "renamed")).name, "renamed");
    const secret = await alice.rest.createRoom(unique("private"), "private");
    await alice.rest.addMember(secret.id, bobId);
    await alice.rest.removeMember(secret.id, bobId);
    assert.equal((await alice.rest.openDirectRoom(bobId)).kind, "direct");

    const bot = await alice.rest.createBot(unique("bot"), "Bot");
    assert.ok(bot.user.bot && bot.token.startsWith("ntb_"));
    assert.ok((await alice.rest.listBots()).bots.some((b) => b.user.id === bot.user.id));
    assert.notEqual((await alice.rest.replaceBotToken(bot.user.id)).token, bot.token);
    await alice.rest.deleteBot(bot.user.id);

    const hook = await alice.rest.createWebhook(room.id, "http://127.0.0.1:9/hook");
    assert.ok(hook.secret.startsWith("whsec_"));
    assert.deepEqual((await alice.rest.listWebhooks(room.id)).webhooks.map((w) => w.id), [hook.id]);
    assert.notEqual((await alice.rest.rotateWebhookSecret(room.id, hook.id)).secret, hook.secret);
    await alice.rest.replayWebhook(room.id, hook.id, 1);
    assert.ok("state" in (await alice.rest.listWebhookDeliveries(room.id, hook.id, { limit: 5 })));
    await alice.rest.deleteWebhook(room.id, hook.id);

    await bobRoom.unsubscribe();
    assert.equal((await bobEvents.first("unsubscribed")).reason, null);
    await bob.rest.leaveRoom(room.id);
    await alice.rest.deleteRoom(room.id);
    // Alice's subscription ends with the room.
    assert.equal((await aliceEvents.first("unsubscribed")).reason, "room_deleted");
    assert.deepEqual(aliceEvents.seqs(), [1, 2]);
    assert.deepEqual(bobEvents.seqs(), [1, 2]);
  } finally {
    alice.close();
    bob.close();
  }
  assert.equal(states.at(-1), "closed");
  assert.equal(alice.connections, 1);
});

test("one socket for several rooms is opened with a ticket", LIMIT, async () => {
  const base = nodes()[2];
  const owner = await register(base, "owner");
  const other = await register(base, "other");
  const natter = new Natter({ baseUrl: base, token: owner.token, WebSocket });
  try {
    const rooms = [];
    for (let i = 0; i < 3; i++) rooms.push(await natter.rest.createRoom(unique("r"), "public"));
    const collectors = new Map();
    for (const room of rooms) {
      collectors.set(room.id, new Collector(natter.room(room.id)));
      await natter.room(room.id).subscribe();
    }
    for (const room of rooms) {
      assert.equal((await http(base, "POST", `/v1/rooms/${room.id}/join`, { token: other.token })).status, 204);
      for (let n = 0; n < 3; n++) {
        const reply = await http(base, "POST", `/v1/rooms/${room.id}/messages`, {
          token: other.token,
          body: { text: `m${n}` },
        });
        assert.equal(reply.status, 201);
      }
    }
    for (const room of rooms) {
      const collector = collectors.get(room.id);
      await waitUntil(() => collector.seqs().length === 3, 10_000, "three messages a room");
      assert.deepEqual(collector.seqs(), [1, 2, 3]);
      assert.deepEqual(new Set(collector.events.map((e) => e.roomId)), new Set([room.id]));
    }
    assert.equal(natter.connections, 1, "one socket for every room");
    const url = natter.socketUrl ?? "";
    assert.ok(url.includes("/v1/ws?ticket="), url);
    assert.ok(!url.includes("token=") && !url.includes(owner.token), url);
  } finally {
    natter.close();
  }
});

test("a killed then a drained node lose, repeat and reorder nothing", LIMIT, async () => {
  const urls = nodes();
  const killPid = Number(env("NATTER_SDK_KILL_PID"));
  const drainPid = Number(env("NATTER_SDK_DRAIN_PID"));
  const survivor = urls[2];
  const balancer = new Balancer(urls, { allowed: [0] });
  const front = await balancer.start();
  const reader = await register(survivor, "reader");
  const writer = await register(survivor, "writer");
  let tokenCalls = 0;
  const states = [];
  const natter = new Natter({
    baseUrl: front,
    token: async () => {
      tokenCalls += 1;
      return reader.token;
    },
    WebSocket,
    ...FAST,
  });
  natter.on("state", (s) => states.push(s));
  try {
    const rooms = [];
    for (let i = 0; i < 2; i++) {
      const reply = await http(survivor, "POST", "/v1/rooms", {
        token: writer.token,
        body: { name: unique("f"), kind: "public" },
      });
      rooms.push(reply.json.id);
      await natter.rest.joinRoom(rooms.at(-1));
    }
    const collectors = new Map(rooms.map((room) => [room, new Collector(natter.room(room))]));
    for (const room of rooms) await natter.room(room).subscribe();
    // The socket (and fetch's kept-alive connections) all go to the node to be killed.
    assert.ok(balancer.links.size > 0);
    assert.ok([...balancer.links].every((l) => l.backend === 0));

    const total = 80;
    let written = 0;
    const writing = (async () => {
      for (let n = 0; n < total; n++) {
        const reply = await http(survivor, "POST", `/v1/rooms/${rooms[n % 2]}/messages`, {
          token: writer.token,
          body: { text: `w${n}` },
        });
        assert.equal(reply.status, 201, reply.text);
        written += 1;
        await sleep(20);
      }
    })();
    await waitUntil(() => collectors.get(rooms[0]).seqs().length >= 5, 10_000, "live messages");
    // The node under the socket dies mid-conversation; the balancer sends the reconnect
    // to the drainable node. The SDK's own sends during the outage wait and go once the
    // socket is back.
    balancer.allowed = [];
    process.kill(killPid, "SIGKILL");
    const own = [0, 1, 2].map((n) => natter.room(rooms[0]).send(`own ${n}`));
    const atKill = written;
    await waitUntil(() => written >= atKill + 6, 10_000, "outage");
    assert.equal(natter.state, "reconnecting");
    balancer.allowed = [1];
    await waitUntil(() => natter.connections >= 2 && natter.state === "open", 15_000, "reconnected");
    assert.ok([...balancer.links].every((l) => l.backend === 1));
    await sleep(300);
    // That node is drained (SIGTERM: sockets closed with 1012); the next is the survivor.
    balancer.allowed = [];
    process.kill(drainPid, "SIGTERM");
    const atDrain = written;
    await waitUntil(() => written >= atDrain + 6, 10_000, "outage");
    balancer.allowed = [2];
    await writing;
    const stored = await Promise.all(own);
    await waitUntil(() => natter.connections >= 3 && natter.state === "open", 15_000, "reconnected twice");
    for (const room of rooms) {
      const page = await natter.rest.listMessages(room, { limit: 200 });
      const last = page.messages.at(-1).seq;
      const collector = collectors.get(room);
      await waitUntil(() => collector.seqs().length >= last, 15_000, "all messages");
      await sleep(200);
      assert.deepEqual(
        collector.seqs(),
        Array.from({ length: last }, (_, i) => i + 1),
        "each seq once, in order",
      );
    }
    const history = (await natter.rest.listMessages(rooms[0], { limit: 200 })).messages;
    assert.deepEqual(
      history.filter((m) => m.text.startsWith("own ")).map((m) => m.id).sort(),
      stored.map((m) => m.id).sort(),
      "each own send stored once",
    );
    assert.ok(states.includes("reconnecting"));
    assert.equal(states.at(-1), "open");
    assert.equal(tokenCalls, 1, "the token function is called once; only 4001 calls it again");
  } finally {
    natter.close();
    await balancer.stop();
  }
});

test("a send whose ack is lost resolves once after the reconnect", LIMIT, async () => {
  const survivor = nodes()[2];
  const balancer = new Balancer([survivor]);
  const front = await balancer.start();
  const session = await register(survivor, "acker");
  const natter = new Natter({ baseUrl: front, token: session.token, WebSocket, ...FAST });
  try {
    const room = await natter.rest.createRoom(unique("ack"), "public");
    const handle = natter.room(room.id);
    const events = new Collector(handle);
    await handle.subscribe();
    // Every byte from the server to this client is dropped from now on: the send reaches
    // the node and is stored, its ack never arrives.
    balancer.mute();
    let resolutions = 0;
    const sending = handle.send("ack lost", { clientMsgId: "lost-1" }).then((m) => {
      resolutions += 1;
      return m;
    });
    const stored = async () =>
      (await http(survivor, "GET", `/v1/rooms/${room.id}/messages`, { token: session.token })).json.messages.filter(
        (m) => m.client_msg_id === "lost-1",
      );
    await waitUntil(async () => (await stored()).length > 0, 5000, "the send stored");
    await sleep(100);
    assert.equal(resolutions, 0, "the ack was dropped");
    balancer.cut();
    const message = await sending;
    assert.equal(message.client_msg_id, "lost-1");
    assert.equal(message.seq, 1);
    assert.equal(natter.connections, 2);
    await waitUntil(() => events.seqs().length === 1, 10_000, "the message event");
    await sleep(300);
    assert.deepEqual(events.seqs(), [1], "its event is delivered once");
    assert.equal(resolutions, 1, "the send resolves once");
    assert.equal((await stored()).length, 1, "stored once");
  } finally {
    natter.close();
    await balancer.stop();
  }
});

test("a socket gone silent is probed, dropped and resumed", LIMIT, async () => {
  const survivor = nodes()[2];
  const balancer = new Balancer([survivor]);
  const front = await balancer.start();
  const session = await register(survivor, "silent");
  // Muting also silences fetch's kept-alive connection, so the ticket request for the
  // reconnect waits out requestTimeoutMs once before a fresh connection gets through.
  const natter = new Natter({
    baseUrl: front,
    token: session.token,
    WebSocket,
    pingIntervalMs: 300,
    requestTimeoutMs: 1000,
    ...FAST,
  });
  try {
    const room = await natter.rest.createRoom(unique("silent"), "public");
    const handle = natter.room(room.id);
    const events = new Collector(handle);
    await handle.subscribe();
    // Idle but answered pings keep the socket.
    await sleep(1000);
    assert.equal(natter.connections, 1, "an idle socket that answers pings is kept");
    // The connection goes silent without closing (as a half-open one would): nothing is
    // cut, so only the SDK's own probe can notice.
    balancer.mute();
    const message = await handle.send("into the silence", { clientMsgId: "silent-1" });
    assert.equal(message.seq, 1);
    assert.equal(natter.lastCloseCode, 1006);
    assert.equal(natter.connections, 2);
    await waitUntil(() => events.seqs().length === 1, 10_000, "the message event");
    await sleep(300);
    assert.deepEqual(events.seqs(), [1]);
  } finally {
    natter.close();
    await balancer.stop();
  }
});

test("a 4001 close asks the token function again", LIMIT, async () => {
  const base = env("NATTER_SDK_SHORT_TOKEN_URL");
  const name = unique("short");
  assert.equal(
    (await http(base, "POST", "/v1/auth/register", { body: { username: name, password: PASSWORD } })).status,
    201,
  );
  const issued = [];
  const token = async () => {
    const login = await http(base, "POST", "/v1/auth/login", { body: { username: name, password: PASSWORD } });
    assert.equal(login.status, 200);
    issued.push(login.json.token);
    return issued.at(-1);
  };
  const states = [];
  const natter = new Natter({ baseUrl: base, token, WebSocket, ...FAST });
  natter.on("state", (s) => states.push(s));
  try {
    const room = await natter.rest.createRoom(unique("ttl"), "public");
    const handle = natter.room(room.id);
    const events = new Collector(handle);
    await handle.subscribe();
    await handle.send("before expiry");
    // The token lives 3 s: the server closes the socket with 4001 and the SDK asks the
    // token function for a new one, then buys a new ticket.
    await waitUntil(() => issued.length >= 2 && natter.state === "open", 10_000, "4001");
    assert.equal(natter.lastCloseCode, 4001);
    assert.ok(states.includes("reconnecting"));
    const after = await handle.send("after expiry");
    assert.equal(after.seq, 2);
    await waitUntil(() => events.seqs().length === 2, 10_000, "both messages");
    assert.deepEqual(events.seqs(), [1, 2]);
    assert.notEqual(issued[0], issued[1]);
    assert.ok(natter.connections >= 2);
  } finally {
    natter.close();
  }
});

test("a slow reader closed with 4008 resumes from its last seq", LIMIT, async () => {
  const slow = env("NATTER_SDK_SLOW_URL");
  const survivor = nodes()[2];
  const balancer = new Balancer([slow]);
  const front = await balancer.start();
  const session = await register(survivor, "slow");
  const natter = new Natter({ baseUrl: front, token: session.token, WebSocket, ...FAST });
  try {
    const room = await natter.rest.createRoom(unique("slow"), "public");
    const events = new Collector(natter.room(room.id));
    await natter.room(room.id).subscribe();
    // The client stops reading: the node's socket buffers fill, then its 64-event queue,
    // and it closes the socket with 4008 behind what is buffered.
    balancer.pause();
    const text = "x".repeat(3900);
    const total = 1200;
    for (let batch = 0; batch < total / 40; batch++) {
      await Promise.all(
        Array.from({ length: 40 }, async () => {
          const reply = await http(survivor, "POST", `/v1/rooms/${room.id}/messages`, {
            token: session.token,
            body: { text },
          });
          assert.equal(reply.status, 201, reply.text);
        }),
      );
    }
    balancer.resume();
    await waitUntil(() => events.seqs().length >= total, 30_000, "every message");
    await sleep(200);
    assert.deepEqual(events.seqs(), Array.from({ length: total }, (_, i) => i + 1), "each seq once, in order");
    assert.ok(natter.connections >= 2 && natter.state === "open");
    assert.equal(natter.lastCloseCode, 4008);
  } finally {
    natter.close();
    await balancer.stop();
  }
});
