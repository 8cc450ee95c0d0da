"""
Assembly: the MultiService that twistd runs.

Children, in start order: the node's part in the cluster (with --redis:
chatd.daemon.cluster.service), the UDP relay, the TCP listener (and the TLS one,
with a certificate), the metrics endpoint (when asked for), the idle sweep and
the stats log line (each a TimerService at its own interval), and the shutdown
hook. MultiService stops them in reverse, so on SIGTERM members are told and
TCP connections closed first, while the UDP
port can still carry notices to members that only have UDP.

At start it warns when legacy dialects (clear text) or the metrics endpoint
(what the daemon carries) can be reached from beyond loopback.

At start the soft limit on open files is raised towards the hard one, as
the magic-wormhole transit relay's increase_rlimits does: each TCP
connection holds a descriptor, and many systems start processes at 1024.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol

from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.interfaces import (
    IListeningPort,
    IReactorFDSet,
    IReactorSSL,
    IReactorTCP,
    IReactorThreads,
    IReactorUDP,
)
from twisted.internet.threads import deferToThreadPool
from twisted.logger import ILogObserver, Logger, globalLogPublisher
from typing_extensions import override

from chatd.daemon.cluster.metrics import ClusterCollector
from chatd.daemon.cluster.node import ClusterNode
from chatd.daemon.cluster.redis_url import parse_redis_url
from chatd.daemon.cluster.service import ClusterService
from chatd.daemon.controller import ChatServer
from chatd.daemon.fastudp import BatchedUDPPort
from chatd.daemon.malloc import return_large_blocks_to_the_system
from chatd.daemon.metrics import make_registry, metrics_site, metrics_url
from chatd.daemon.ratelimit import is_loopback
from chatd.daemon.rooms import HashRunner
from chatd.daemon.server_tls import ServerCertificate, load_server_certificate
from chatd.daemon.settings import Settings
from chatd.protocol.datagrams import MAX_DATAGRAM

if TYPE_CHECKING:
    from chatd.daemon.web.gateway import WebGateway

try:
    import resource as _resource
except ImportError:  # pragma: no cover - Windows has no resource module
    _resource = None  # type: ignore[assignment]

OPEN_FILES_MARGIN = 64
"""Descriptors needed besides one per TCP connection: listening ports, logs, the reactor's own, metrics scrapes."""
_SOFT_LIMITS_TO_TRY = (1048576, 65536, 10240, 4096)
"""Soft limits to try, highest first, when the hard limit is unlimited (macOS) or refused as a soft one."""

_log = Logger()


class RLimits(Protocol):
    """The part of the resource module that raise_open_files_limit uses (a fake in tests)."""

    @property
    def RLIMIT_NOFILE(self) -> int: ...  # noqa: N802 - the module's spelling

    @property
    def RLIM_INFINITY(self) -> int: ...  # noqa: N802 - the module's spelling

    def getrlimit(self, resource: int, /) -> tuple[int, int]: ...

    def setrlimit(self, resource: int, limits: tuple[int, int], /) -> None: ...


