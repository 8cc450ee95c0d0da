"""
The web site of --web-port (twisted.web): the page, its stylesheet and its
script from package data (chatd/daemon/web/static, no build step), and the
WebSocket at C{/ws} (chatd.daemon.web.gateway). Anything else is a 404.

Every answer carries a strict Content-Security-Policy (L{content_security_policy}):
scripts, styles and images from this site only, no inline script or style,
connections to this site and its own WebSocket only, no framing, no forms
sent anywhere. The page takes nothing from the URL, and no token is ever in one.
"""

from __future__ import annotations

import re
from importlib.resources import files

from autobahn.twisted.resource import WebSocketResource
from twisted.web.http import Request
from twisted.web.iweb import IRequest
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site
from typing_extensions import override

from chatd.daemon.web.gateway import WEBSOCKET_PATH, WebGateway

STATIC_FILES: dict[bytes, tuple[str, bytes]] = {
    b"": ("index.html", b"text/html; charset=utf-8"),
    b"chat.css": ("chat.css", b"text/css; charset=utf-8"),
    b"chat.js": ("chat.js", b"text/javascript; charset=utf-8"),
    b"favicon.svg": ("favicon.svg", b"image/svg+xml"),
}
"""The page's files by path (C{/}, C{/chat.css}, ...): the file in chatd/daemon/web/static and its type."""
_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")
"""A Host header that may be written into the policy: a name or address and a port, nothing else."""


def content_security_policy(host: str, secure: bool) -> str:
    """
    The policy of every answer: only this site, and its WebSocket on the
    same host and port (C{ws://} or, over TLS, C{wss://} the C{host} the
    request was sent to; left out when that Host header is not a plain
    host and port).
    """
    connect = "'self'"
    if _HOST.match(host):
        connect += f" {'wss' if secure else 'ws'}://{host}"
    return (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self';"
        f" connect-src {connect}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; object-src 'none'"
    )


def _protect(request: IRequest, secure: bool) -> None:
    raw: object = request.getHeader(b"host")
    host = raw.decode("latin-1").strip() if isinstance(raw, bytes) else ""
    request.setHeader(b"content-security-policy", content_security_policy(host, secure).encode("ascii"))
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"referrer-policy", b"no-referrer")
    request.setHeader(b"x-frame-options", b"DENY")
    request.setHeader(b"cache-control", b"no-cache")
    if secure:
        request.setHeader(b"strict-transport-security", b"max-age=31536000")


class StaticFile(Resource):
    """One file of the page, read once from package data, served with its type and the site's headers."""

    isLeaf = True  # noqa: N815 - twisted.web's spelling

    def __init__(self, body: bytes, content_type: bytes, secure: bool) -> None:
        super().__init__()
        self._body = body
        self._type = content_type
        self._secure = secure

    def render_GET(self, request: IRequest) -> bytes:  # noqa: N802 - twisted.web's spelling
        _protect(request, self._secure)
        request.setHeader(b"content-type", self._type)
        return self._body

    def render_HEAD(self, request: IRequest) -> bytes:  # noqa: N802 - twisted.web's spelling
        return self.render_GET(request)


class _Root(Resource):
    """The page's files and C{/ws} as children; any other path is a plain 404, with the site's headers."""

    def __init__(self, secure: bool) -> None:
        super().__init__()
        self._secure = secure

    @override
    def getChild(self, path: bytes, request: IRequest) -> IResource:
        _protect(request, self._secure)
        return notFound()


class WebSite(Site):
    """The site of --web-port: no access log line per request (the daemon logs members, not page loads)."""

    noisy = False

    @override
    def log(self, request: Request) -> None:
        pass


def read_static(name: str) -> bytes:
    """A file of the page, from the package's data."""
    return files("chatd.daemon.web").joinpath("static", name).read_bytes()


def web_site(gateway: WebGateway) -> WebSite:
    """The site: C{/} (the page), C{/chat.css}, C{/chat.js} and C{/ws} (the gateway)."""
    root = _Root(gateway.secure)
    for path, (name, content_type) in STATIC_FILES.items():
        root.putChild(path, StaticFile(read_static(name), content_type, gateway.secure))
    root.putChild(WEBSOCKET_PATH, WebSocketResource(gateway))
    return WebSite(root)
