// Shared helpers for the SDK's tests. They run against real Natter nodes (on a real
// Postgres and NATS), named by environment variables that tests/api/typescript_sdk.rs sets:
//
// - NATTER_SDK_NODES: comma-separated base URLs of nodes on one database;
// - NATTER_SDK_KILL_PID / NATTER_SDK_DRAIN_PID: pids of two of those nodes (the first
//   and second URL) that a test may SIGKILL and SIGTERM;
// - NATTER_SDK_SHORT_TOKEN_URL: a node of that cluster whose tokens live 3 s;
// - NATTER_SDK_SLOW_URL: a node of that cluster that closes a socket 64 events behind.
//
// A test whose variables are missing fails: nothing is skipped.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { createRequire } from "node:module";
import net from "node:net";

export * from "../dist/index.js";

const require = createRequire(import.meta.url);
let ws;
try {
  ws = require("ws");
} catch {
  ws = require("/usr/share/nodejs/ws");
}
/** The `ws` package's constructor (Debian's node-ws), as a Node 20 app passes it. */
export const WebSocket = ws;

export const PASSWORD = "correct horse battery";

export function env(name) {
  const value = process.env[name];
  assert.ok(value, `${name} is not set: run these tests through tests/api/typescript_sdk.rs`);
  return value;
}

export function nodes() {
  return env("NATTER_SDK_NODES").split(",");
}

export function unique(prefix) {
  return `${prefix}${randomUUID().replaceAll("-", "").slice(0, 10)}`;
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export async function waitUntil(predicate, limitMs, what) {
  const deadline = Date.now() + limitMs;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${limitMs} ms`);
    await sleep(20);
  }
}

/** Raw HTTP to a node, outside the SDK. */
export async function http(base, method, path, { token, body } = {}) {
  const headers = {};
  if (token) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  const reply = await fetch(base + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(10_000),
  });
  const text = await reply.text();
  return { status: reply.status, json: text ? JSON.parse(text) : undefined, text };
}

/** A new user on the node at `base`: its session (`user`, `token`). */
export async function register(base, prefix = "u") {
  const reply = await http(base, "POST", "/v1/auth/register", {
    body: { username: unique(prefix), password: PASSWORD },
  });
  assert.equal(reply.status, 201, reply.text);
  return reply.json;
}

/** Records a room's events. */
export class Collector {
  constructor(room) {
    this.events = [];
    for (const name of [
      "message",
      "edited",
      "deleted",
      "reaction",
      "typing",
      "read",
      "presence",
      "unsubscribed",
    ]) {
      room.on(name, (event) => this.events.push({ name, ...event }));
    }
  }
  of(name) {
    return this.events.filter((e) => e.name === name);
  }
  seqs() {
    return this.of("message").map((e) => e.message.seq);
  }
  async first(name, limitMs = 10_000) {
    await waitUntil(() => this.of(name).length > 0, limitMs, `a ${name} event`);
    return this.of(name)[0];
  }
}

/** A tiny round-robin TCP balancer in front of the nodes, as a load balancer would be:
 * a connection goes to the next allowed node that accepts it. Tests choose which nodes
 * are allowed, mute a connection's server-to-client direction (its bytes are dropped, as
 * a lost ack would be), pause reading from the nodes, and cut every connection. */
export class Balancer {
  constructor(backends, { allowed } = {}) {
    this.backends = backends.map((url) => new URL(url));
    this.allowed = allowed ?? backends.map((_, i) => i);
    this.links = new Set();
    this.next = 0;
  }

  async start() {
    this.server = net.createServer((client) => void this.accept(client));
    await new Promise((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    return `http://127.0.0.1:${this.server.address().port}`;
  }

  async stop() {
    this.cut();
    await new Promise((resolve) => this.server.close(() => resolve()));
  }

  mute() {
    for (const link of this.links) link.muted = true;
  }

  /** Stops reading from the nodes on current connections: the nodes' writes block, as
   * a slow reader's would. */
  pause() {
    for (const link of this.links) link.upstream.pause();
  }

  resume() {
    for (const link of this.links) link.upstream.resume();
  }

  cut() {
    for (const link of this.links) {
      link.client.resetAndDestroy();
      link.upstream.resetAndDestroy();
    }
    this.links.clear();
  }

  async accept(client) {
    client.pause();
    client.on("error", () => undefined);
    let upstream = null;
    let index = -1;
    for (let i = 0; i < this.allowed.length; i++) {
      index = this.allowed[this.next % this.allowed.length];
      this.next += 1;
      const target = this.backends[index];
      upstream = await new Promise((resolve) => {
        const socket = net.connect({ host: target.hostname, port: Number(target.port) });
        const timer = setTimeout(() => {
          socket.destroy();
          resolve(null);
        }, 2000);
        socket.once("connect", () => {
          clearTimeout(timer);
          resolve(socket);
        });
        socket.once("error", () => {
          clearTimeout(timer);
          resolve(null);
        });
      });
      if (upstream) break;
    }
    if (!upstream) {
      client.resetAndDestroy();
      return;
    }
    upstream.on("error", () => undefined);
    const link = { client, upstream, backend: index, muted: false };
    this.links.add(link);
    client.on("data", (data) => upstream.write(data));
    upstream.on("data", (data) => {
      if (!link.muted) client.write(data);
    });
    const end = () => {
      this.links.delete(link);
      client.destroy();
      upstream.destroy();
    };
    client.on("close", end);
    upstream.on("close", end);
    client.resume();
  }
}
