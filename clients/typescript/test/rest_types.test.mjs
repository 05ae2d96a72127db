// natter.rest's hand-written types (src/types.ts) say what the server's /openapi.json
// says: each method's return type has, at every depth, the fields of the response schema
// of its operation, optional or not as there, of the same JSON type, nullable where it is
// and with the same enum values; and each method takes every required field of the
// operation's request body as a parameter it always sends, and each optional one as an
// optional parameter. The types are read with the TypeScript compiler's API (Debian's
// node-typescript), from src/, as tsconfig.json compiles them.

import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import { nodes } from "./helpers.mjs";

const require = createRequire(import.meta.url);
let ts;
try {
  ts = require("typescript");
} catch {
  ts = require("/usr/share/nodejs/typescript");
}

const CONFIG = fileURLToPath(new URL("../tsconfig.json", import.meta.url));
const REST = fileURLToPath(new URL("../src/rest.ts", import.meta.url));

// Annotation-only keywords: what an `allOf` may hold besides its one `$ref`.
const ANNOTATIONS = new Set(["description", "title", "example", "default", "readOnly", "writeOnly"]);

/** The SDK's sources as tsconfig.json compiles them, plus `extra` files. */
function compile(extra = []) {
  const { config, error } = ts.readConfigFile(CONFIG, ts.sys.readFile);
  assert.equal(error, undefined, "tsconfig.json reads");
  const parsed = ts.parseJsonConfigFileContent(config, ts.sys, dirname(CONFIG));
  const program = ts.createProgram([...parsed.fileNames, ...extra], { ...parsed.options, noEmit: true });
  return { program, checker: program.getTypeChecker() };
}

async function openapi() {
  const reply = await fetch(`${nodes()[0]}/openapi.json`, { signal: AbortSignal.timeout(10_000) });
  assert.equal(reply.status, 200);
  return reply.json();
}

/** Follows `$ref`s, and poem-openapi's `allOf: [{$ref}, {description}]`, which documents
 * a field of a referred type. */
function resolve(document, schema) {
  for (;;) {
    if (schema.$ref) {
      schema = document.components.schemas[schema.$ref.split("/").at(-1)];
    } else if (schema.allOf) {
      const refs = schema.allOf.filter((part) => part.$ref);
      const others = schema.allOf.filter((part) => !part.$ref);
      assert.ok(
        refs.length === 1 && others.every((part) => Object.keys(part).every((k) => ANNOTATIONS.has(k))),
        `an allOf this test does not know: ${JSON.stringify(schema)}`,
      );
      schema = refs[0];
    } else {
      return schema;
    }
  }
}

const camel = (name) => name.replace(/_([a-z])/g, (_, c) => c.toUpperCase());

