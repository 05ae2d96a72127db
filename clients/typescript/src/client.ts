// The client: REST calls, and one WebSocket for every room that resumes after any
// disconnect without losing, repeating or reordering a message (SPEC §13).

import { Rest } from "./rest";
import {
  ApiError,
  ClosedError,
  Message,
  RoomEventName,
  RoomEvents,
  State,
  TimeoutError,
} from "./types";

// Close codes (docs/API.md): 1012 the node is draining (another is ready at once), 4001
// the token expired, 4008 this socket fell behind (resume with since_seq).
const DRAINING = 1012;
const TOKEN_EXPIRED = 4001;
// A socket that stayed open this long starts the next backoff from the beginning.
const STABLE_AFTER_MS = 5000;

/** The part of the WebSocket API the client uses: the browser's and the `ws` package's. */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: any) => void) | null;
  onmessage: ((event: { data: any }) => void) | null;
  onclose: ((event: { code: number }) => void) | null;
  onerror: ((event: any) => void) | null;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;

export type TokenFunction = () => Promise<string>;

export interface NatterOptions {
  /** The node (or balancer) to talk to, such as `https://chat.example.com`. */
  baseUrl: string;
  /** A token, or an async function returning one: called again after a 4001 close or
   * a 401 answer. Not needed for `rest.register` and `rest.login`. */
  token?: string | TokenFunction;
  /** A WebSocket constructor: the global one by default (browsers, Node ≥ 22); in Node
   * 20 pass the `ws` package's. */
  WebSocket?: WebSocketConstructor;
  /** `fetch` (the global one by default). */
  fetch?: typeof fetch;
  /** Bound of each HTTP request, token call and socket handshake (default 10 s). */
  requestTimeoutMs?: number;
  /** Bound of an answer to a frame, a `send` included across reconnects (default 30 s). */
  ackTimeoutMs?: number;
  /** Backoff between reconnects: uniform in [0, min(max, base · 2^attempt)]. */
  backoffBaseMs?: number;
  backoffMaxMs?: number;
  /** At most this many sends wait for their ack; past it `send` rejects (default 256). */
  maxPendingSends?: number;
  /** A `ping` frame goes out after this long without a frame from the server; a socket
   * that then stays silent as long again is dropped and reconnected (default 20 s). */
  pingIntervalMs?: number;
}

type Listener<T> = (value: T) => void;

interface Deferred<T> {
  promise: Promise<T>;
  resolve(value: T): void;
  reject(error: unknown): void;
  settled: boolean;
}

function deferred<T>(): Deferred<T> {
  let resolve!: (value: T) => void;
  let reject!: (error: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  const d: Deferred<T> = {
    promise,
    settled: false,
    resolve(value) {
      if (!d.settled) {
        d.settled = true;
        resolve(value);
      }
    },
    reject(error) {
      if (!d.settled) {
        d.settled = true;
        reject(error);
      }
    },
  };
  // A rejection nobody awaits is not an unhandled one.
  promise.catch(() => undefined);
  return d;
}

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new TimeoutError(`${what}: no answer within ${ms} ms`)), ms);
    promise.then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      (error) => {
        clearTimeout(timer);
        reject(error);
      },
    );
  });
}

/** A random `client_msg_id`. Browsers offer `crypto.randomUUID` only in secure contexts
 * (https, localhost), but `getRandomValues` everywhere, such as plain http on a LAN. */
