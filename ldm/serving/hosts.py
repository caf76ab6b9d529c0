"""The `Host` allow-list: requests must name this server by a loopback name, the configured host:port, or
one of `allowed_hosts`.

Why: a DNS-rebinding page (evil.example resolving to 127.0.0.1) is same-origin with itself, so the Origin
check passes, but its requests still say `Host: evil.example`. Refusing unknown Host names closes that door.
"""

from __future__ import annotations

import ipaddress

from flask import Flask, Response, request

from ldm.serving.security import json_error

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
ANY_HOST = "*"


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the server on this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def split_host(value: str) -> tuple[str, str | None]:
    """'Name:5000' -> ('name', '5000'); '[::1]:5000' -> ('::1', '5000'); 'name' -> ('name', None)."""
    value = value.strip().lower()
    if value.startswith("["):
        name, _, rest = value[1:].partition("]")
        return name, rest[1:] if rest.startswith(":") else None
    if value.count(":") == 1:
        name, port = value.split(":")
        return name, port
    return value, None


class HostAllowList:
    """Loopback names on any port, the bound host on its port, and `extra` ('name' any port, 'name:port')."""

    def __init__(self, host: str, port: int, extra: list[str]) -> None:
        self.any = ANY_HOST in extra
        self.entries = [split_host(name) for name in (*LOOPBACK_NAMES, *extra) if name != ANY_HOST]
        if host not in ("0.0.0.0", "::", ""):
            self.entries.append((split_host(host)[0], str(port)))

    def allows(self, header: str | None) -> bool:
        if self.any:
            return True
        if not header:
            return False
        name, port = split_host(header)
        return any(name == n and (p is None or p == (port or "80")) for n, p in self.entries)

    def names(self) -> str:
        return ", ".join(n if p is None else f"{n}:{p}" for n, p in self.entries)


def install_host_check(app: Flask, allowed: HostAllowList) -> None:
    """403 with the reason for a request whose Host is not on the list."""

    @app.before_request
    def refuse_unknown_host() -> Response | None:
        header = request.headers.get("Host")
        if allowed.allows(header):
            return None
        return json_error(
            f"Host {header!r} is not allowed: this server answers to {allowed.names()}; "
            "add the name you use to allowed_hosts (e.g. allowed_hosts='[myhost.lan]')",
            403,
        )