def raise_open_files_limit(max_connections: int, rlimits: RLimits | None = _resource) -> int | None:
    """
    Raise the soft limit on open files as far towards the hard limit as the
    system allows, log what was done, and warn when C{max_connections} (plus
    L{OPEN_FILES_MARGIN}) would not fit. Returns the soft limit in force,
    or None where there is no such limit (or no resource module).
    """
    if rlimits is None:
        _log.info("no resource module: the open-files limit is left alone", event="open_files_limit")
        return None
    infinity = rlimits.RLIM_INFINITY
    soft, hard = rlimits.getrlimit(rlimits.RLIMIT_NOFILE)
    if soft == infinity:
        _log.info("the open-files limit is unlimited", event="open_files_limit", soft=-1, hard=-1)
        return None
    # Linux takes soft = hard; macOS reports an unlimited hard limit but caps
    # the soft one lower; Cygwin caps it lower still: try until one sticks.
    targets = [] if hard == infinity else [hard]
    targets += [limit for limit in _SOFT_LIMITS_TO_TRY if hard == infinity or limit < hard]
    limit = soft
    for target in targets:
        if target <= soft:
            break
        try:
            rlimits.setrlimit(rlimits.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            continue
        limit = target
        break
    shown_hard = "unlimited" if hard == infinity else str(hard)
    if limit > soft:
        _log.info(
            "raised the open-files limit from {previous} to {soft}",
            event="open_files_limit",
            previous=soft,
            soft=limit,
            hard=-1 if hard == infinity else hard,
        )
    else:
        _log.info(
            "open-files limit is {soft} (hard limit {hard_shown})",
            event="open_files_limit",
            soft=limit,
            hard=-1 if hard == infinity else hard,
            hard_shown=shown_hard,
        )
    needed = max_connections + OPEN_FILES_MARGIN
    if needed > limit:
        _log.warn(
            "--max-connections {max_connections} needs about {needed} open files, but the limit is {soft}"
            " (hard limit {hard_shown}): connections past it will fail; raise the hard limit"
            " (ulimit -Hn, LimitNOFILE=) or lower --max-connections",
            event="open_files_short",
            max_connections=max_connections,
            needed=needed,
            soft=limit,
            hard_shown=shown_hard,
        )
    return limit


class ListeningService(Service):
    """
    Listens on a port while running.

    Unlike StreamServerEndpointService it keeps the IListeningPort it got, so
    the bound port number is known when the settings asked for port 0 (tests,
    and anyone who wants the OS to pick).
    """

    def __init__(self, listen: Callable[[], IListeningPort]) -> None:
        self._listen = listen
        self.port: IListeningPort | None = None

    @override
    def startService(self) -> None:
        # Listen first: if the port is taken, twistd reports it and exits.
        self.port = self._listen()
        super().startService()

    @override
    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        port, self.port = self.port, None
        return None if port is None else port.stopListening()

    @property
    def port_number(self) -> int:
        assert self.port is not None
        number: int = self.port.getHost().port  # type: ignore[attr-defined]
        return number


class ChatService(MultiService):
    """The daemon: a MultiService that also knows its ChatServer."""

    _log = Logger()

    def __init__(
        self, server: ChatServer, log_observer: ILogObserver | None = None, tls: ServerCertificate | None = None
    ) -> None:
        super().__init__()
        self.server = server
        self.tls = tls
        self.web: WebGateway | None = None
        """The browser gateway of --web-port (its connections and counters), or None when it is off."""
        self._log_observer = log_observer

    @property
    def tcp_port(self) -> int:
        return self._listener("tcp").port_number

    @property
    def udp_port(self) -> int:
        return self._listener("udp").port_number

    @property
    def tls_port(self) -> int | None:
        """The TLS port, or None when the daemon has no certificate."""
        return self._listener("tls").port_number if self.tls is not None else None

    @property
    def cluster(self) -> ClusterService | None:
        """The node's part in the cluster (--redis), or None when it runs alone."""
        if self.server.settings.redis is None:
            return None
        service = self.getServiceNamed("cluster")
        assert isinstance(service, ClusterService)
        return service

    @property
    def web_port(self) -> int | None:
        """The web page's port (--web-port), or None when it is off."""
        return self._listener("web").port_number if self.server.settings.web_port is not None else None

    @property
    def metrics_port(self) -> int | None:
        """The metrics endpoint's port, or None when it is off."""
        return self._listener("metrics").port_number if self.server.settings.metrics_port is not None else None

    def _listener(self, name: str) -> ListeningService:
        service = self.getServiceNamed(name)
        assert isinstance(service, ListeningService)
        return service

    @override
    def startService(self) -> None:
        if self._log_observer is not None:
            globalLogPublisher.addObserver(self._log_observer)
        settings = self.server.settings
        raise_open_files_limit(settings.max_connections)
        if not return_large_blocks_to_the_system():
            self._log.info(
                "no mallopt: memory freed by password hashing may stay with the process",
                event="malloc_not_tuned",
            )
        super().startService()
        self.warn_if_legacy_exposed()
        self.warn_if_metrics_exposed()
        if self.tls is not None:
            self._log.info(
                "TLS for native clients on port {tls_port}, certificate {fingerprint}",
                event="tls",
                tls_port=self.tls_port,
                fingerprint=self.tls.fingerprint,
            )
            for warning in self.tls.warnings:
                self._log.warn("TLS certificate: {warning}", event="tls_warning", warning=warning)
        self._log.info(
            "chatd listening on {interface}: TCP port {tcp_port}, UDP port {udp_port}",
            event="listening",
            interface=settings.interface,
            tcp_port=self.tcp_port,
            udp_port=self.udp_port,
        )
        web_port = self.web_port
        if web_port is not None:
            scheme = "https" if self.tls is not None else "http"
            host = f"[{settings.interface}]" if ":" in settings.interface else settings.interface
            self._log.info(
                "chat in a browser at {url}", event="web", url=f"{scheme}://{host}:{web_port}/", web_port=web_port
            )
        metrics_port = self.metrics_port
        if metrics_port is not None:
            self._log.info(
                "metrics at {url}",
                event="metrics",
                url=metrics_url(settings.metrics_interface, metrics_port),
                metrics_port=metrics_port,
            )

    def warn_if_legacy_exposed(self) -> None:
        settings = self.server.settings
        if settings.legacy and not is_loopback(settings.interface):
            self._log.warn(
                "legacy dialects are served on {interface}: their tokens and messages cross the network in"
                " clear text; use --no-legacy to serve native clients only (see docs/security.md)",
                event="legacy_exposed",
                interface=settings.interface,
            )

    def warn_if_metrics_exposed(self) -> None:
        settings = self.server.settings
        if settings.metrics_port is not None and not is_loopback(settings.metrics_interface):
            # An empty interface is every address, so it warns too.
            self._log.warn(
                "the metrics endpoint listens on {metrics_interface}: /metrics tells anyone who can reach it"
                " how many rooms, members and connections the daemon has and how much traffic it carries;"
                " bind it to loopback (--metrics-interface 127.0.0.1) or firewall it (see docs/security.md)",
                event="metrics_exposed",
                metrics_interface=settings.metrics_interface or "every address",
            )

    @override
    def stopService(self) -> Deferred[Any]:
        self._log.info("chatd stopping", event="stopping")
        Service.stopService(self)
        # Unlike MultiService, skip children that never started: when a port
        # is taken, start-up stops half-way and shutdown must not trip on the rest.
        stopped: Deferred[Any] = DeferredList(
            [maybeDeferred(child.stopService) for child in reversed(list(self)) if child.running]
        )
        observer = self._log_observer
        if observer is not None:

            def stop_logging(result: object) -> object:
                globalLogPublisher.removeObserver(observer)
                return result

            stopped.addBoth(stop_logging)
        return stopped


def exit_cleanly_on_signals(reactor: Any) -> None:
    """
    Make SIGTERM and SIGINT stop the reactor the way reactor.stop() does, so
    that after the clean shutdown the process exits with status 0.

    Twisted's own handlers record the signal and twistd then kills itself
    with it once shut down (twisted/twisted#7225), which a shell sees as 143.
    A chat daemon that told everyone goodbye and closed its ports has
    succeeded, and supervisors, scripts and the brief expect 0 for that.
    Installed once the reactor runs, because reactor.run() installs Twisted's.
    """
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            reactor.callFromThread(reactor.stop)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)


