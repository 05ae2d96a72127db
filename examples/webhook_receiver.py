#!/usr/bin/env python3
"""A Natter webhook receiver: verifies each request's signature, drops repeats by
`webhook-id`, and prints every event once, in the order they arrive.

Natter signs the Standard Webhooks way (https://www.standardwebhooks.com): the headers
`webhook-id`, `webhook-timestamp` and `webhook-signature` (`v1,<base64>` of
HMAC-SHA256 over `id.timestamp.body`, keyed by the base64 part of the `whsec_` secret;
during a secret rotation several, space-separated). Delivery is at least once and in
each room's order, so a receiver only has to remember the ids it has seen.

Standard library only:

    python3 examples/webhook_receiver.py --secret whsec_... [--port 8765]

Answer 2xx only once the event is safely handled: anything else (or no answer in 10 s)
makes Natter retry the same event, with backoff, before sending the next one of that room.
"""

import argparse
import base64
import hashlib
import hmac
import json
import sys
import time
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Signatures older or newer than this are refused (replayed captures).
TOLERANCE_SECS = 5 * 60
# Ids remembered to drop repeats: far more than a receiver is ever behind.
REMEMBERED_IDS = 100_000


def verify(secret: str, headers, body: bytes) -> bool:
    """Whether one of the request's signatures is ours and its timestamp is recent."""
    msg_id = headers.get("webhook-id", "")
    timestamp = headers.get("webhook-timestamp", "")
    signatures = headers.get("webhook-signature", "").split(" ")
    if not msg_id or not timestamp.isdigit():
        return False
    if abs(time.time() - int(timestamp)) > TOLERANCE_SECS:
        return False
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(
        hmac.compare_digest(signature.removeprefix("v1,"), expected)
        for signature in signatures
        if signature.startswith("v1,")
    )


def make_handler(secret: str, seen: "OrderedDict[str, None]"):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            if not verify(secret, self.headers, body):
                self.send_response(401)
                self.end_headers()
                print("refused: bad or missing signature", file=sys.stderr, flush=True)
                return
            msg_id = self.headers["webhook-id"]
            if msg_id not in seen:
                seen[msg_id] = None
                if len(seen) > REMEMBERED_IDS:
                    seen.popitem(last=False)
                event = json.loads(body)
                print(json.dumps({"webhook-id": msg_id, **event}, ensure_ascii=False), flush=True)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):  # one line per event is enough
            pass

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--secret", required=True, help="the webhook's whsec_ secret")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), make_handler(args.secret, OrderedDict()))
    # One delivery at a time per room, so one thread at a time touches `seen` per room;
    # the dict is shared across rooms, which CPython's GIL keeps consistent.
    print(f"listening on http://{args.host}:{args.port}/", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
