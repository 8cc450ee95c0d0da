"""
The node's standing in the cluster, as a twistd service: its Redis
connection, the room directory, the heartbeat and the reaper
(docs/cluster.md).

The daemon asks whether Redis answers before anything starts
(L{chatd.daemon.cluster.redis_url.probe_redis}, from the twistd plugin), so a
Redis that cannot be reached is one line and a non-zero exit. Once running,
losing Redis is not fatal: the connection reconnects by itself (txredisapi),
a failed heartbeat is a warning and a count, and when Redis is back the next
beat registers the node again.

The reaper runs on every node, every L{REAP_INTERVAL}: it removes the members
of nodes that have not beaten for L{REAP_GRACE} (killed, or cut off) and have
not resumed elsewhere, and releases the rooms whose host went with them. Any
node may reap; the directory reports each member once however many reap at
the same instant.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from typing_extensions import override

from chatd.daemon.cluster.directory import DEFAULT_NODE_TTL, DEFAULT_REAP_GRACE, Liveness, RoomDirectory
from chatd.daemon.cluster.node import ClusterNode
from chatd.daemon.cluster.redis_url import RedisConnection, RedisURL, connect
from chatd.protocol.errors import ClusterUnavailableError

REDIS_TIMEOUT = 5.0
"""Seconds to connect to Redis, and for any one command to be answered."""
REAP_INTERVAL = DEFAULT_NODE_TTL
"""Seconds between two looks for dead nodes."""
REAP_GRACE = DEFAULT_REAP_GRACE
"""The default of --node-grace (chatd.daemon.cluster.directory.DEFAULT_REAP_GRACE)."""


class ClusterStats:
    """What the node counts of its life in the cluster (the metrics read it)."""

    __slots__ = ("heartbeat_failures", "reaped_members", "reaped_rooms", "redis_up", "registrations")

    def __init__(self) -> None:
        self.redis_up = False
        """Whether the last heartbeat reached Redis."""
        self.heartbeat_failures = 0
        self.registrations = 0
        """Heartbeats that found the node unregistered: its first, and each after Redis lost it."""
        self.reaped_members = 0
        self.reaped_rooms = 0


class ClusterService(Service):
    """
    The node in the cluster while the daemon runs: connects to Redis at
    C{url}, starts its L{ClusterNode} (the room log, the bus) on that
    connection, then beats and reaps until stopped. L{ready} fires once the
    directory and the node are usable (or with the error that kept them
    from Redis).

    It is the first of the daemon's services to start and the last to
    stop: by the time it stops, the server has closed its rooms (the
    shutdown hook), and what that wrote to Redis is waited for
    (L{ClusterNode.stop}) before the connection goes.
    """

    _log = Logger()

    def __init__(
        self,
        url: RedisURL,
        node: str,
        reactor: Any,
        *,
        cluster_node: ClusterNode | None = None,
        timeout: float = REDIS_TIMEOUT,
        reap_interval: float = REAP_INTERVAL,
        reap_grace: float = REAP_GRACE,
        node_ttl: float = DEFAULT_NODE_TTL,
    ) -> None:
        self.url = url
        self.node = node
        self.cluster_node = cluster_node
        """The node's rooms in the cluster (its claims, the log, the bus); None: the directory alone (tests)."""
        self._reactor = reactor
        self._timeout = timeout
        self.reap_interval = reap_interval
        """Seconds between two looks for dead nodes (read when the service starts)."""
        self.reap_grace = reap_grace
        """
        Seconds a node may be silent before it is reaped, and that this node's
        previous life's members have to resume after it starts (read when the
        service starts).
        """
        self._node_ttl = node_ttl
        self.stats = ClusterStats()
        self.redis: RedisConnection | None = None
        self.directory: RoomDirectory | None = None
        self.ready: Deferred[RoomDirectory] = Deferred()
        self._starting: Deferred[None] | None = None
        self._reaper: LoopingCall | None = None

    @override
    def startService(self) -> None:
        super().startService()
        self._starting = ensureDeferred(self._start())

    async def _start(self) -> None:
        try:
            self.redis = await connect(self.url, self._reactor, self._timeout)
        except ClusterUnavailableError as error:
            self._log.error("{reason}", reason=str(error), event="redis_unreachable")
            self.ready.errback(error)
            return
        directory = self.directory = RoomDirectory(
            self.redis, self.node, self._reactor, node_ttl=self._node_ttl, timeout=self._timeout
        )
        # Registered before any member is added, so that a node that dies
        # is found by the others' reapers (the directory's docstring).
        directory.start_heartbeat(self._beaten)
        if self.cluster_node is not None:
            try:
                await self.cluster_node.start_with(directory, self.redis, self.url, self._timeout)
            except ClusterUnavailableError as error:
                # The bus keeps trying by itself; until it reaches Redis the
                # node refuses creates and joins as the cluster being unavailable.
                self._log.warn("{reason}", reason=str(error), event="cluster_node_waiting")
            try:
                # A node back under its name before the grace period ran out:
                # its members resume, and those that do not are removed after it.
                previous = await self.cluster_node.recall_previous_life(self.reap_grace)
            except ClusterUnavailableError as error:
                self._log.warn(
                    "could not read this node's previous members: {reason}", reason=str(error), event="recall_failed"
                )
            else:
                if previous:
                    self._log.info(
                        "node {node} is back: {count} members of its previous life have {grace:g} s to resume",
                        node=self.node,
                        count=previous,
                        grace=self.reap_grace,
                        event="node_back",
                    )
        reaper = self._reaper = LoopingCall(lambda: ensureDeferred(self._reap()))
        reaper.clock = self._reactor
        reaper.start(self.reap_interval, now=False)
        self._log.info("node {node} in the cluster at {url}", node=self.node, url=str(self.url), event="cluster_joined")
        self.ready.callback(directory)

    def _beaten(self, result: Liveness | ClusterUnavailableError) -> None:
        stats = self.stats
        if isinstance(result, ClusterUnavailableError):
            stats.heartbeat_failures += 1
            if stats.redis_up:
                self._log.warn(
                    "lost Redis at {url}: {reason}; the node carries on and registers again when it is back",
                    url=str(self.url),
                    reason=str(result),
                    event="redis_lost",
                )
            stats.redis_up = False
            return
        if not stats.redis_up and stats.registrations:
            self._log.info("Redis at {url} is back", url=str(self.url), event="redis_back")
        stats.redis_up = True
        if result is Liveness.REGISTERED:
            stats.registrations += 1

    async def _reap(self) -> None:
        directory = self.directory
        if directory is None or not self.stats.redis_up:
            return
        try:
            report = await directory.reap(self.reap_grace)
        except ClusterUnavailableError as error:
            self._log.warn("reaping dead nodes failed: {reason}", reason=str(error), event="reap_failed")
            return
        except Exception:
            # A bug must not stop the reaper: log it and look again next time.
            self._log.failure("reaping dead nodes failed unexpectedly")
            return
        if report.members or report.rooms:
            if self.cluster_node is not None:
                # Every node's members are told, as the dead node would have told them.
                await self.cluster_node.announce_reaped(report)
            self.stats.reaped_members += len(report.members)
            self.stats.reaped_rooms += len(report.rooms)
            self._log.info(
                "removed {members} members and {rooms} rooms of dead nodes {nodes}",
                members=len(report.members),
                rooms=len(report.rooms),
                nodes=", ".join(report.nodes),
                event="reaped",
            )

    @override
    def stopService(self) -> Deferred[Any]:
        super().stopService()
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        if self._starting is not None:
            await self._starting
        reaper, self._reaper = self._reaper, None
        if reaper is not None and reaper.running:
            reaper.stop()
        if self.cluster_node is not None and self.directory is not None:
            await self.cluster_node.stop()
        directory = self.directory
        if directory is not None:
            await directory.stop_heartbeat()
        redis, self.redis = self.redis, None
        if redis is not None:
            await redis.disconnect()