/** How the TypeScript type `type` differs from the JSON schema `schema`, at `where`. */
function compare(checker, document, type, schema, where) {
  schema = resolve(document, schema);
  const problems = [];
  const { Null, Undefined, Any, Unknown, String, Number, BooleanLiteral } = ts.TypeFlags;
  let parts = type.isUnion() ? type.types : [type];
  const nullable = parts.some((part) => part.flags & Null);
  parts = parts.filter((part) => !(part.flags & (Null | Undefined)));
  if (nullable !== Boolean(schema.nullable)) {
    problems.push(`${where}: nullable ${nullable} in the SDK, ${!nullable} in the document`);
  }
  const shown = checker.typeToString(type);
  if (parts.some((part) => part.flags & (Any | Unknown))) {
    return [...problems, `${where}: ${shown} is untyped, the document says ${JSON.stringify(schema).slice(0, 120)}`];
  }
  if (schema.enum) {
    const values = parts.map((part) => (part.isStringLiteral() ? part.value : undefined));
    const same =
      !values.includes(undefined) &&
      values.length === schema.enum.length &&
      schema.enum.every((value) => values.includes(value));
    if (!same) problems.push(`${where}: ${shown}, the document's values are ${schema.enum.join(" | ")}`);
    return problems;
  }
  const single = parts.length === 1 ? parts[0] : undefined;
  switch (schema.type) {
    case "string":
    case "integer":
    case "number": {
      const flag = schema.type === "string" ? String : Number;
      if (!single || !(single.flags & flag)) problems.push(`${where}: ${shown}, the document's type is ${schema.type}`);
      return problems;
    }
    case "boolean":
      if (parts.length !== 2 || !parts.every((part) => part.flags & BooleanLiteral)) {
        problems.push(`${where}: ${shown}, the document's type is boolean`);
      }
      return problems;
    case "array":
      if (!single || single.symbol?.name !== "Array") return [...problems, `${where}: ${shown} is not an array`];
      return [...problems, ...compare(checker, document, checker.getTypeArguments(single)[0], schema.items, `${where}[]`)];
    case "object": {
      if (!single || !(single.flags & ts.TypeFlags.Object) || single.symbol?.name === "Array") {
        return [...problems, `${where}: ${shown} is not an object type`];
      }
      if (checker.getIndexInfosOfType(single).length > 0) {
        problems.push(`${where}: ${shown} has an index signature; name its fields instead`);
      }
      const fields = new Map(checker.getPropertiesOfType(single).map((p) => [p.name, p]));
      const properties = schema.properties ?? {};
      const required = new Set(schema.required ?? []);
      for (const name of Object.keys(properties)) {
        if (!fields.has(name)) problems.push(`${where}: ${shown} lacks \`${name}\``);
      }
      for (const [name, field] of fields) {
        if (!(name in properties)) {
          problems.push(`${where}: ${shown} has \`${name}\`, the document does not`);
          continue;
        }
        const optional = (field.flags & ts.SymbolFlags.Optional) !== 0;
        if (optional === required.has(name)) {
          problems.push(`${where}.${name}: ${required.has(name) ? "required" : "optional"} in the document`);
        }
        const fieldType = checker.getTypeOfSymbolAtLocation(field, field.valueDeclaration);
        problems.push(...compare(checker, document, fieldType, properties[name], `${where}.${name}`));
      }
      return problems;
    }
    default:
      assert.fail(`${where}: a schema this test does not know: ${JSON.stringify(schema)}`);
  }
}

/** Rest's methods: name, operationId (the `this.call("…")` it makes) and declaration. */
function restMethods(program) {
  const file = program.getSourceFile(REST);
  const rest = file.statements.find((s) => ts.isClassDeclaration(s) && s.name?.text === "Rest");
  const methods = [];
  for (const member of rest.members) {
    if (!ts.isMethodDeclaration(member) || member.name.getText(file) === "call") continue;
    let operationId;
    const visit = (node) => {
      if (
        !operationId &&
        ts.isCallExpression(node) &&
        node.expression.getText(file) === "this.call" &&
        ts.isStringLiteral(node.arguments[0])
      ) {
        operationId = node.arguments[0].text;
      }
      ts.forEachChild(node, visit);
    };
    visit(member.body);
    assert.ok(operationId, `rest.${member.name.getText(file)} calls no operation`);
    methods.push({ name: member.name.getText(file), operationId, declaration: member });
  }
  return methods;
}

function operations(document) {
  const found = new Map();
  for (const [path, methods] of Object.entries(document.paths)) {
    if (!path.startsWith("/v1/")) continue;
    for (const operation of Object.values(methods)) found.set(operation.operationId, operation);
  }
  return found;
}

/** The schema of an operation's success answers (null: no body); they must agree. */
function success(operation) {
  const answers = Object.entries(operation.responses)
    .filter(([status]) => status.startsWith("2"))
    .map(([, answer]) => Object.values(answer.content ?? {})[0]?.schema ?? null);
  assert.equal(new Set(answers.map((a) => JSON.stringify(a))).size, 1, `${operation.operationId}: success answers differ`);
  return answers[0];
}

test("each rest method's return type has the fields of its response schema", async () => {
  const document = await openapi();
  const { program, checker } = compile();
  const byOperation = new Map(restMethods(program).map((m) => [m.operationId, m]));
  const problems = [];
  let compared = 0;
  for (const [id, operation] of operations(document)) {
    const method = byOperation.get(id);
    if (!method) {
      problems.push(`${id}: no method (rest_surface.test.mjs says which)`);
      continue;
    }
    const signature = checker.getSignatureFromDeclaration(method.declaration);
    const promise = checker.getReturnTypeOfSignature(signature);
    assert.equal(promise.symbol?.name, "Promise", `rest.${method.name} returns a Promise`);
    const returned = checker.getTypeArguments(promise)[0];
    const schema = success(operation);
    if (schema === null) {
      if (!(returned.flags & ts.TypeFlags.Void)) {
        problems.push(`${id}: answers without a body, rest.${method.name} returns ${checker.typeToString(returned)}`);
      }
      continue;
    }
    problems.push(...compare(checker, document, returned, schema, `${method.name} -> ${checker.typeToString(returned)}`));
    compared += 1;
  }
  assert.deepEqual(problems, []);
  assert.ok(compared >= 25, `only ${compared} operations answer a body`);
});

