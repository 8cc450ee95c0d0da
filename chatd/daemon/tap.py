"""
The twistd plugin's two names: Options and makeService.

C{twistd -n chatd --help} lists every option. The options are derived from
the settings' declarations (chatd.daemon.settings: each setting declared once,
with its help text, coercer and check); only those that are no setting of the
daemon (C{--log-json}) are written here. Values are checked in postOptions,
so a bad one is a one-line usage error, never a traceback; so are settings
that contradict each other (L{Settings.contradiction}).
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.python import usage
from typing_extensions import override

from chatd.daemon.cluster.redis_url import parse_redis_url, probe_redis
from chatd.daemon.logs import json_observer
from chatd.daemon.server_tls import load_server_certificate
from chatd.daemon.service import ChatService, exit_cleanly_on_signals, make_service
from chatd.daemon.settings import OPTIONS, Settings
from chatd.protocol.errors import TLSSetupError

TAP_ONLY_PARAMETERS = (
    ("log-json", None, None, "Also write every log event as JSON to this file ('-' for standard output)."),
)
"""The options that are no setting of the daemon but of how twistd runs it (makeService reads them)."""


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "chatd: chat rooms over TCP (create, join, invitations) and message relay over UDP. "
        "Speaks the model and seed dialects of the TCRP protocol and its own native extension "
        "on the same ports; see docs/protocol.md."
    )
    # Derived from the settings' declarations (chatd.daemon.settings.OPTIONS).
    optFlags = tuple((option.name, option.short, option.help) for option in OPTIONS if option.flag)
    optParameters = (
        *(
            (option.name, option.short, option.default, option.help, option.coerce)
            for option in OPTIONS
            if not option.flag
        ),
        *TAP_ONLY_PARAMETERS,
    )

    @override
    def postOptions(self) -> None:
        settings = self.settings()
        invalid = settings.invalid_value()
        if invalid is not None:
            raise usage.UsageError(invalid)
        if bool(settings.tls_cert) != bool(settings.tls_key):
            raise usage.UsageError("--tls-cert and --tls-key go together")
        if settings.tls_cert and settings.tls_key:
            try:
                load_server_certificate(settings.tls_cert, settings.tls_key)
            except TLSSetupError as error:
                raise usage.UsageError(str(error)) from None
        # Each value is fine alone; some together would make the daemon do
        # what nobody asked for (evict members that keep alive, say).
        contradiction = settings.contradiction()
        if contradiction is not None:
            raise usage.UsageError(contradiction)

    def settings(self) -> Settings:
        return Settings.from_options(self)


REDIS_PROBE_TIMEOUT = 5.0
"""Seconds the start-up check of --redis may take."""


def makeService(options: Options, reactor: Any = None) -> ChatService:
    settings = options.settings()
    if settings.redis is not None:
        # Before anything starts: a Redis that cannot be reached is one line
        # and a non-zero exit, not a node running degraded from its first second.
        problem = probe_redis(parse_redis_url(settings.redis), REDIS_PROBE_TIMEOUT)
        if problem is not None:
            sys.stderr.write(f"chatd: {problem}\n")
            raise SystemExit(1)
    if reactor is None:
        from twisted.internet import reactor
    log_observer = json_observer(options["log-json"]) if options["log-json"] else None
    service = make_service(settings, reactor, log_observer)
    reactor.callWhenRunning(exit_cleanly_on_signals, reactor)
    return service