class _ShutdownHook(Service):
    def __init__(self, server: ChatServer) -> None:
        self._server = server

    @override
    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self._server.stop()


def thread_runner(reactor: IReactorThreads) -> HashRunner:
    """Password hashing on the reactor's thread pool, so relaying never waits for it."""

    def run(work: Callable[[], Any]) -> Deferred[Any]:
        return deferToThreadPool(reactor, reactor.getThreadPool(), work)

    return run


def make_service(settings: Settings, reactor: Any = None, log_observer: ILogObserver | None = None) -> ChatService:
    if reactor is None:
        from twisted.internet import reactor
    # With --redis, the node exists before Redis answers: its server is built
    # with it, and ClusterService starts it once connected.
    node = ClusterNode(settings.node_name, clock=reactor, settings=settings) if settings.redis is not None else None
    server = ChatServer(reactor, settings, run_hash=thread_runner(reactor), cluster=node)
    tls = (
        load_server_certificate(settings.tls_cert, settings.tls_key) if settings.tls_cert and settings.tls_key else None
    )
    top = ChatService(server, log_observer, tls)

    def listen_udp() -> IListeningPort:
        # One byte more than the limit, so an oversized datagram shows as
        # oversized instead of arriving cut to a plausible length.
        if settings.udp_io == "batched":
            port = BatchedUDPPort(
                settings.udp_port, server.relay, settings.interface, IReactorFDSet(reactor), MAX_DATAGRAM + 1
            )
            port.startListening()
            return port
        return IReactorUDP(reactor).listenUDP(
            settings.udp_port, server.relay, settings.interface, maxPacketSize=MAX_DATAGRAM + 1
        )

    def listen_tcp() -> IListeningPort:
        return IReactorTCP(reactor).listenTCP(settings.tcp_port, server.tcp_factory, 1024, settings.interface)

    children: list[tuple[str, Service]] = [("udp", ListeningService(listen_udp)), ("tcp", ListeningService(listen_tcp))]
    cluster_service: ClusterService | None = None
    if settings.redis is not None:
        # First to start and last to stop: the node is in the cluster before
        # it takes requests, and stays in it while members are told goodbye.
        url = parse_redis_url(settings.redis)
        cluster_service = ClusterService(
            url, settings.node_name, reactor, cluster_node=node, reap_grace=settings.node_grace
        )
        children.insert(0, ("cluster", cluster_service))
    if tls is not None:
        options = tls.options

        def listen_tls() -> IListeningPort:
            # The same factory: native clients speak the same frames, sealed by TLS.
            return IReactorSSL(reactor).listenSSL(
                settings.tls_port, server.tcp_factory, options, 1024, settings.interface
            )

        children.append(("tls", ListeningService(listen_tls)))
    if settings.web_port is not None:
        top.web, listen_web = _web_listener(server, settings, tls, reactor)
        children.append(("web", ListeningService(listen_web)))
    if settings.metrics_port is not None:
        registry = make_registry(server)
        if top.web is not None:
            from chatd.daemon.web.metrics import WebCollector

            registry.register(WebCollector(top.web))
        if cluster_service is not None:
            registry.register(ClusterCollector(cluster_service))
        metrics_port = settings.metrics_port

        def listen_metrics() -> IListeningPort:
            site = metrics_site(registry, reactor)
            # Site is a ServerFactory[_GenericHTTPChannelProtocol], and Twisted's
            # generic ServerFactory is invariant: a typing wart, not a mismatch.
            return IReactorTCP(reactor).listenTCP(
                metrics_port,
                site,  # type: ignore[arg-type]
                interface=settings.metrics_interface,
            )

        children.append(("metrics", ListeningService(listen_metrics)))
    children += [
        ("sweeper", _every(server.settings.sweep_interval, server.sweep, reactor)),
        ("stats", _every(server.settings.stats_interval, server.log_stats, reactor)),
        ("shutdown", _ShutdownHook(server)),
    ]
    for name, child in children:
        child.setName(name)
        child.setServiceParent(top)
    return top


