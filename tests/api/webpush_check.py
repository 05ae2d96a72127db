"""A browser and its push service, for tests/api/push.rs: reads a Web Push request as
they would, with Mozilla's reference implementation of the encryption (http_ece) and the
`cryptography` package's ECDSA, and shares no code with Natter.

    python webpush_check.py keys     -> {"p256dh", "auth", "private_pem"}: a browser's keys
    python webpush_check.py check F  <- F: {"private_pem", "auth", "vapid_public",
                                         "endpoint", "headers", "body_b64"}
                                     -> {"payload", "claims"} once every check passed

`check` exits non-zero, saying why, when the VAPID token's signature, key, audience or
expiry is wrong, a header is missing, or the body does not decrypt.
"""

import base64
import json
import os
import sys
import time
from urllib.parse import urlsplit

import http_ece
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def keys() -> dict:
    private = ec.generate_private_key(ec.SECP256R1())
    public = private.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return {"p256dh": b64url(public), "auth": b64url(os.urandom(16)), "private_pem": pem.decode()}


def fail(why: str) -> None:
    print(why, file=sys.stderr)
    sys.exit(1)


def check(request: dict) -> dict:
    headers = {name.lower(): value for name, value in request["headers"].items()}
    for name, expected in [("content-encoding", "aes128gcm"), ("ttl", "86400")]:
        if headers.get(name) != expected:
            fail(f"{name}: {headers.get(name)!r}, expected {expected!r}")
    if headers.get("urgency") not in ("normal", "high"):
        fail(f"urgency: {headers.get('urgency')!r}")

    # RFC 8292: Authorization: vapid t=<JWT>, k=<the key the browser subscribed with>.
    scheme, _, params = headers.get("authorization", "").partition(" ")
    if scheme != "vapid":
        fail(f"authorization scheme {scheme!r}")
    fields = dict(part.strip().split("=", 1) for part in params.split(","))
    if fields.get("k") != request["vapid_public"]:
        fail(f"k={fields.get('k')!r} is not the cluster's VAPID key")
    head_b64, claims_b64, signature_b64 = fields["t"].split(".")
    if json.loads(unb64url(head_b64)).get("alg") != "ES256":
        fail("the token is not ES256")
    signature = unb64url(signature_b64)
    if len(signature) != 64:
        fail("an ES256 signature is r || s, 64 bytes")
    public = ec.EllipticCurvePublicKey.from_encoded_point(
        ec.SECP256R1(), unb64url(request["vapid_public"])
    )
    der = encode_dss_signature(
        int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    )
    try:
        public.verify(der, f"{head_b64}.{claims_b64}".encode(), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        fail("the VAPID signature does not verify with the cluster's key")
    claims = json.loads(unb64url(claims_b64))
    endpoint = urlsplit(request["endpoint"])
    if claims.get("aud") != f"{endpoint.scheme}://{endpoint.netloc}":
        fail(f"aud {claims.get('aud')!r} is not the endpoint's origin")
    if not time.time() < claims["exp"] <= time.time() + 12 * 3600 + 60:
        fail(f"exp {claims['exp']} is not within the next 12 hours")

    private = serialization.load_pem_private_key(request["private_pem"].encode(), None)
    payload = http_ece.decrypt(
        base64.b64decode(request["body_b64"]),
        private_key=private,
        auth_secret=unb64url(request["auth"]),
        version="aes128gcm",
    )
    return {"payload": payload.decode(), "claims": claims}


if __name__ == "__main__":
    if sys.argv[1:] == ["keys"]:
        print(json.dumps(keys()))
    elif len(sys.argv) == 3 and sys.argv[1] == "check":
        with open(sys.argv[2]) as request:
            print(json.dumps(check(json.load(request))))
    else:
        fail(__doc__)