function newId(): string {
  const c = (globalThis as any).crypto;
  if (c && typeof c.randomUUID === "function") return c.randomUUID();
  const bytes = new Uint8Array(16);
  if (c && typeof c.getRandomValues === "function") c.getRandomValues(bytes);
  else for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

interface PendingSend {
  frame: { type: "send"; room_id: string; text: string; client_msg_id: string };
  answer: Deferred<Message>;
}

/** A Natter client: `new Natter({baseUrl, token})`. */
export class Natter {
  readonly baseUrl: string;
  readonly rest: Rest;
  /** The URL of the current (or last) socket: it carries a single-use ticket, never a token. */
  socketUrl: string | null = null;
  /** How many sockets this client opened so far. */
  connections = 0;
  /** The close code of the last socket that closed (1006: the connection broke). */
  lastCloseCode: number | null = null;

  private readonly tokenFn: TokenFunction | null;
  private token: string | undefined;
  private tokenCall: Promise<string> | null = null;
  private tokenStale = false;
  private readonly WS: WebSocketConstructor | undefined;
  private readonly requestTimeoutMs: number;
  /** @internal */ readonly ackTimeoutMs: number;
  private readonly backoffBaseMs: number;
  private readonly backoffMaxMs: number;
  private readonly maxPendingSends: number;
  private readonly pingIntervalMs: number;
  private lastFrameAt = 0;
  private dropSocket: (() => void) | null = null;
  private readonly rooms = new Map<string, RoomHandle>();
  private readonly stateListeners = new Set<Listener<State>>();
  private currentState: State = "closed";
  /** @internal */ ws: WebSocketLike | null = null;
  private running = false;
  private closing = false;
  private readonly wakers = new Set<() => void>();
  private readonly pending = new Map<string, PendingSend>();
  /** @internal */ readonly subscribing: RoomHandle[] = [];
  private readonly waiters: Record<"typing" | "read_upto", { roomId: string; answer: Deferred<void> }[]> = {
    typing: [],
    read_upto: [],
  };

  constructor(options: NatterOptions) {
    this.baseUrl = options.baseUrl.replace(/\/+$/, "");
    if (typeof options.token === "function") {
      this.tokenFn = options.token;
    } else {
      this.tokenFn = null;
      this.token = options.token;
    }
    this.WS = options.WebSocket ?? (globalThis as any).WebSocket;
    this.requestTimeoutMs = options.requestTimeoutMs ?? 10_000;
    this.ackTimeoutMs = options.ackTimeoutMs ?? 30_000;
    this.backoffBaseMs = options.backoffBaseMs ?? 250;
    this.backoffMaxMs = options.backoffMaxMs ?? 10_000;
    this.maxPendingSends = options.maxPendingSends ?? 256;
    this.pingIntervalMs = options.pingIntervalMs ?? 20_000;
    const fetchFn = options.fetch ?? globalThis.fetch.bind(globalThis);
    this.rest = new Rest(this.baseUrl, (refresh) => this.getToken(refresh), this.requestTimeoutMs, fetchFn);
  }

  /** The connection's state: `connecting`, `open`, `reconnecting` or `closed`. */
  get state(): State {
    return this.currentState;
  }

  /** Calls `listener(state)` on each change of the connection's state; returns a
   * function that removes it. */
  on(event: "state", listener: Listener<State>): () => void {
    if (event !== "state") throw new TypeError(`unknown event ${String(event)}: only "state"`);
    this.stateListeners.add(listener);
    return () => this.stateListeners.delete(listener);
  }

  /** The handle of a room (the same one for each call with that id). */
  room(roomId: string): RoomHandle {
    let room = this.rooms.get(roomId);
    if (room === undefined) {
      room = new RoomHandle(this, roomId);
      this.rooms.set(roomId, room);
    }
    return room;
  }

  /** Opens the socket now (it opens by itself on a room's first use) and waits, bounded,
   * until it is open. */
  async connect(): Promise<void> {
    this.ensureRunning();
    const deadline = Date.now() + this.ackTimeoutMs;
    while (this.currentState !== "open") {
      if (this.closing) throw new ClosedError("the client is closed");
      if (Date.now() > deadline) throw new TimeoutError("the socket did not open in time");
      await this.pause(20);
    }
  }

  /** Closes the socket (code 1000, not reconnected); pending calls reject with
   * `ClosedError`. */
  close(): void {
    if (this.closing) return;
    this.closing = true;
    const ws = this.ws;
    this.ws = null;
    if (ws !== null) {
      try {
        ws.close(1000);
      } catch {
        // already closed
      }
    }
    for (const wake of [...this.wakers]) wake();
    this.dropSocket?.();
    this.failAll(new ClosedError("the client is closed"));
    this.setState("closed");
  }

  // Tokens

  private async getToken(refresh: boolean): Promise<string | undefined> {
    if (this.tokenFn === null) return this.token;
    if (refresh || this.token === undefined) {
      if (this.tokenCall === null) {
        this.tokenCall = withTimeout(this.tokenFn(), this.requestTimeoutMs, "the token function");
        this.tokenCall.then(
          () => (this.tokenCall = null),
          () => (this.tokenCall = null),
        );
      }
      this.token = await this.tokenCall;
    }
    return this.token;
  }

  // The socket

  /** @internal */
  ensureRunning(): void {
    if (this.closing) throw new ClosedError("the client is closed");
    if (!this.running) {
      this.running = true;
      this.run().catch((error) => this.giveUp(error instanceof Error ? error : new Error(String(error))));
    }
  }

  private setState(state: State): void {
    if (state === this.currentState) return;
    this.currentState = state;
    for (const listener of [...this.stateListeners]) {
      try {
        listener(state);
      } catch (error) {
        console.error("natter: a state listener failed", error);
      }
    }
  }

  /** Exponential backoff with full jitter: uniform in [0, min(max, base · 2^attempt)]. */
  backoff(attempt: number): number {
    return Math.random() * Math.min(this.backoffMaxMs, this.backoffBaseMs * 2 ** attempt);
  }

  /** @internal Sleeps `ms`, or less if the client closes. */
  pause(ms: number): Promise<void> {
    if (this.closing) return Promise.resolve();
    return new Promise((resolve) => {
      const wake = () => {
        clearTimeout(timer);
        this.wakers.delete(wake);
        resolve();
      };
      const timer = setTimeout(wake, ms);
      this.wakers.add(wake);
    });
  }

  private async openSocket(): Promise<WebSocketLike> {
    if (this.WS === undefined) throw new ClosedError("no WebSocket constructor: pass options.WebSocket");
    if (this.tokenFn === null && this.token === undefined) {
      throw new ClosedError("a token is needed to open the socket");
    }
    if (this.tokenStale) {
      await this.getToken(true);
      this.tokenStale = false;
    }
    const { ticket } = await this.rest.createWsTicket();
    const url = `${this.baseUrl.replace(/^http/, "ws")}/v1/ws?ticket=${encodeURIComponent(ticket)}`;
    const ws = new this.WS(url);
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new TimeoutError("the socket's handshake timed out"));
        try {
          ws.close();
        } catch {
          // never opened
        }
      }, this.requestTimeoutMs);
      ws.onopen = () => {
        clearTimeout(timer);
        resolve();
      };
      ws.onerror = () => undefined;
      ws.onclose = (event) => {
        clearTimeout(timer);
        reject(new Error(`the socket closed during its handshake (${event.code})`));
      };
    });
    this.socketUrl = url;
    this.connections += 1;
    return ws;
  }

  private async run(): Promise<void> {
    let attempt = 0;
    this.setState("connecting");
    while (!this.closing) {
      let ws: WebSocketLike;
      try {
        ws = await this.openSocket();
      } catch (error) {
        if (this.closing) return;
        if (error instanceof ClosedError) return this.giveUp(error);
        if (this.tokenFn === null && error instanceof ApiError && error.status === 401) {
          return this.giveUp(new ClosedError("the token expired"));
        }
        this.setState("reconnecting");
        await this.pause(this.backoff(attempt));
        attempt += 1;
        continue;
      }
      if (this.closing) {
        ws.close(1000);
        return;
      }
      const openedAt = Date.now();
      let lost!: (code: number) => void;
      const closed = new Promise<number>((resolve) => {
        lost = resolve;
        ws.onclose = (event) => resolve(event.code);
      });
      ws.onmessage = (event) => {
        this.lastFrameAt = Date.now();
        this.onFrame(ws, event.data);
      };
      this.lastFrameAt = Date.now();
      // The browser's WebSocket has no ping: a silent connection is probed with a `ping`
      // frame, and given up (as 1006) if it stays silent.
      const heartbeat = setInterval(() => {
        const silent = Date.now() - this.lastFrameAt;
        if (silent > 2 * this.pingIntervalMs) {
          if (this.ws === ws) this.ws = null;
          try {
            ws.close(4000, "no answer to ping");
          } catch {
            // already closing
          }
          lost(1006);
        } else if (silent > this.pingIntervalMs) {
          this.sendFrame({ type: "ping" });
        }
      }, Math.max(50, this.pingIntervalMs / 4));
      this.dropSocket = () => lost(1000);
      this.ws = ws;
      this.setState("open");
      try {
        this.onOpen(ws);
      } catch {
        // The socket closed as it opened: onclose resumes.
      }
      const code = await closed;
      this.dropSocket = null;
      clearInterval(heartbeat);
      ws.onmessage = null;
      ws.onclose = null;
      if (this.ws === ws) this.ws = null;
      this.onSocketLost();
      if (this.closing) return;
      this.lastCloseCode = code;
      if (Date.now() - openedAt > STABLE_AFTER_MS) attempt = 0;
      if (code === TOKEN_EXPIRED) {
        if (this.tokenFn === null) return this.giveUp(new ClosedError("the token expired (4001)"));
        this.tokenStale = true;
      }
      this.setState("reconnecting");
      if (code === DRAINING && attempt === 0) {
        // Another node is ready at once; a little jitter spreads the herd.
        await this.pause(Math.random() * 200);
      } else {
        await this.pause(this.backoff(attempt));
      }
      attempt += 1;
    }
  }

  private giveUp(error: Error): void {
    this.closing = true;
    this.failAll(error);
    this.setState("closed");
  }

  private failAll(error: Error): void {
    for (const pending of this.pending.values()) pending.answer.reject(error);
    this.pending.clear();
    for (const room of this.rooms.values()) room.failWaiters(error);
    for (const list of Object.values(this.waiters)) {
      for (const waiter of list.splice(0)) waiter.answer.reject(error);
    }
  }

  /** Re-subscribes each room from the last `seq` it delivered, then sends again every
   * `send` not yet acknowledged, with its `client_msg_id`. */
  private onOpen(ws: WebSocketLike): void {
    for (const room of this.rooms.values()) {
      if (room.wanted) {
        this.subscribing.push(room);
        ws.send(JSON.stringify(room.subscribeFrame()));
      }
    }
    for (const pending of this.pending.values()) ws.send(JSON.stringify(pending.frame));
  }

  private onSocketLost(): void {
    this.subscribing.splice(0);
    for (const list of Object.values(this.waiters)) {
      for (const waiter of list.splice(0)) waiter.answer.reject(new Error("the socket closed"));
    }
  }

  /** @internal Sends a frame if the socket is open; false if it is not. */
  sendFrame(frame: object): boolean {
    const ws = this.ws;
    if (ws === null || ws.readyState !== 1) return false;
    try {
      ws.send(JSON.stringify(frame));
      return true;
    } catch {
      return false;
    }
  }

  private onFrame(ws: WebSocketLike, raw: unknown): void {
    if (this.ws !== ws) return;
    let frame: any;
    try {
      frame = JSON.parse(typeof raw === "string" ? raw : String(raw));
    } catch {
      return;
    }
    if (frame === null || typeof frame.type !== "string") return;
    const kind: string = frame.type;
    let room = typeof frame.room_id === "string" ? this.rooms.get(frame.room_id) : undefined;
    switch (kind) {
      case "message":
      case "message_edited": {
        const message: Message = frame.message;
        room = this.rooms.get(message.room_id);
        if (room === undefined) return;
        if (kind === "message") room.onMessage(message);
        else room.emit("edited", { roomId: room.id, message });
        return;
      }
      case "send_ack": {
        const pending = this.pending.get(frame.client_msg_id);
        if (pending !== undefined) {
          this.pending.delete(frame.client_msg_id);
          pending.answer.resolve(frame.message);
        }
        return;
      }
      case "subscribed":
        if (room !== undefined) {
          const index = this.subscribing.indexOf(room);
          if (index >= 0) this.subscribing.splice(index, 1);
          room.onSubscribed(Number(frame.last_seq));
        }
        return;
      case "unsubscribed":
        room?.onUnsubscribed(frame.reason ?? null);
        return;
      case "typing_ack":
      case "read_ack":
        this.answer(kind === "typing_ack" ? "typing" : "read_upto", frame.room_id);
        return;
      case "error":
        this.onError(frame);
        return;
    }
    if (room === undefined) return;
    if (kind === "message_deleted") {
      room.emit("deleted", { roomId: room.id, messageId: frame.message_id, seq: Number(frame.seq) });
    } else if (kind === "reaction") {
      room.emit("reaction", {
        roomId: room.id,
        messageId: frame.message_id,
        emoji: frame.emoji,
        userId: frame.user_id,
        added: Boolean(frame.added),
      });
    } else if (kind === "typing") {
      room.emit("typing", { roomId: room.id, userId: frame.user_id, value: Boolean(frame.value) });
    } else if (kind === "read") {
      room.emit("read", { roomId: room.id, userId: frame.user_id, seq: Number(frame.seq) });
    } else if (kind === "presence") {
      room.emit("presence", { roomId: room.id, userId: frame.user_id, status: frame.status });
    }
  }

  private answer(kind: "typing" | "read_upto", roomId: string, error?: Error): void {
    const list = this.waiters[kind];
    const index = error !== undefined ? 0 : list.findIndex((w) => w.roomId === roomId);
    if (index < 0 || index >= list.length) return;
    const [waiter] = list.splice(index, 1);
    if (error !== undefined) waiter.answer.reject(error);
    else waiter.answer.resolve();
  }

  private onError(frame: any): void {
    const ref: string = frame.ref ?? "";
    const error = new ApiError(0, String(frame.code), String(frame.message));
    const pending = this.pending.get(ref);
    if (pending !== undefined) {
      if (error.code === "unavailable") {
        // Safe to retry: the client_msg_id keeps it from being stored twice.
        void this.pause(200 + Math.random() * 800).then(() => {
          if (this.pending.get(ref) === pending) this.sendFrame(pending.frame);
        });
        return;
      }
      this.pending.delete(ref);
      pending.answer.reject(error);
    } else if (ref === "subscribe" && this.subscribing.length > 0) {
      const room = this.subscribing.shift()!;
      room.wanted = false;
      room.failWaiters(error);
    } else if (ref === "typing" || ref === "read_upto") {
      this.answer(ref, "", error);
    }
  }

  /** @internal */
  send(roomId: string, text: string, clientMsgId: string): Promise<Message> {
    const existing = this.pending.get(clientMsgId);
    if (existing !== undefined) return withTimeout(existing.answer.promise, this.ackTimeoutMs, "send");
    this.ensureRunning();
    if (this.pending.size >= this.maxPendingSends) {
      return Promise.reject(new Error(`more than ${this.maxPendingSends} sends wait for their ack`));
    }
    const pending: PendingSend = {
      frame: { type: "send", room_id: roomId, text, client_msg_id: clientMsgId },
      answer: deferred<Message>(),
    };
    this.pending.set(clientMsgId, pending);
    // Sent now if the socket is open, else by onOpen once it is.
    this.sendFrame(pending.frame);
    return withTimeout(pending.answer.promise, this.ackTimeoutMs, "send").finally(() => {
      if (this.pending.get(clientMsgId) === pending) this.pending.delete(clientMsgId);
    });
  }

  /** @internal Sends a `typing` or `read_upto` frame and waits for its ack; false if the
   * socket is down. */
  async ask(kind: "typing" | "read_upto", frame: { room_id: string }): Promise<boolean> {
    const answer = deferred<void>();
    const waiter = { roomId: frame.room_id, answer };
    this.waiters[kind].push(waiter);
    if (!this.sendFrame(frame)) {
      const list = this.waiters[kind];
      list.splice(list.indexOf(waiter), 1);
      return false;
    }
    await withTimeout(answer.promise, this.ackTimeoutMs, kind);
    return true;
  }
}

