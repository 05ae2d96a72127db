"""`natter.rest` has a method for every `/v1` operation of the server's `/openapi.json`,
with the same HTTP method and path, taking every parameter and body field the
document names: the SDK cannot drift from the API unnoticed."""

from __future__ import annotations

import inspect

import httpx
from conftest import nodes

from natter import OPERATIONS, Rest
from natter._rest import PATH_ALIASES

# Operations the SDK leaves out on purpose, with the reason. None today: every `/v1`
# operation has a method. (The seeds' compat routes are outside `/v1` and not part of
# the SDK.)
LEFT_OUT: dict[str, str] = {}


def _document() -> dict:
    reply = httpx.get(f"{nodes()[0]}/openapi.json", timeout=10)
    assert reply.status_code == 200
    return reply.json()


def _resolve(document: dict, schema: dict) -> dict:
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def test_every_v1_operation_has_a_method_with_its_method_path_and_parameters() -> None:
    document = _document()
    seen = set()
    problems = []
    for path, methods in document["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method, operation in methods.items():
            name = operation["operationId"]
            seen.add(name)
            if name in LEFT_OUT:
                continue
            if name not in OPERATIONS or not hasattr(Rest, name):
                problems.append(f"{name}: no method in natter.rest")
                continue
            if OPERATIONS[name] != (method.upper(), path):
                problems.append(f"{name}: SDK has {OPERATIONS[name]}, the API {method} {path}")
            accepted = set(inspect.signature(getattr(Rest, name)).parameters)
            wanted = set()
            for parameter in operation.get("parameters", []):
                wanted.add(PATH_ALIASES.get(name, {}).get(parameter["name"], parameter["name"]))
            body = operation.get("requestBody", {}).get("content", {})
            for content in body.values():
                wanted |= set(_resolve(document, content["schema"]).get("properties", {}))
            if wanted - accepted:
                problems.append(f"{name}: takes no {sorted(wanted - accepted)}")
    stale = set(OPERATIONS) - seen
    assert not stale, f"the SDK calls operations the API no longer has: {sorted(stale)}"
    assert not (set(LEFT_OUT) - seen), "LEFT_OUT names operations the API does not have"
    assert not problems, "\n".join(problems)
    assert len(seen) >= 37, f"only {len(seen)} /v1 operations in the document"
