"""
The twistd plugin's two names: Options and makeService.

C{twistd -n chatd --help} lists every option. Values are checked in
postOptions, so a bad one is a one-line usage error, never a traceback; so
are settings that contradict each other (L{Settings.contradiction}).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.python import usage
from typing_extensions import override

from chatd.daemon.logs import json_observer
from chatd.daemon.server_tls import load_server_certificate
from chatd.daemon.service import ChatService, exit_cleanly_on_signals, make_service
from chatd.daemon.settings import UDP_IO_CHOICES, Settings
from chatd.protocol.errors import TLSSetupError

_DEFAULTS = Settings()


def _port(value: str) -> int:
    port = int(value)
    if not 0 <= port <= 65535:
        raise ValueError(f"{port} is not a port number")
    return port


_port.coerceDoc = "From 0 to 65535; 0 lets the system pick."  # type: ignore[attr-defined]


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "chatd: chat rooms over TCP (create, join, invitations) and message relay over UDP. "
        "Speaks the model and seed dialects of the TCRP protocol and its own native extension "
        "on the same ports; see docs/protocol.md."
    )
    optFlags = (
        ("log-frames", None, "Log every TCP frame sent and received, decoded (secrets redacted), at debug level."),
        ("no-legacy", None, "Serve native clients only: refuse the model and seed dialects (plain text on the wire)."),
        ("limit-loopback", None, "Apply the per-address limits to loopback addresses too (exempt by default)."),
    )
    optParameters = (
        ("interface", "i", _DEFAULTS.interface, "Address to listen on for TCP and UDP (IPv4 or IPv6, e.g. ::1)."),
        ("tcp-port", "t", _DEFAULTS.tcp_port, "TCP port for room operations.", _port),
        ("udp-port", "u", _DEFAULTS.udp_port, "UDP port for chat messages.", _port),
        ("tls-port", None, _DEFAULTS.tls_port, "TCP port for native clients over TLS (with --tls-cert).", _port),
        ("tls-cert", None, None, "PEM certificate (chain) for TLS; make one with chatd-cert."),
        ("tls-key", None, None, "PEM private key of --tls-cert."),
        (
            "metrics-port",
            None,
            None,
            "TCP port for Prometheus metrics at /metrics (0: any free port); off unless given.",
            _port,
        ),
        (
            "metrics-interface",
            None,
            _DEFAULTS.metrics_interface,
            "Address the metrics endpoint listens on (IPv4 or IPv6).",
        ),
        (
            "udp-io",
            None,
            _DEFAULTS.udp_io,
            "UDP I/O: 'batched' (chatd's own port, recvmmsg/sendmmsg; the default on Linux)"
            " or 'twisted' (Twisted's stock UDP port).",
        ),
        (
            "idle-timeout",
            None,
            _DEFAULTS.idle_timeout,
            "Seconds without activity before a member is removed; at least twice --keepalive-interval,"
            " and no shorter than --sweep-interval.",
            float,
        ),
        ("sweep-interval", None, _DEFAULTS.sweep_interval, "Seconds between sweeps for idle members.", float),
        (
            "stats-interval",
            None,
            _DEFAULTS.stats_interval,
            "Seconds between two 'stats' log lines (the counters).",
            float,
        ),
        ("handshake-timeout", None, _DEFAULTS.handshake_timeout, "Seconds a connection has to enter a room.", float),
        ("frame-timeout", None, _DEFAULTS.frame_timeout, "Seconds a started TCP frame has to arrive whole.", float),
        (
            "keepalive-interval",
            None,
            _DEFAULTS.keepalive_interval,
            "Seconds between keepalives, as told to native clients; at most half --idle-timeout.",
            float,
        ),
        ("max-payload", None, _DEFAULTS.max_payload, "Largest TCP payload accepted, in bytes.", int),
        ("max-room-name", None, _DEFAULTS.max_room_name, "Longest room name, in UTF-8 bytes (at most 255).", int),
        ("max-user-name", None, _DEFAULTS.max_user_name, "Longest user name, in UTF-8 bytes (at most 255).", int),
        ("max-rooms", None, _DEFAULTS.max_rooms, "Most rooms open at once.", int),
        ("max-members", None, _DEFAULTS.max_members, "Most members in one room.", int),
        ("max-connections", None, _DEFAULTS.max_connections, "Most TCP connections open at once.", int),
        (
            "max-connections-per-host",
            None,
            _DEFAULTS.max_connections_per_host,
            "Most TCP connections open at once from one address.",
            int,
        ),
        ("invite-ttl", None, _DEFAULTS.invite_ttl, "Seconds an invitation token stays valid.", float),
        ("password-cost", None, _DEFAULTS.password_cost, "scrypt cost N for room passwords (a power of 2).", int),
        ("log-json", None, None, "Also write every log event as JSON to this file ('-' for standard output)."),
        ("messages-per-s", None, _DEFAULTS.messages_per_s, "Messages per second one member may send.", float),
        ("message-burst", None, _DEFAULTS.message_burst, "Messages one member may send at once (at least 1).", float),
        ("bytes-per-s", None, _DEFAULTS.bytes_per_s, "Message bytes per second one member may send.", float),
        (
            "byte-burst",
            None,
            _DEFAULTS.byte_burst,
            "Message bytes one member may send at once (at least 4096, a datagram).",
            float,
        ),
        (
            "connections-per-s",
            None,
            _DEFAULTS.connections_per_s,
            "New TCP connections per second from one address.",
            float,
        ),
        ("connection-burst", None, _DEFAULTS.connection_burst, "New TCP connections at once from one address.", float),
        (
            "password-attempts-per-min",
            None,
            _DEFAULTS.password_attempts_per_min,
            "Joins with a password or invitation per minute from one address.",
            float,
        ),
        (
            "password-attempt-burst",
            None,
            _DEFAULTS.password_attempt_burst,
            "Joins with a password or invitation at once from one address.",
            float,
        ),
        (
            "send-queue",
            None,
            _DEFAULTS.send_queue,
            "Most bytes waiting to be sent to one TCP peer; over it the peer is not read.",
            int,
        ),
        (
            "send-queue-timeout",
            None,
            _DEFAULTS.send_queue_timeout,
            "Seconds a TCP peer may stay over --send-queue before it is disconnected.",
            float,
        ),
        ("max-invitations", None, _DEFAULTS.max_invitations, "Most live invitations per room.", int),
        (
            "max-rooms-per-host",
            None,
            _DEFAULTS.max_rooms_per_host,
            "Most open rooms created from one address.",
            int,
        ),
        ("max-hashing", None, _DEFAULTS.max_hashing, "Most password hashes computed at once.", int),
        (
            "max-hashing-per-host",
            None,
            _DEFAULTS.max_hashing_per_host,
            "Most password hashes computed at once for one address.",
            int,
        ),
        (
            "auth-failures-per-s",
            None,
            _DEFAULTS.auth_failures_per_s,
            "Unauthenticated sealed datagrams per second tolerated per key id and per source address.",
            float,
        ),
        (
            "auth-failure-burst",
            None,
            _DEFAULTS.auth_failure_burst,
            "Unauthenticated sealed datagrams at once tolerated per key id and per source address.",
            float,
        ),
        (
            "presence-interval",
            None,
            _DEFAULTS.presence_interval,
            "Seconds over which a room's join and leave notices are coalesced.",
            float,
        ),
    )

    @override
    def postOptions(self) -> None:
        for name in ("interface", "metrics-interface"):
            try:
                ipaddress.ip_address(self[name])
            except ValueError:
                raise usage.UsageError(f"--{name}: {self[name]!r} is not an IP address") from None
        for name in (
            "idle-timeout",
            "sweep-interval",
            "stats-interval",
            "handshake-timeout",
            "frame-timeout",
            "keepalive-interval",
            "invite-ttl",
            "send-queue-timeout",
            "presence-interval",
        ):
            if not self[name] > 0:
                raise usage.UsageError(f"--{name} must be more than 0")
        for name in (
            "messages-per-s",
            "message-burst",
            "bytes-per-s",
            "byte-burst",
            "connections-per-s",
            "connection-burst",
            "password-attempts-per-min",
            "password-attempt-burst",
            "auth-failures-per-s",
            "auth-failure-burst",
        ):
            if not 0 < self[name] < float("inf"):
                raise usage.UsageError(f"--{name} must be a positive number")
        for name in (
            "max-payload",
            "max-rooms",
            "max-members",
            "max-connections",
            "max-connections-per-host",
            "send-queue",
            "max-invitations",
            "max-rooms-per-host",
            "max-hashing",
            "max-hashing-per-host",
        ):
            if self[name] < 1:
                raise usage.UsageError(f"--{name} must be at least 1")
        for name in ("max-room-name", "max-user-name"):
            if not 1 <= self[name] <= 255:
                raise usage.UsageError(f"--{name} must be from 1 to 255")
        if bool(self["tls-cert"]) != bool(self["tls-key"]):
            raise usage.UsageError("--tls-cert and --tls-key go together")
        if self["tls-cert"]:
            try:
                load_server_certificate(self["tls-cert"], self["tls-key"])
            except TLSSetupError as error:
                raise usage.UsageError(str(error)) from None
        if self["udp-io"] not in UDP_IO_CHOICES:
            raise usage.UsageError(f"--udp-io must be one of {', '.join(UDP_IO_CHOICES)}")
        cost = self["password-cost"]
        if cost < 2 or cost & (cost - 1):
            raise usage.UsageError("--password-cost must be a power of 2")
        # Each value is fine alone; some together would make the daemon do
        # what nobody asked for (evict members that keep alive, say).
        contradiction = self.settings().contradiction()
        if contradiction is not None:
            raise usage.UsageError(contradiction)

    def settings(self) -> Settings:
        return Settings(
            interface=self["interface"],
            tcp_port=self["tcp-port"],
            udp_port=self["udp-port"],
            tls_port=self["tls-port"],
            tls_cert=self["tls-cert"],
            tls_key=self["tls-key"],
            idle_timeout=self["idle-timeout"],
            sweep_interval=self["sweep-interval"],
            stats_interval=self["stats-interval"],
            handshake_timeout=self["handshake-timeout"],
            frame_timeout=self["frame-timeout"],
            keepalive_interval=self["keepalive-interval"],
            max_payload=self["max-payload"],
            max_room_name=self["max-room-name"],
            max_user_name=self["max-user-name"],
            max_rooms=self["max-rooms"],
            max_members=self["max-members"],
            max_connections=self["max-connections"],
            max_connections_per_host=self["max-connections-per-host"],
            invite_ttl=self["invite-ttl"],
            password_cost=self["password-cost"],
            log_frames=bool(self["log-frames"]),
            legacy=not self["no-legacy"],
            messages_per_s=self["messages-per-s"],
            message_burst=self["message-burst"],
            bytes_per_s=self["bytes-per-s"],
            byte_burst=self["byte-burst"],
            connections_per_s=self["connections-per-s"],
            connection_burst=self["connection-burst"],
            password_attempts_per_min=self["password-attempts-per-min"],
            password_attempt_burst=self["password-attempt-burst"],
            limit_loopback=bool(self["limit-loopback"]),
            metrics_port=self["metrics-port"],
            metrics_interface=self["metrics-interface"],
            udp_io=self["udp-io"],
            send_queue=self["send-queue"],
            send_queue_timeout=self["send-queue-timeout"],
            max_invitations=self["max-invitations"],
            max_rooms_per_host=self["max-rooms-per-host"],
            max_hashing=self["max-hashing"],
            max_hashing_per_host=self["max-hashing-per-host"],
            auth_failures_per_s=self["auth-failures-per-s"],
            auth_failure_burst=self["auth-failure-burst"],
            presence_interval=self["presence-interval"],
        )


def makeService(options: Options, reactor: Any = None) -> ChatService:
    if reactor is None:
        from twisted.internet import reactor
    log_observer = json_observer(options["log-json"]) if options["log-json"] else None
    service = make_service(options.settings(), reactor, log_observer)
    reactor.callWhenRunning(exit_cleanly_on_signals, reactor)
    return service
