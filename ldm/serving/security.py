"""What keeps a local render server safe to leave running: no cross-site writes, bounded bodies, and
errors that tell the user an id while the traceback stays in the log.

Why check Origin: any web page the user visits can POST a form to http://127.0.0.1:5000 (a "simple"
cross-origin request needs no CORS preflight), so without this a page could queue renders or cancel
the user's. Browsers send `Origin` (and `Sec-Fetch-Site`) with every cross-origin POST/DELETE; curl sends
neither and is let through, since it runs with the user's own rights anyway.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from urllib.parse import urlsplit

from flask import Flask, Response, current_app, has_request_context, jsonify, request
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
ERROR_SHAPES = "ldm_error_shapes"  # app.extensions key: blueprint name -> the body of its errors
ErrorShape = Callable[[str, int], dict]


def cross_origin_reason(origin: str | None, host: str | None, fetch_site: str | None) -> str | None:
    """Why a state-changing request from a browser is refused, or None when it comes from this page."""
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return f"cross-origin request refused: Sec-Fetch-Site is {fetch_site!r}, expected 'same-origin'"
    if origin is None:
        return None
    if origin == "null" or urlsplit(origin).netloc.lower() != (host or "").lower():
        return f"cross-origin request refused: Origin {origin!r} does not match this server ({host!r})"
    return None


def register_error_shape(app: Flask, blueprint: str, shape: ErrorShape) -> None:
    """The errors of `blueprint`'s routes get `shape(message, status)` as their body, those answered before
    its view runs (Host, token, Origin, body size, a short owner token, 500s) too. Why: OpenAI's client reads
    `error.message`, A1111's `detail`; a layer whose 401 came in our shape would break what it describes."""
    app.extensions.setdefault(ERROR_SHAPES, {})[blueprint] = shape


def error_body(message: str, status: int) -> dict:
    """The error body for the route this request is for: its layer's shape, else `{"error": message}`."""
    shape = None
    if has_request_context() and request.blueprint is not None:
        shape = current_app.extensions.get(ERROR_SHAPES, {}).get(request.blueprint)
    return shape(message, status) if shape is not None else {"error": message}


def json_error(message: str, status: int, body: dict | None = None, **headers: object) -> Response:
    """`error_body(message, status)` (or `body`, for a layer's error with more in it) with `status`; headers
    given as keywords (`Retry_After=5`), None ones left out."""
    response = jsonify(body if body is not None else error_body(message, status))
    response.status_code = status
    response.headers.update({k.replace("_", "-"): str(v) for k, v in headers.items() if v is not None})
    return response


def install_protections(app: Flask, max_request_bytes: int) -> None:
    """Body limit, the Origin check on POST/DELETE, JSON errors, and 500s that carry an error id."""
    app.config["MAX_CONTENT_LENGTH"] = max_request_bytes

    @app.before_request
    def refuse_cross_origin() -> Response | None:
        if request.method in SAFE_METHODS:
            return None
        reason = cross_origin_reason(
            request.headers.get("Origin"), request.headers.get("Host"), request.headers.get("Sec-Fetch-Site")
        )
        return None if reason is None else json_error(reason, 403)

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException) -> Response:
        if err.code == 413:
            return json_error(f"request body over {max_request_bytes} bytes", 413)
        response = json_error(f"{err.code} {err.name}: {err.description}", err.code or 500)
        # the exception's own headers, such as a 405's `Allow` (RFC 9110 requires it), less its HTML type
        response.headers.update({k: v for k, v in err.get_headers() if k.lower() != "content-type"})
        return response

    @app.errorhandler(Exception)
    def internal_error(err: Exception) -> Response:
        error_id = secrets.token_hex(4)
        log.exception("error id %s on %s %s", error_id, request.method, request.path)
        return json_error(f"internal error (error id {error_id}; the server log has the traceback)", 500)
