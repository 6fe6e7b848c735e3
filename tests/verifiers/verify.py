"""Verify a latchkey access token with PyJWT, using the server's JWKS.

Usage: python verify.py BASE_URL TOKEN [ISSUER [AUDIENCE]]
Prints the token's claims as JSON; exits with an error if it does not verify.
"""
import json
import sys

import jwt  # pip install "PyJWT[crypto]"

base_url, token = sys.argv[1], sys.argv[2]
issuer = sys.argv[3] if len(sys.argv) > 3 else None
audience = sys.argv[4] if len(sys.argv) > 4 else None

# One client per process: it caches the key set, and fetches it again when a
# token names a key it does not have yet (after a rotation).
jwks = jwt.PyJWKClient(f"{base_url}/.well-known/jwks.json")


def verify(token):
    if jwt.get_unverified_header(token).get("typ") != "at+jwt":
        raise jwt.InvalidTokenError("not an access token")
    key = jwks.get_signing_key_from_jwt(token)
    return jwt.decode(
        token,
        key.key,
        algorithms=[key.algorithm_name],  # the key's algorithm, never the token's
        issuer=issuer,
        audience=audience,
        options={"require": ["exp", "iat", "sub", "sid"], "verify_aud": audience is not None},
    )


print(json.dumps(verify(token)))