def _web_listener(
    server: ChatServer, settings: Settings, tls: ServerCertificate | None, reactor: Any
) -> tuple[WebGateway, Callable[[], IListeningPort]]:
    """
    The gateway, and listening on --web-port: the page and its WebSocket (chatd.daemon.web),
    over TLS (https and wss) when the daemon has a certificate. Imported
    only when asked for, as autobahn is not needed otherwise.
    """
    from chatd.daemon.web.gateway import WebGateway
    from chatd.daemon.web.site import web_site

    gateway = WebGateway(
        server.store, server.relay, server.tcp_factory, reactor, settings, secure=tls is not None, reactor=reactor
    )
    port = settings.web_port
    assert port is not None

    def listen_web() -> IListeningPort:
        site = web_site(gateway)
        # Site is a ServerFactory[_GenericHTTPChannelProtocol], as for the metrics: a typing wart.
        if tls is not None:
            return IReactorSSL(reactor).listenSSL(port, site, tls.options, 1024, settings.interface)
        return IReactorTCP(reactor).listenTCP(port, site, 1024, settings.interface)  # type: ignore[arg-type]

    return gateway, listen_web


def _every(interval: float, work: Callable[[], None], clock: Any) -> TimerService:
    timer = TimerService(interval, work)
    timer.clock = clock
    return timer
