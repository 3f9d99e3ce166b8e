"""Requests a web page tricks a browser into sending: refused before any route runs.

A server on 127.0.0.1 without a key is reachable from every page its user opens. Two ways in:

- DNS rebinding: a page on attacker.example re-points its name at 127.0.0.1 and then reads our answers as
  its own origin. Its requests carry `Host: attacker.example`, so a Host naming anything but the allowed
  names is refused (400). An IP address in Host always passes: a page cannot rebind an address, and so
  the server answers to whatever address it is reached on.
- Cross-site requests (CSRF): a page may POST a form or `text/plain` (or multipart) body to any address
  without asking (a "simple" request: no CORS preflight), and it cannot read the answer but the request
  has its effect. Browsers say where such a request comes from: `Origin` (sent on every cross-origin POST)
  and `Sec-Fetch-Site`. Every method but GET, HEAD and OPTIONS is refused (403) when `Origin` is another
  origin than the server's own and not one of `--cors-origin`, or when `Sec-Fetch-Site` is `cross-site`
  or `same-site` (another port of localhost is the same site). Requests with neither header (curl, the
  `openai` client, other servers) are not from a page and pass. GET routes change nothing and a page
  cannot read their answers without CORS, so they are not checked for origin.
"""

import ipaddress
import socket
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from sdrun.serve.errors import error_response

ANY_HOST = "*"
# Methods that change nothing here (OPTIONS: CORS preflights, answered by CORSMiddleware when it is on).
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_CROSS_SITE = frozenset({"cross-site", "same-site"})
_WILDCARD_ADDRESSES = frozenset({"0.0.0.0", "::", ""})


def host_name(host: str) -> str:
    """The name (or address) of a Host header or a --host value: no port, no brackets, lower case, no
    final dot."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    name, colon, port = host.rpartition(":")
    if colon and port.isdigit() and ":" not in name:
        host = name
    return host.rstrip(".")


def is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    """Whether a --host value listens on this machine only."""
    name = host_name(host)
    if name == "localhost":
        return True
    return is_address(name) and ipaddress.ip_address(name).is_loopback


def default_allowed_hosts(bound: str) -> tuple[str, ...]:
    """The names a server bound to `bound` answers to: localhost, the bound name itself, and on all
    interfaces this machine's own names (clients elsewhere reach it by those or by its addresses)."""
    names = ["localhost"]
    name = host_name(bound)
    if name in _WILDCARD_ADDRESSES:
        names += [socket.gethostname().lower(), socket.getfqdn().lower()]
    elif not is_address(name):
        names.append(name)
    return tuple(dict.fromkeys(names))


class BrowserGuard:
    """ASGI middleware: 400 for a Host naming a name not allowed, 403 for a cross-site state change."""

    def __init__(self, app: ASGIApp, allowed_hosts: tuple[str, ...], cors_origins: tuple[str, ...]) -> None:
        self.app = app
        self.any_host = ANY_HOST in allowed_hosts
        self.allowed_hosts = frozenset(host_name(host) for host in allowed_hosts)
        self.cors_origins = frozenset(origin.rstrip("/").lower() for origin in cors_origins)

    def _refusal(self, scope: Scope) -> tuple[int, str] | None:
        headers = dict(scope["headers"])
        host = headers.get(b"host", b"").decode("latin-1")
        name = host_name(host)
        # No Host at all (HTTP/1.0) is no browser's request: browsers always send one.
        if host and not self.any_host and not is_address(name) and name not in self.allowed_hosts:
            return 400, (
                f"this server does not answer to the host name {name[:100]!r}: "
                "reach it by an address or add the name with --allowed-hosts"
            )
        if scope["method"] in _SAFE_METHODS:
            return None
        origin = headers.get(b"origin", b"").decode("latin-1").rstrip("/").lower()
        if origin in self.cors_origins:
            return None
        # Our own pages (/docs) post with Origin = this server; "null" (sandboxed frames, files) is foreign.
        foreign = bool(origin) and urlsplit(origin).netloc != host.lower()
        fetch_site = headers.get(b"sec-fetch-site", b"").decode("latin-1").lower()
        if foreign or fetch_site in _CROSS_SITE:
            return 403, (
                f"cross-site request refused (Origin {origin[:100] or 'none'}, Sec-Fetch-Site "
                f"{fetch_site[:20] or 'none'}): let a web page call this server with --cors-origin ORIGIN"
            )
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (refusal := self._refusal(scope)) is not None:
            status, message = refusal
            await error_response(scope["path"], status, message)(scope, receive, send)
            return
        await self.app(scope, receive, send)
