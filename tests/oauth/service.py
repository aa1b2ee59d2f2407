#!/usr/bin/env python3
"""An on-prem service that verifies OAuth 1.0a itself, with oauthlib.

The local service behind the agent in tests/tests/oauth1.rs: an independent
implementation (Python's oauthlib, not the gateway's `oauth1` plugin) that
recomputes the signature of every request it receives, against the same
public base URL, consumers and secrets as the plugin.

    python3 tests/oauth/service.py CONFIG_JSON

CONFIG_JSON is the `oauth1` plugin's configuration text (`public_base_url`,
`consumers`, `signature_methods`, `timestamp_window_secs`; other fields are
ignored). It listens on 127.0.0.1 on a free port and prints, one JSON
object a line on stdout:

    {"listening": "127.0.0.1:PORT"}            once, when it accepts
    {"request": {...the answer below...}}      once per request received

`GET /_count` answers {"requests": N}, the number of other requests
received so far (counted before they are answered), without counting
itself.

Every request is answered with JSON describing it:

- signed and verified: 200 {"verified": true, "method", "path", "query",
  "target", "consumer", "token", "signature_method", "authorization",
  "content_type", "body"};
- signed but not verified (bad signature, stale timestamp, reused nonce,
  unknown consumer...): 401 {"verified": false, "reason", ...};
- no OAuth parameter anywhere: 200 {"verified": false, "anonymous": true,
  ...}, as a service that serves anonymous users would.

It exits when its stdin closes, so it never outlives the test that started
it.
"""

import json
import logging
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl

try:
    import cryptography  # noqa: F401  (oauthlib's RSA-SHA1 needs it)
    import jwt  # noqa: F401  (and PyJWT)
    from oauthlib.oauth1 import RequestValidator, SignatureOnlyEndpoint
except ImportError as e:
    sys.exit(
        f"tests/oauth/service.py: {e}: install oauthlib, cryptography and "
        "pyjwt for python3 by running scripts/setup.sh"
    )


class Validator(RequestValidator):
    """The service's consumers, as the plugin's configuration names them."""

    def __init__(self, config):
        super().__init__()
        self.consumers = {c["key"]: c for c in config.get("consumers", [])}
        self.methods = config.get("signature_methods", ["RSA-SHA1", "HMAC-SHA1"])
        self.window = int(config.get("timestamp_window_secs", 600))
        rsa = [c["rsa_public_key"] for c in self.consumers.values() if "rsa_public_key" in c]
        self.dummy_rsa_key = rsa[0] if rsa else None
        self.nonces = set()
        self.nonce_lock = threading.Lock()

    # What the plugin accepts, oauthlib accepts too: its defaults (keys and
    # nonces of 20 to 30 letters and digits) are narrower than RFC 5849.
    @property
    def allowed_signature_methods(self):
        return self.methods

    @property
    def safe_characters(self):
        return set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~:")

    @property
    def client_key_length(self):
        return 1, 256

    @property
    def nonce_length(self):
        return 1, 256

    @property
    def timestamp_lifetime(self):
        return self.window

    @property
    def enforce_ssl(self):
        # The gateway terminates the caller's connection; the URI verified
        # here is the public one callers sign, whatever its scheme.
        return False

    @property
    def dummy_client(self):
        return "dummy-client"

    def validate_client_key(self, client_key, request):
        return client_key in self.consumers

    def get_client_secret(self, client_key, request):
        return self.consumers.get(client_key, {}).get("secret", "dummy")

    def get_access_token_secret(self, client_key, token, request):
        secrets = self.consumers.get(client_key, {}).get("token_secrets", {})
        return secrets.get(token, "dummy")

    def get_rsa_key(self, client_key, request):
        return self.consumers.get(client_key, {}).get("rsa_public_key", self.dummy_rsa_key)

    def validate_timestamp_and_nonce(
        self, client_key, timestamp, nonce, request, request_token=None, access_token=None
    ):
        key = (client_key, request.resource_owner_key or "", timestamp, nonce)
        with self.nonce_lock:
            if key in self.nonces:
                return False
            self.nonces.add(key)
            return True