test("each rest method takes its request body's fields, required as the document says", async () => {
  const document = await openapi();
  const { program, checker } = compile();
  const problems = [];
  let bodies = 0;
  for (const method of restMethods(program)) {
    const operation = operations(document).get(method.operationId);
    const content = Object.values(operation?.requestBody?.content ?? {})[0];
    if (!content) continue;
    bodies += 1;
    const schema = resolve(document, content.schema);
    const required = new Set(schema.required ?? []);
    for (const field of Object.keys(schema.properties ?? {})) {
      // A parameter of its own (always sent unless `?`; a default is sent too), or a
      // field of an options object (sent when given).
      let alwaysSent;
      for (const parameter of method.declaration.parameters) {
        if (parameter.name.getText() === camel(field)) {
          alwaysSent = !parameter.questionToken || parameter.initializer !== undefined;
          break;
        }
        const type = checker.getTypeAtLocation(parameter);
        const option = type.getProperty?.(camel(field));
        if (option) {
          alwaysSent = !(option.flags & ts.SymbolFlags.Optional) && !parameter.questionToken && !parameter.initializer;
          break;
        }
      }
      if (alwaysSent === undefined) {
        problems.push(`rest.${method.name}: takes no ${camel(field)} for \`${field}\``);
      } else if (alwaysSent !== required.has(field)) {
        problems.push(`rest.${method.name}: \`${field}\` is ${required.has(field) ? "required" : "optional"} in the document`);
      }
    }
  }
  assert.deepEqual(problems, []);
  assert.ok(bodies >= 10, `only ${bodies} operations take a body`);
});

test("the comparison notices a field too many, too few, wrongly optional or untyped", async () => {
  const document = await openapi();
  const dir = mkdtempSync(join(tmpdir(), "natter-rest-types-"));
  try {
    const fixture = join(dir, "wrong.ts");
    writeFileSync(
      fixture,
      `export interface Missing { id: string; username: string; display_name: string; bot: boolean }
       export interface Extra { id: string; username: string; display_name: string; bot: boolean; online: boolean; avatar: string }
       export interface Optional { id: string; username: string; display_name?: string; bot: boolean; online: boolean }
       export interface WrongType { id: string; username: string; display_name: string; bot: boolean; online: string }
       export interface Indexed { id: string; username: string; display_name: string; bot: boolean; online: boolean; [key: string]: unknown }
       export interface Right { id: string; username: string; display_name: string; bot: boolean; online: boolean }
       export type Nullable = Right | null;
       export type Kinds = "public" | "private";
      `,
    );
    const { program, checker } = compile([fixture]);
    const file = program.getSourceFile(fixture);
    const judge = (name, schema) => {
      const node = file.statements.find((s) => s.name?.text === name);
      return compare(checker, document, checker.getTypeAtLocation(node.name), schema, name);
    };
    const user = { $ref: "#/components/schemas/User" };
    assert.deepEqual(judge("Right", user), []);
    assert.deepEqual(judge("Missing", user), ["Missing: Missing lacks `online`"]);
    assert.deepEqual(judge("Extra", user), ["Extra: Extra has `avatar`, the document does not"]);
    assert.deepEqual(judge("Optional", user), ["Optional.display_name: required in the document"]);
    assert.deepEqual(judge("WrongType", user), ["WrongType.online: string, the document's type is boolean"]);
    assert.equal(judge("Indexed", user).length, 1);
    assert.deepEqual(judge("Nullable", user), ["Nullable: nullable true in the SDK, false in the document"]);
    assert.deepEqual(judge("Kinds", { $ref: "#/components/schemas/RoomKind" }), [
      "Kinds: Kinds, the document's values are public | private | direct",
    ]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
