"""Bearer-token auth (`auth.token`, or LDM_APP_TOKEN), and the rule that a server on the network needs it.

Why a token at all: with `host=0.0.0.0` anyone on the network could queue renders and read images. Scripts
send `Authorization: Bearer TOKEN` (OpenAI's client does so with `api_key`); AUTOMATIC1111's clients send
HTTP Basic auth (`--api-auth user:password`), so a Basic password equal to the token is accepted too; a
browser opens `/?token=TOKEN` once and gets it as an HttpOnly cookie. `/healthz` stays open for probes,
and `/openapi.json` for the tools that read it before they authenticate (openapi.py).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import sys

from flask import Flask, Response, redirect, request

from ldm.errors import UserError
from ldm.serving.hosts import is_loopback
from ldm.serving.security import json_error

TOKEN_COOKIE = "ldm_token"
OPEN_ROUTES = ("/healthz", "/openapi.json")  # probes, and the description clients read first
MIN_TOKEN_CHARS = 16
HOW_TO_SET = (
    "set a token with auth.token=... on the command line or LDM_APP_TOKEN=... in the environment "
    '(e.g. LDM_APP_TOKEN=$(python -c "import secrets; print(secrets.token_urlsafe())"))'
)


def check_exposure(host: str, token: str | None, open_: bool) -> None:
    """Refuse to bind a non-loopback host without a token unless `auth.open=true`, which warns."""
    if token is not None and len(str(token)) < MIN_TOKEN_CHARS:
        raise UserError(f"auth.token has {len(str(token))} characters: expected at least {MIN_TOKEN_CHARS}")
    if is_loopback(host) or token is not None:
        return
    if not open_:
        raise UserError(
            f"host={host} exposes the app to the network, and no token is set, so anyone there could use it: "
            f"{HOW_TO_SET}; or, on a network you trust, say auth.open=true"
        )
    print(
        f"warning: host={host} with auth.open=true: anyone who can reach this machine can render, "
        "and see and cancel the jobs of clients that send no owner token",
        file=sys.stderr,
        flush=True,
    )


def presented_token(authorization: str | None, cookie: str | None) -> str | None:
    """The token a request carries: Bearer, a Basic password, or the page's cookie."""
    if authorization:
        kind, _, value = authorization.partition(" ")
        if kind.lower() == "bearer":
            return value.strip()
        if kind.lower() == "basic":
            try:
                return base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
            except (binascii.Error, UnicodeDecodeError):
                return None
    return cookie


def install_token_auth(app: Flask, token: str | None) -> None:
    """With a token, every route but /healthz needs it (401 otherwise); `/?token=` sets the page's cookie."""
    if token is None:
        return
    expected = str(token).encode()

    @app.before_request
    def require_token() -> Response | None:
        if request.path in OPEN_ROUTES:
            return None
        given = request.args.get("token") if request.path == "/" else None
        if given is not None and hmac.compare_digest(given.encode(), expected):
            response = redirect("/", 303)  # the token leaves the address bar and the history
            response.set_cookie(TOKEN_COOKIE, given, httponly=True, samesite="Strict", max_age=365 * 86400)
            return response
        presented = presented_token(request.headers.get("Authorization"), request.cookies.get(TOKEN_COOKIE))
        if presented is not None and hmac.compare_digest(presented.encode(), expected):
            return None
        reason = "no token" if presented is None else "a wrong token"
        response = json_error(
            f"this server needs a token, and the request carried {reason}: send 'Authorization: Bearer TOKEN' "
            "(or open /?token=TOKEN once in a browser)",
            401,
        )
        response.headers["WWW-Authenticate"] = 'Bearer realm="ldm"'
        return response