class Reasons(logging.Handler):
    """Collects what oauthlib logs while judging one request: its only
    account of why a request failed (including the base string it built)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.local = threading.local()

    def start(self):
        self.local.messages = []

    def emit(self, record):
        messages = getattr(self.local, "messages", None)
        if messages is not None:
            messages.append(record.getMessage())

    def take(self):
        messages, self.local.messages = getattr(self.local, "messages", []), None
        return messages


def is_form(content_type):
    return content_type.split(";")[0].strip().lower() == "application/x-www-form-urlencoded"


def mentions_oauth(text):
    try:
        return any(k.startswith("oauth_") for k, _ in parse_qsl(text, keep_blank_values=True))
    except ValueError:
        return "oauth_" in text


def make_handler(config, validator, reasons):
    base = config["public_base_url"].rstrip("/")
    endpoint = SignatureOnlyEndpoint(validator)
    count = {"requests": 0}
    count_lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def read_body(self):
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                body = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return body
                    body += self.rfile.read(size)
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def target(self):
            # The request target as sent: `self.path` collapses a leading
            # `//`, which would change the URI the signature covers.
            words = self.requestline.split()
            return words[1] if len(words) == 3 else self.path

        def judge(self):
            body = self.read_body().decode("utf-8", errors="replace")
            target = self.target()
            path, _, query = target.partition("?")
            authorization = self.headers.get("Authorization")
            content_type = self.headers.get("Content-Type", "")
            answer = {
                "method": self.command,
                "path": path,
                "query": query,
                "target": target,
                "authorization": authorization,
                "content_type": content_type or None,
                "body": body,
            }
            signed = (
                (authorization or "").lower().startswith("oauth ")
                or mentions_oauth(query)
                or (is_form(content_type) and mentions_oauth(body))
            )
            if not signed:
                return 200, dict(answer, verified=False, anonymous=True)
            headers = {k: v for k, v in self.headers.items()}
            reasons.start()
            try:
                ok, request = endpoint.validate_request(base + target, self.command, body, headers)
            except Exception as e:  # oauthlib raises on some malformed input
                ok, request = False, None
                reasons.local.messages.append(f"{type(e).__name__}: {e}")
            why = reasons.take()
            params = dict(request.oauth_params) if request is not None else {}
            answer.update(
                consumer=params.get("oauth_consumer_key"),
                token=params.get("oauth_token"),
                signature_method=params.get("oauth_signature_method"),
            )
            if ok:
                return 200, dict(answer, verified=True)
            return 401, dict(answer, verified=False, reason=" | ".join(why) or "not verified")

        def answer(self):
            if self.target() == "/_count":
                with count_lock:
                    status, answer = 200, dict(count)
            else:
                with count_lock:
                    count["requests"] += 1
                status, answer = self.judge()
                line = json.dumps({"request": dict(answer, status=status)})
                with count_lock:  # one whole line at a time
                    print(line, flush=True)
            data = (json.dumps(answer) + "\n").encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = answer

        def log_message(self, format, *args):
            sys.stderr.write("service: " + (format % args) + "\n")

    return Handler


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    config = json.loads(sys.argv[1])
    reasons = Reasons()
    log = logging.getLogger("oauthlib")
    log.setLevel(logging.DEBUG)
    log.addHandler(reasons)
    log.propagate = False
    validator = Validator(config)
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(config, validator, reasons))
    server.daemon_threads = True
    host, port = server.server_address[:2]
    print(json.dumps({"listening": f"{host}:{port}"}), flush=True)

    def exit_with_stdin():
        sys.stdin.read()
        os._exit(0)

    threading.Thread(target=exit_with_stdin, daemon=True).start()
    server.serve_forever()


if __name__ == "__main__":
    main()
