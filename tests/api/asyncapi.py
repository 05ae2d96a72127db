"""Checks `/asyncapi.json` (tests/api/asyncapi.rs).

    python asyncapi.py SCHEMA DOCUMENT [FRAMES]

Validates DOCUMENT against the AsyncAPI 3.0.0 JSON Schema (draft 7) and a deliberately
broken copy of it, which must fail. With FRAMES (JSON lines `[path, frame]`, as the test
helpers record every frame a socket receives), validates each frame against the schema
of the message its channel's `send` operations list under the frame's `type`; the
channel is the one whose address matches the socket's path. Prints a verdict per
frame (`verdict N ok|invalid`, N counting from 0), so the test can compare them with
its own validator's (tests/api/frame_schema.rs), and a summary; exits non-zero on any
failure.

The document's formats `uuid` and `int64` are checked as the Rust validator checks them
(jsonschema's draft 7 checker knows neither).
"""

import copy
import json
import re
import sys
import uuid

from jsonschema import Draft7Validator, FormatChecker

schema_path, document_path = sys.argv[1], sys.argv[2]
frames_path = sys.argv[3] if len(sys.argv) > 3 else None
meta = json.load(open(schema_path))
doc = json.load(open(document_path))
failed = False


def schema_errors(document):
    errors = Draft7Validator(meta).iter_errors(document)
    return sorted(errors, key=lambda e: list(e.absolute_path))


for error in schema_errors(doc):
    failed = True
    print("document:", list(error.absolute_path), error.message[:300])

# The validator can fail: a copy with a channel address that is not a string, and
# without the info's version, must not validate.
broken = copy.deepcopy(doc)
next(iter(broken["channels"].values()))["address"] = 7
del broken["info"]["version"]
broken_errors = schema_errors(broken)
print("broken copy:", len(broken_errors), "errors")
if not broken_errors:
    failed = True
    print("the broken copy validated: the validator checks nothing")


def resolve(node):
    while "$ref" in node:
        pointer = node["$ref"]
        assert pointer.startswith("#/"), pointer
        node = doc
        for part in pointer[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


# Per channel: its address as a pattern and, by `type`, the pointer to the payload of
# each message the server sends on it.
channels = {}
for name, channel in doc["channels"].items():
    pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(channel["address"]))
    channels[name] = (re.compile("^" + pattern + "$"), {})
for operation in doc["operations"].values():
    if operation["action"] != "send":
        continue
    channel = operation["channel"]["$ref"].rsplit("/", 1)[-1]
    for ref in operation["messages"]:
        key = ref["$ref"].rsplit("/", 1)[-1]
        component = doc["channels"][channel]["messages"][key]["$ref"]
        kind = resolve(ref)["name"]
        channels[channel][1][kind] = component + "/payload"
formats = FormatChecker()
for name in Draft7Validator.FORMAT_CHECKER.checkers:
    formats.checkers[name] = Draft7Validator.FORMAT_CHECKER.checkers[name]


@formats.checks("uuid")
def is_uuid(value):
    if not isinstance(value, str):
        return True
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return len(value) == 36


@formats.checks("int64")
def is_int64(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return True
    return isinstance(value, int) and -(2**63) <= value < 2**63


validators = {}


def validator(pointer):
    if pointer not in validators:
        root = {"$ref": pointer, "components": doc["components"]}
        validators[pointer] = Draft7Validator(root, format_checker=formats)
    return validators[pointer]


if frames_path:
    seen = {}
    count = 0
    for line in open(frames_path):
        if not line.strip():
            continue
        path, frame = json.loads(line)
        index = count
        count += 1
        matches = [n for n, (pattern, _) in channels.items() if pattern.match(path)]
        if not matches:
            failed = True
            print("no channel for", path)
            print("verdict", index, "invalid")
            continue
        channel = matches[0]
        kinds = channels[channel][1]
        kind = frame.get("type") if isinstance(frame, dict) else None
        if not isinstance(kind, str) or kind not in kinds:
            failed = True
            print(f"{channel}: no message for type {kind!r}: {json.dumps(frame)[:300]}")
            print("verdict", index, "invalid")
            continue
        errors = list(validator(kinds[kind]).iter_errors(frame))
        for error in errors:
            failed = True
            print(f"{channel} {kind}: {list(error.absolute_path)} {error.message[:300]}")
        print("verdict", index, "invalid" if errors else "ok")
        if not errors:
            seen.setdefault(channel, set()).add(kind)
    print("frames:", count)
    for channel, kinds in sorted(seen.items()):
        print("seen", channel, " ".join(sorted(kinds)))
        print("unseen", channel, " ".join(sorted(set(channels[channel][1]) - kinds)))

print("FAILED" if failed else "OK")
sys.exit(1 if failed else 0)
