"""The SDK's hand-written REST types say what the server's `/openapi.json` says: each
`natter.rest` method's return type has, at every depth, the fields of the response
schema of its operation, required or optional as there, of the same JSON type, nullable
where it is and with the same enum values; and each method takes every required field of
the operation's request body as a parameter it always sends, and each optional one as a
parameter that defaults to not sending it.

Requiredness is read from the annotations (`NotRequired[...]`), not from
`__required_keys__`, which Python 3.11 gets wrong under `from __future__ import
annotations`."""

from __future__ import annotations

import inspect
import types
import typing
from typing import Any, Literal, NotRequired, Required, get_args, get_origin

import httpx
import pytest
from conftest import nodes

from natter import OPERATIONS, Rest, _types

# Annotation-only keywords: what an `allOf` may hold besides its one `$ref`.
ANNOTATIONS = {"description", "title", "example", "default", "readOnly", "writeOnly"}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    reply = httpx.get(f"{nodes()[0]}/openapi.json", timeout=10)
    assert reply.status_code == 200
    return typing.cast(dict[str, Any], reply.json())


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """Follows `$ref`s, and poem-openapi's `allOf: [{$ref}, {description}]`, which
    documents a field of a referred type."""
    while True:
        if "$ref" in schema:
            schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        elif "allOf" in schema:
            refs = [part for part in schema["allOf"] if "$ref" in part]
            others = [part for part in schema["allOf"] if "$ref" not in part]
            assert len(refs) == 1 and all(set(p) <= ANNOTATIONS for p in others), schema
            schema = refs[0]
        else:
            return schema


def _fields(typed_dict: type) -> dict[str, tuple[Any, bool]]:
    """A TypedDict's fields: name -> (type, required)."""
    assert all(getattr(c, "__total__", True) for c in typed_dict.__mro__), typed_dict
    fields = {}
    for name, hint in typing.get_type_hints(typed_dict, include_extras=True).items():
        required = True
        if get_origin(hint) in (NotRequired, Required):
            required = get_origin(hint) is Required
            (hint,) = get_args(hint)
        fields[name] = (hint, required)
    return fields


def _is_typed_dict(hint: Any) -> bool:
    return isinstance(hint, type) and typing.is_typeddict(hint)


def compare(document: dict[str, Any], hint: Any, schema: dict[str, Any], where: str) -> list[str]:
    """How the Python type `hint` differs from the JSON schema `schema`, at `where`."""
    schema = _resolve(document, schema)
    problems = []
    members = list(get_args(hint)) if isinstance(hint, types.UnionType) else [hint]
    nullable = type(None) in members
    members = [m for m in members if m is not type(None)]
    if nullable != bool(schema.get("nullable")):
        problems.append(f"{where}: nullable {nullable} in the SDK, {not nullable} in the document")
    if len(members) != 1:
        return [*problems, f"{where}: a union the document does not have: {hint}"]
    (hint,) = members
    kind = schema.get("type")
    if "enum" in schema:
        if get_origin(hint) is not Literal or set(get_args(hint)) != set(schema["enum"]):
            problems.append(f"{where}: {hint}, the document's values are {schema['enum']}")
    elif kind == "object":
        if not _is_typed_dict(hint):
            return [*problems, f"{where}: {hint} is not a TypedDict for an object"]
        fields = _fields(hint)
        properties = schema.get("properties", {})
        required = set(schema.get("required", []))
        for name in sorted(set(properties) - set(fields)):
            problems.append(f"{where}: {hint.__name__} lacks `{name}`")
        for name in sorted(set(fields) - set(properties)):
            problems.append(f"{where}: {hint.__name__} has `{name}`, the document does not")
        for name in sorted(set(fields) & set(properties)):
            field, is_required = fields[name]
            if is_required != (name in required):
                wanted = "required" if name in required else "NotRequired"
                problems.append(f"{where}.{name}: {wanted} in the document")
            problems += compare(document, field, properties[name], f"{where}.{name}")
    elif kind == "array":
        if get_origin(hint) is not list:
            return [*problems, f"{where}: {hint} is not a list"]
        problems += compare(document, get_args(hint)[0], schema["items"], f"{where}[]")
    else:
        scalars: dict[Any, type] = {"string": str, "integer": int, "number": float, "boolean": bool}
        python = scalars.get(kind)
        assert python is not None, f"{where}: a schema this test does not know: {schema}"
        if hint is not python:
            problems.append(f"{where}: {hint}, the document's type is {kind}")
    return problems


