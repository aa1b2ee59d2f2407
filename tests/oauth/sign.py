#!/usr/bin/env python3
"""Signs OAuth 1.0a requests with oauthlib's Client (an implementation
independent of the gateway's `oauth1` plugin), for tests/tests/oauth1.rs.

One request from the command line:

    python3 tests/oauth/sign.py GET 'https://jira.example.com/rest/api/2/search?jql=x' \\
        --consumer jira:1a2b3c4d --rsa-key-file tests/oauth/rsa-sha1.key.pem
    python3 tests/oauth/sign.py POST https://jira.example.com/rest/api/2/issue \\
        --consumer k2 --secret S --token T --token-secret TS \\
        --body 'summary=a+b&labels=x' --oauth-in body

or many, one JSON object a line on stdin, with `--batch`:

    {"method": "GET", "url": "...", "consumer": "...",
     "rsa_key": "<PEM private key>" | "wrong_rsa_key": true | "secret": "...",
     "signature_method": "HMAC-SHA256", "token": "...", "token_secret": "...",
     "body": "...", "content_type": "...", "oauth_in": "header" | "body" | "query",
     "realm": "...", "timestamp": 1700000000, "nonce": "..."}

Every field but method, url, consumer and one credential may be left out.
`signature_method` defaults to RSA-SHA1 with an RSA key, else HMAC-SHA1.
A body's content type defaults to application/x-www-form-urlencoded, whose
parameters are signed (for any other type oauthlib adds oauth_body_hash).
The OAuth parameters go in the Authorization header unless `oauth_in` says
the form body or the query (RFC 5849 §3.5).

For each request it prints one JSON line: {"method", "uri" (the URL to
request, OAuth parameters included when they went in the query), "target"
(its path and query, for the request line), "authorization" (the header,
or null), "body" (the body to send, or null), "content_type" (or null)}.
"""

import argparse
import json
import sys
from urllib.parse import urlsplit

try:
    import cryptography  # noqa: F401  (oauthlib's RSA-SHA1 needs it)
    import jwt  # noqa: F401  (and PyJWT)
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from oauthlib.oauth1 import (
        SIGNATURE_HMAC_SHA1,
        SIGNATURE_RSA_SHA1,
        SIGNATURE_TYPE_AUTH_HEADER,
        SIGNATURE_TYPE_BODY,
        SIGNATURE_TYPE_QUERY,
        Client,
    )
except ImportError as e:
    sys.exit(
        f"tests/oauth/sign.py: {e}: install oauthlib, cryptography and "
        "pyjwt for python3 by running scripts/setup.sh"
    )

FORM = "application/x-www-form-urlencoded"
PLACEMENTS = {
    "header": SIGNATURE_TYPE_AUTH_HEADER,
    "body": SIGNATURE_TYPE_BODY,
    "query": SIGNATURE_TYPE_QUERY,
}


def a_wrong_rsa_key():
    """A fresh key pair nobody configured: its signatures never verify."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def sign(spec):
    if spec.get("wrong_rsa_key"):
        method, credentials = SIGNATURE_RSA_SHA1, {"rsa_key": a_wrong_rsa_key()}
    elif spec.get("rsa_key"):
        method, credentials = SIGNATURE_RSA_SHA1, {"rsa_key": spec["rsa_key"]}
    elif spec.get("secret") is not None:
        method, credentials = SIGNATURE_HMAC_SHA1, {"client_secret": spec["secret"]}
    else:
        raise ValueError("a request needs rsa_key, wrong_rsa_key or secret")
    timestamp = spec.get("timestamp")
    client = Client(
        spec["consumer"],
        resource_owner_key=spec.get("token"),
        resource_owner_secret=spec.get("token_secret"),
        signature_method=spec.get("signature_method") or method,
        signature_type=PLACEMENTS[spec.get("oauth_in") or "header"],
        realm=spec.get("realm"),
        timestamp=None if timestamp is None else str(timestamp),
        nonce=spec.get("nonce"),
        **credentials,
    )
    body = spec.get("body")
    content_type = spec.get("content_type") or (FORM if body is not None else None)
    headers = {"Content-Type": content_type} if content_type else None
    uri, headers, body = client.sign(spec["url"], spec["method"], body=body, headers=headers)
    split = urlsplit(uri)
    return {
        "method": spec["method"],
        "uri": uri,
        "target": split.path + (f"?{split.query}" if split.query else ""),
        "authorization": headers.get("Authorization"),
        "body": body,
        "content_type": headers.get("Content-Type"),
    }


def main():
    if "--batch" in sys.argv[1:]:
        for line in sys.stdin:
            if line.strip():
                print(json.dumps(sign(json.loads(line))), flush=True)
        return
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("method")
    p.add_argument("url")
    p.add_argument("--consumer", required=True)
    key = p.add_mutually_exclusive_group(required=True)
    key.add_argument("--rsa-key-file", help="PEM private key (RSA-SHA1)")
    key.add_argument("--wrong-rsa-key", action="store_true", help="RSA-SHA1 with a fresh key")
    key.add_argument("--secret", help="consumer secret (HMAC-SHA1)")
    p.add_argument("--signature-method")
    p.add_argument("--token")
    p.add_argument("--token-secret")
    p.add_argument("--body")
    p.add_argument("--content-type")
    p.add_argument("--oauth-in", choices=sorted(PLACEMENTS), default="header")
    p.add_argument("--realm")
    p.add_argument("--timestamp", type=int)
    p.add_argument("--nonce")
    a = p.parse_args()
    spec = {k: v for k, v in vars(a).items() if k != "rsa_key_file"}
    if a.rsa_key_file:
        with open(a.rsa_key_file) as f:
            spec["rsa_key"] = f.read()
    print(json.dumps(sign(spec)))


if __name__ == "__main__":
    main()