/** A room's handle: `natter.room(roomId)`. */
export class RoomHandle {
  /** The `seq` of the last message delivered (or the position subscribed at). */
  lastSeq: number | null = null;
  /** @internal */ wanted = false;
  private readonly listeners = new Map<RoomEventName, Set<(event: any) => void>>();
  private subscribeWaiters: Deferred<number>[] = [];
  private unsubscribeWaiters: Deferred<void>[] = [];

  constructor(
    private readonly natter: Natter,
    readonly id: string,
  ) {}

  /** Calls `fn(event)` for each event `name` of this room: `message` (each `seq` once,
   * in order), `edited`, `deleted`, `reaction`, `typing`, `read`, `presence`,
   * `unsubscribed`. Returns a function that removes it. */
  on<K extends RoomEventName>(name: K, fn: (event: RoomEvents[K]) => void): () => void {
    let set = this.listeners.get(name);
    if (set === undefined) {
      set = new Set();
      this.listeners.set(name, set);
    }
    set.add(fn);
    return () => set!.delete(fn);
  }

  /** @internal */
  emit<K extends RoomEventName>(name: K, event: RoomEvents[K]): void {
    for (const fn of [...(this.listeners.get(name) ?? [])]) {
      try {
        fn(event);
      } catch (error) {
        console.error(`natter: a ${name} listener failed`, error);
      }
    }
  }

