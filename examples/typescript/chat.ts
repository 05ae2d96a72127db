// A terminal chat on the TypeScript SDK (@natter/client): signs in (registering the
// account the first time), joins a public room by name (creating it if nobody has),
// prints its last ten messages and then every new one, and sends each line typed.
// The socket survives node restarts: the SDK resumes the room from the last `seq`
// printed, so no line is lost or printed twice.
//
//   bash clients/typescript/build
//   esbuild examples/typescript/chat.ts --bundle --platform=node --format=esm \
//       --outfile=target/chat.mjs
//   NODE_PATH=/usr/share/nodejs node target/chat.mjs http://localhost:8080 alice \
//       'correct horse battery' general
//
// Node 20 has no global WebSocket, so the `ws` package's is passed in (Debian's
// `node-ws`, found through NODE_PATH). `tsc -p examples/typescript` type-checks this
// file in strict mode against the SDK's declarations in clients/typescript/dist/.

import { createRequire } from "node:module";
import { createInterface } from "node:readline";
import {
  ApiError,
  Natter,
  type Message,
  type Room,
  type Session,
  type WebSocketConstructor,
} from "@natter/client";

const HISTORY = 10;

const [baseUrl, username, password, roomName] = process.argv.slice(2);
if (!baseUrl || !username || !password || !roomName) {
  console.error("usage: node chat.mjs BASE_URL USERNAME PASSWORD ROOM_NAME");
  process.exitCode = 2;
} else {
  await chat(baseUrl, username, password, roomName);
}

/** Registers `username`, or logs in if the name is taken. */
async function signIn(natter: Natter, username: string, password: string): Promise<Session> {
  try {
    return await natter.rest.register(username, password);
  } catch (error) {
    if (error instanceof ApiError && error.status === 409) {
      return natter.rest.login(username, password);
    }
    throw error;
  }
}

/** The public room called `name` that this user can see, created if there is none. */
async function findOrCreateRoom(natter: Natter, name: string): Promise<Room> {
  let cursor: string | undefined;
  do {
    const page = await natter.rest.listRooms(cursor === undefined ? {} : { cursor });
    const found = page.rooms.find((room) => room.name === name && room.kind === "public");
    if (found) return found;
    cursor = page.next_cursor ?? undefined;
  } while (cursor !== undefined);
  return natter.rest.createRoom(name, "public");
}

async function chat(baseUrl: string, username: string, password: string, roomName: string) {
  const WebSocket = createRequire(import.meta.url)("ws") as WebSocketConstructor;
  const anonymous = new Natter({ baseUrl, WebSocket });
  let session = await signIn(anonymous, username, password);
  let signedIn = true;

  const natter = new Natter({
    baseUrl,
    WebSocket,
    // Asked once, then again whenever the token expired (a 4001 close or a 401 answer).
    token: async () => {
      if (!signedIn) session = await anonymous.rest.login(username, password);
      signedIn = false;
      return session.token;
    },
  });
  natter.on("state", (state) => {
    if (state !== "open") console.error(`(${state})`);
  });

  const info = await findOrCreateRoom(natter, roomName);
  await natter.rest.joinRoom(info.id);
  const room = natter.room(info.id);

  // Names are looked up once per sender; lines are printed in `seq` order even when a
  // lookup is slower than the next message.
  const names = new Map<string, Promise<string>>();
  const nameOf = (userId: string): Promise<string> => {
    let name = names.get(userId);
    if (name === undefined) {
      name = natter.rest.getUser(userId).then(
        (user) => user.username,
        () => userId,
      );
      names.set(userId, name);
    }
    return name;
  };
  let printed: Promise<void> = Promise.resolve();
  const print = (message: Message) => {
    const name = nameOf(message.sender_id);
    printed = printed.then(async () => {
      const text = message.deleted ? "(deleted)" : message.text;
      console.log(`#${message.seq} ${await name}: ${text}`);
    });
  };
  room.on("message", ({ message }) => print(message));
  room.on("unsubscribed", ({ reason }) => {
    console.error(`(left ${roomName}: ${reason ?? "unsubscribed"})`);
    natter.close();
  });

  await room.subscribe({ sinceSeq: Math.max(0, info.last_seq - HISTORY) });
  console.error(`(in ${roomName} as ${session.user.username}; type a line to send it)`);

  const lines = createInterface({ input: process.stdin, terminal: false });
  let sending: Promise<unknown> = Promise.resolve();
  lines.on("line", (line) => {
    const text = line.trim();
    if (text === "") return;
    // One at a time, so lines are stored in the order they were typed.
    sending = sending.then(() =>
      room.send(text).catch((error: unknown) => {
        const reason = error instanceof ApiError ? `${error.code}: ${error.message}` : String(error);
        console.error(`(not sent: ${reason})`);
      }),
    );
  });
  lines.on("close", () => {
    void sending.then(() => printed).then(() => natter.close());
  });
}
