"""A service that verifies latchkey access tokens itself (PyJWT and the
JWKS), and refuses a token as soon as its session has ended, by following
latchkey's revocation feed in a thread (long polling).

    pip install "PyJWT[crypto]"
    LATCHKEY_URL=http://127.0.0.1:8080 VERIFIER_KEY_FILE=verifier.key python verifier.py 8081

GET / with "Authorization: Bearer <access token>" answers 200 {"sub","sid"},
401 {"error":"invalid_token"}, or 503 while the feed is not followed (before
its first answer, or when it has been silent too long: latchkey down, a wrong
key), since then it could not know of revocations. Optional: LATCHKEY_ISSUER,
LATCHKEY_AUDIENCE. If you allow JWT clock leeway, keep entries until
`until` + leeway.
"""
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt

LATCHKEY = os.environ.get("LATCHKEY_URL", "http://127.0.0.1:8080").rstrip("/")
with open(os.environ["VERIFIER_KEY_FILE"], encoding="utf-8") as key_file:
    VERIFIER_KEY = key_file.read().removesuffix("\n")
ISSUER = os.environ.get("LATCHKEY_ISSUER")
AUDIENCE = os.environ.get("LATCHKEY_AUDIENCE")

# Answers hold up to WAIT seconds; a feed silent for longer than STALE is
# broken (a wrong key, latchkey down): refuse rather than miss revocations.
WAIT, STALE, PAGE = 30, 45, 50_000

jwks = jwt.PyJWKClient(f"{LATCHKEY}/.well-known/jwks.json")
ended = {}  # sid -> until (Unix seconds): refuse tokens of sid until then
ended_lock = threading.Lock()
feed = {"ready": False, "last_answer": 0.0}


class Unavailable(Exception):
    """The revocation feed is not followed: tokens cannot be checked."""


def follow_the_feed():
    """Bootstrap, then long-poll for what is new. A restart of latchkey only
    interrupts it: the cursor survives, so nothing is missed."""
    cursor, more = None, False
    while True:
        query = f"?after={cursor}&wait={0 if more else WAIT}" if cursor else ""
        request = urllib.request.Request(
            f"{LATCHKEY}/oauth/revocations{query}",
            headers={"Authorization": f"Bearer {VERIFIER_KEY}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=WAIT + 10) as answer:
                page = json.load(answer)
            entries, next_cursor = page["revocations"], page["cursor"]
        except urllib.error.HTTPError as error:
            print(f"revocation feed: HTTP {error.code}", file=sys.stderr, flush=True)
            if error.code == 410:  # cursor_expired: start over
                cursor, more = None, False
            else:
                time.sleep(0.5)
            continue
        except Exception as error:  # latchkey down or restarting, a cut-off answer
            print(f"revocation feed: {error!r}", file=sys.stderr, flush=True)
            time.sleep(0.5)
            continue
        now = time.time()
        with ended_lock:
            for entry in entries:
                ended[entry["sid"]] = entry["until"]
            for sid in [sid for sid, until in ended.items() if until <= now]:
                del ended[sid]
        cursor, more = next_cursor, len(entries) >= PAGE  # a full page: more follows
        feed["last_answer"] = now
        if not more:
            feed["ready"] = True


def verify(token):
    if not feed["ready"] or time.time() - feed["last_answer"] > STALE:
        raise Unavailable()
    if jwt.get_unverified_header(token).get("typ") != "at+jwt":
        raise jwt.InvalidTokenError("not an access token")
    key = jwks.get_signing_key_from_jwt(token)
    claims = jwt.decode(
        token,
        key.key,
        algorithms=[key.algorithm_name],
        issuer=ISSUER,
        audience=AUDIENCE,
        options={"require": ["exp", "iat", "sub", "sid"], "verify_aud": AUDIENCE is not None},
    )
    with ended_lock:
        until = ended.get(claims["sid"])
    if until is not None and until > time.time():
        raise jwt.InvalidTokenError("the session has ended")
    return claims


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        header = self.headers.get("Authorization", "")
        token = header[7:] if header.lower().startswith("bearer ") else ""
        try:
            claims = verify(token)
        except Unavailable:
            self.answer(503, {"error": "revocations_unavailable"})
            return
        except Exception:  # any failure to verify is a refusal
            self.answer(401, {"error": "invalid_token"})
            return
        self.answer(200, {"sub": claims["sub"], "sid": claims["sid"]})

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    threading.Thread(target=follow_the_feed, daemon=True).start()
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 8081), Handler)
    print(f"listening on {server.server_address[1]}", flush=True)
    server.serve_forever()
