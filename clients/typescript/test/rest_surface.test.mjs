// natter.rest has a method for every /v1 operation of the server's /openapi.json, with
// the same HTTP method and path, that sends every parameter and body field the document
// names: the SDK cannot drift from the API unnoticed.

import assert from "node:assert/strict";
import { test } from "node:test";

import { Natter, OPERATIONS, Rest, methodName, nodes } from "./helpers.mjs";

// Each method called with every argument it takes: the request it makes must carry every
// query parameter and body field the document names for its operation.
const FULL_CALLS = {
  register: ["u", "p", "Display"],
  login: ["u", "p"],
  get_me: [],
  get_user: ["user"],
  create_room: ["n", "private", ["m"]],
  list_rooms: [{ cursor: "c", limit: 1 }],
  get_room: ["room"],
  rename_room: ["room", "n"],
  delete_room: ["room"],
  join_room: ["room"],
  leave_room: ["room"],
  mark_read: ["room", 1],
  open_direct_room: ["user"],
  list_members: ["room", { cursor: "c", limit: 1 }],
  add_member: ["room", "user"],
  remove_member: ["room", "user"],
  send_message: ["room", "t", { clientMsgId: "c", replyTo: "m", attachmentIds: ["a"] }],
  list_messages: ["room", { beforeSeq: 1, afterSeq: 1, limit: 1 }],
  search_messages: ["room", "q", { limit: 1 }],
  edit_message: ["room", "message", "t"],
  delete_message: ["room", "message"],
  add_reaction: ["room", "message", "e"],
  remove_reaction: ["room", "message", "e"],
  list_my_rooms: [{ cursor: "c", limit: 1 }],
  list_online_users: [{ cursor: "c", limit: 1 }],
  list_room_presence: ["room"],
  create_ws_ticket: [],
  create_bot: ["u", "Display"],
  list_bots: [],
  replace_bot_token: ["bot"],
  delete_bot: ["bot"],
  create_webhook: ["room", "http://h", ["message.created"]],
  list_webhooks: ["room"],
  delete_webhook: ["room", "hook"],
  rotate_webhook_secret: ["room", "hook"],
  replay_webhook: ["room", "hook", 1],
  list_webhook_deliveries: ["room", "hook", { limit: 1 }],
  get_notification_settings: ["room"],
  set_notification_settings: ["room", "all", 1],
  get_vapid_public_key: [],
  create_push_subscription: [
    { kind: "webpush", endpoint: "https://p", keys: { p256dh: "k", auth: "a" }, token: "t" },
  ],
  list_push_subscriptions: [],
  delete_push_subscription: ["device"],
};

function resolve(document, schema) {
  while (schema && schema.$ref) {
    schema = document.components.schemas[schema.$ref.split("/").at(-1)];
  }
  return schema ?? {};
}

/** The request `rest[name](...args)` makes, without sending it. */
async function recorded(name, args) {
  let request;
  const fetch = async (url, init) => {
    request = { url: new URL(url), method: init.method, body: init.body ? JSON.parse(init.body) : {} };
    return new Response("{}", { status: 200 });
  };
  const rest = new Rest("http://sdk.invalid", async () => "token", 1000, fetch);
  await rest[name](...args);
  return request;
}

// Operations the SDK leaves out on purpose, with the reason. None today.
const LEFT_OUT = {};

test("every /v1 operation has a method with its HTTP method, path and parameters", async () => {
  const reply = await fetch(`${nodes()[2]}/openapi.json`, { signal: AbortSignal.timeout(10_000) });
  assert.equal(reply.status, 200);
  const document = await reply.json();
  const rest = new Natter({ baseUrl: nodes()[2] }).rest;
  const seen = new Set();
  const problems = [];
  for (const [path, methods] of Object.entries(document.paths)) {
    if (!path.startsWith("/v1/")) continue;
    for (const [method, operation] of Object.entries(methods)) {
      const id = operation.operationId;
      seen.add(id);
      if (id in LEFT_OUT) continue;
      const name = methodName(id);
      if (!(id in OPERATIONS) || typeof rest[name] !== "function") {
        problems.push(`${id}: no method rest.${name}`);
        continue;
      }
      const [sdkMethod, sdkPath] = OPERATIONS[id];
      if (sdkMethod !== method.toUpperCase() || sdkPath !== path) {
        problems.push(`${id}: the SDK has ${sdkMethod} ${sdkPath}, the API ${method} ${path}`);
      }
      // The request the method makes carries every parameter and body field.
      if (!(id in FULL_CALLS)) {
        problems.push(`${id}: no entry in FULL_CALLS`);
        continue;
      }
      const request = await recorded(name, FULL_CALLS[id]);
      if (request.method !== method.toUpperCase()) problems.push(`${id}: sent as ${request.method}`);
      const pattern = new RegExp(`^${path.replace(/\{\w+\}/g, "[^/]+")}$`);
      if (!pattern.test(request.url.pathname)) problems.push(`${id}: sent to ${request.url.pathname}`);
      for (const parameter of operation.parameters ?? []) {
        if (parameter.in === "path" && !sdkPath.includes(`{${parameter.name}}`)) {
          problems.push(`${id}: no path parameter ${parameter.name}`);
        }
        if (parameter.in === "query" && !request.url.searchParams.has(parameter.name)) {
          problems.push(`${id}: never sends the query parameter ${parameter.name}`);
        }
      }
      for (const content of Object.values(operation.requestBody?.content ?? {})) {
        for (const field of Object.keys(resolve(document, content.schema).properties ?? {})) {
          if (!(field in request.body)) problems.push(`${id}: never sends the body field ${field}`);
        }
      }
    }
  }
  const stale = Object.keys(OPERATIONS).filter((id) => !seen.has(id));
  assert.deepEqual(stale, [], "the SDK calls operations the API no longer has");
  const methods = Object.getOwnPropertyNames(Rest.prototype).filter(
    (name) => name !== "constructor" && name !== "call",
  );
  const extra = methods.filter((name) => !Object.keys(OPERATIONS).some((id) => methodName(id) === name));
  assert.deepEqual(extra, [], "rest methods that name no operation");
  assert.deepEqual(problems, []);
  assert.ok(seen.size >= 37, `only ${seen.size} /v1 operations in the document`);
});