  /** @internal */
  subscribeFrame(): { type: "subscribe"; room_id: string; since_seq?: number } {
    const frame: { type: "subscribe"; room_id: string; since_seq?: number } = {
      type: "subscribe",
      room_id: this.id,
    };
    if (this.lastSeq !== null) frame.since_seq = this.lastSeq;
    return frame;
  }

  /** Subscribes (and stays subscribed across reconnects): messages after `sinceSeq` are
   * replayed first, then live events follow. Resolves with the room's live position
   * (`subscribed.last_seq`). */
  async subscribe(options: { sinceSeq?: number } = {}): Promise<number> {
    const natter = this.natter;
    natter.ensureRunning();
    if (options.sinceSeq !== undefined) this.lastSeq = options.sinceSeq;
    this.wanted = true;
    const answer = deferred<number>();
    this.subscribeWaiters.push(answer);
    if (natter.ws !== null && natter.sendFrame(this.subscribeFrame())) natter.subscribing.push(this);
    return withTimeout(answer.promise, natter.ackTimeoutMs, "subscribe");
  }

  /** Ends the subscription; the room is no longer re-subscribed. */
  async unsubscribe(): Promise<void> {
    this.wanted = false;
    const answer = deferred<void>();
    this.unsubscribeWaiters.push(answer);
    if (this.natter.sendFrame({ type: "unsubscribe", room_id: this.id })) {
      await withTimeout(answer.promise, this.natter.ackTimeoutMs, "unsubscribe").catch(() => undefined);
    }
  }