def _success(operation: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
    """The status and schema of an operation's success answers (None: no body); an
    operation whose success answers differ in shape fails."""
    no_body: dict[str, Any] = {}
    answers = {
        status: next(iter(answer.get("content", {}).values()), no_body).get("schema")
        for status, answer in operation["responses"].items()
        if status.startswith("2")
    }
    shapes = {str(schema) for schema in answers.values()}
    assert len(shapes) == 1, f"{operation['operationId']}: success answers differ: {answers}"
    status, schema = next(iter(answers.items()))
    return status, schema


def _operations(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = {}
    for path, methods in document["paths"].items():
        if path.startswith("/v1/"):
            for operation in methods.values():
                found[operation["operationId"]] = operation
    return found


def test_each_methods_return_type_has_the_fields_of_its_response_schema(
    document: dict[str, Any],
) -> None:
    problems = []
    compared = 0
    for name, operation in sorted(_operations(document).items()):
        assert name in OPERATIONS, f"{name}: no method (test_rest_surface.py says which)"
        returned = typing.get_type_hints(getattr(Rest, name))["return"]
        status, schema = _success(operation)
        if schema is None:
            if returned is not type(None):
                problems.append(f"{name}: answers {status} without a body, returns {returned}")
            continue
        problems += compare(document, returned, schema, f"{name} -> {returned.__name__}")
        compared += 1
    assert not problems, "\n".join(problems)
    assert compared >= 25, f"only {compared} operations answer a body"


def test_each_method_takes_the_request_body_fields_required_as_the_document_says(
    document: dict[str, Any],
) -> None:
    problems = []
    bodies = 0
    for name, operation in sorted(_operations(document).items()):
        content = operation.get("requestBody", {}).get("content", {})
        if not content:
            continue
        bodies += 1
        schema = _resolve(document, next(iter(content.values()))["schema"])
        parameters = inspect.signature(getattr(Rest, name)).parameters
        for field in schema.get("properties", {}):
            parameter = parameters.get(field)
            if parameter is None:
                problems.append(f"{name}: takes no `{field}`")
                continue
            # A parameter without a default, or with one it sends (`kind="public"`), is
            # always sent; one defaulting to None is left out of the body.
            always_sent = parameter.default is not None
            if always_sent != (field in schema.get("required", [])):
                wanted = "required" if field in schema.get("required", []) else "optional"
                problems.append(f"{name}: `{field}` is {wanted} in the document")
    assert not problems, "\n".join(problems)
    assert bodies >= 10, f"only {bodies} operations take a body"


def test_the_comparison_notices_a_field_too_many_too_few_or_wrongly_required(
    document: dict[str, Any],
) -> None:
    """The check above can fail: types that differ from the document are reported."""
    user = {"$ref": "#/components/schemas/User"}

    class Missing(typing.TypedDict):
        id: str
        username: str
        display_name: str
        bot: bool

    class Extra(_types.User):
        avatar: str

    class Optional(typing.TypedDict):
        id: str
        username: str
        display_name: NotRequired[str]
        bot: bool
        online: bool

    class WrongType(typing.TypedDict):
        id: str
        username: str
        display_name: str
        bot: bool
        online: str

    assert compare(document, _types.User, user, "User") == []
    assert compare(document, Missing, user, "User") == ["User: Missing lacks `online`"]
    assert compare(document, Extra, user, "User") == [
        "User: Extra has `avatar`, the document does not"
    ]
    assert compare(document, Optional, user, "User") == [
        "User.display_name: required in the document"
    ]
    assert len(compare(document, WrongType, user, "User")) == 1
    message = {"$ref": "#/components/schemas/Message"}
    assert compare(document, _types.Message, message, "M") == []
    assert compare(document, _types.Message | None, message, "M") == [
        "M: nullable True in the SDK, False in the document"
    ]
    reason = {"type": "string", "enum": ["removed", "left", "room_deleted"]}
    assert compare(document, Literal["removed", "left", "room_deleted"], reason, "R") == []
    assert compare(document, Literal["removed", "left"], reason, "R") == [
        "R: typing.Literal['removed', 'left'], the document's values are "
        "['removed', 'left', 'room_deleted']"
    ]
