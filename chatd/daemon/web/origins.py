"""
Where a connection comes from, for the browser gateway's checks: the host
its per-address limits count by, and whether the page that opens a
WebSocket is this site's own (or one the operator allowed). Pure.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress


def host_of(address: IAddress) -> str:
    """The host of a peer's address: what the per-address limits count by."""
    if isinstance(address, IPv4Address | IPv6Address):
        return address.host
    return str(address)


def same_origin(origin: str, host_header: str, secure: bool) -> bool:
    """
    Whether C{origin} (the Origin header) is the page's own: the scheme this
    site is served with, and the very host and port the request was sent to
    (its Host header), compared without case.
    """
    scheme = "https" if secure else "http"
    parts = urlsplit(origin.strip().lower())
    return parts.scheme == scheme and bool(host_header) and parts.netloc == host_header.strip().lower()


def origin_allowed(origin: str | None, host_header: str, secure: bool, extra: frozenset[str]) -> bool:
    """
    Same origin (L{same_origin}), or one of the operator's C{extra} origins
    (--web-origin, compared without case and without a trailing slash). A
    request without an Origin header is no browser's: refused.
    """
    if not origin:
        return False
    return same_origin(origin, host_header, secure) or origin.strip().lower().rstrip("/") in extra