  /** Sends a message and resolves with it as stored. Until it is acknowledged it is sent
   * again, with the same `clientMsgId`, after each reconnect: it is stored once and this
   * resolves once. The socket's `send` frame carries only text; a reply or attachments go
   * over REST (also idempotent by `client_msg_id`), retried on a failed connection. */
  async send(
    text: string,
    options: { clientMsgId?: string; replyTo?: string; attachmentIds?: string[] } = {},
  ): Promise<Message> {
    const clientMsgId = options.clientMsgId ?? newId();
    if (options.replyTo !== undefined || options.attachmentIds !== undefined) {
      return this.sendOverRest(text, { ...options, clientMsgId });
    }
    return this.natter.send(this.id, text, clientMsgId);
  }

  private async sendOverRest(
    text: string,
    options: { clientMsgId: string; replyTo?: string; attachmentIds?: string[] },
  ): Promise<Message> {
    const natter = this.natter;
    const deadline = Date.now() + natter.ackTimeoutMs;
    for (let attempt = 0; ; attempt++) {
      try {
        return await natter.rest.sendMessage(this.id, text, options);
      } catch (error) {
        const retry = !(error instanceof ApiError) || [502, 503, 504].includes(error.status);
        if (!retry || Date.now() > deadline) throw error;
      }
      await natter.pause(natter.backoff(attempt));
    }
  }

