// natter.rest has a method for every /v1 operation of the server's /openapi.json, with
// the same HTTP method and path: the SDK cannot drift from the API unnoticed.

import assert from "node:assert/strict";
import { test } from "node:test";

import { Natter, OPERATIONS, Rest, methodName, nodes } from "./helpers.mjs";

// Operations the SDK leaves out on purpose, with the reason. None today.
const LEFT_OUT = {};

test("every /v1 operation has a method with its HTTP method and path", async () => {
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
      // Each path parameter is one the SDK fills in.
      for (const parameter of operation.parameters ?? []) {
        if (parameter.in === "path" && !sdkPath.includes(`{${parameter.name}}`)) {
          problems.push(`${id}: no path parameter ${parameter.name}`);
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
