"""Owner tokens: each job belongs to the client that submitted it, and another client gets 404 for it.

Why a token rather than the address: two browser profiles, or two people behind one NAT, share an address.
The page gets a random token as an HttpOnly cookie (`ldm_owner`) the first time it loads; a script sends
`X-Owner-Token` (any secret of 16+ characters it chose, or the one the server issued in its first answer).
Only a hash is kept, in memory and on disk, so a stored job's sidecar never holds the secret.
"""

from __future__ import annotations

import hashlib
import secrets

from flask import Request, Response

from ldm.errors import SamplingError

OWNER_HEADER = "X-Owner-Token"
OWNER_COOKIE = "ldm_owner"
MIN_OWNER_CHARS = 16


def owner_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def presented_owner(request: Request) -> str | None:
    """The owner token a request carries (header first, then the cookie); 400 for one too short to be secret."""
    token = request.headers.get(OWNER_HEADER) or request.cookies.get(OWNER_COOKIE)
    if token is not None and len(token) < MIN_OWNER_CHARS:
        raise SamplingError(
            f"{OWNER_HEADER} of {len(token)} characters: expected at least {MIN_OWNER_CHARS} (a secret only you know)"
        )
    return token


def owner_or_issue(request: Request) -> tuple[str, str | None]:
    """(the owner token, the token when it was issued now and the response must hand it over)."""
    token = presented_owner(request)
    if token is not None:
        return token, None
    issued = secrets.token_urlsafe(24)
    return issued, issued


def hand_over(response: Response, issued: str | None) -> Response:
    """Give a newly issued owner token to the client: a header for scripts, the cookie for browsers."""
    if issued is not None:
        response.headers[OWNER_HEADER] = issued
        response.set_cookie(OWNER_COOKIE, issued, httponly=True, samesite="Strict", max_age=365 * 86400)
    return response