  /** Tells the room this user is (or stopped) typing; nothing while the socket is down
   * (typing is ephemeral). */
  async typing(value: boolean): Promise<void> {
    await this.natter.ask("typing", { type: "typing", room_id: this.id, value } as { room_id: string });
  }

  /** Moves this user's read watermark to `seq` (over the socket, or REST while it is down). */
  async markRead(seq: number): Promise<void> {
    const frame = { type: "read_upto", room_id: this.id, seq };
    if (!(await this.natter.ask("read_upto", frame))) await this.natter.rest.markRead(this.id, seq);
  }

  /** @internal */
  onMessage(message: Message): void {
    const seq = Number(message.seq);
    if (!this.wanted) return;
    if (this.lastSeq !== null && seq <= this.lastSeq) return; // a duplicate, or older
    this.lastSeq = seq;
    this.emit("message", { roomId: this.id, message });
  }

  /** @internal */
  onSubscribed(lastSeq: number): void {
    if (this.lastSeq === null) this.lastSeq = lastSeq;
    for (const waiter of this.subscribeWaiters.splice(0)) waiter.resolve(lastSeq);
  }

  /** @internal */
  onUnsubscribed(reason: string | null): void {
    if (reason !== null) this.wanted = false;
    for (const waiter of this.unsubscribeWaiters.splice(0)) waiter.resolve();
    this.emit("unsubscribed", { roomId: this.id, reason });
  }

  /** @internal */
  failWaiters(error: Error): void {
    for (const waiter of this.subscribeWaiters.splice(0)) waiter.reject(error);
    for (const waiter of this.unsubscribeWaiters.splice(0)) waiter.reject(error);
  }
}

