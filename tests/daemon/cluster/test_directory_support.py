"""
What the room directory's tests share (no tests of its own): a real redis-server per test, and a
directory per node, each on its own txredisapi connection (so that two nodes
really race through two sockets), all under one test prefix.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.trial.unittest import TestCase

from chatd.daemon.cluster.directory import RoomDirectory
from chatd.daemon.cluster.records import MemberRecord, RoomRecord, secret_hash
from chatd.daemon.cluster.redis_url import RedisConnection, connect
from chatd.daemon.history import new_epoch
from tests.redis_server import RedisServer
from tests.waiting import CLOCK, bounded

PREFIX = "chatd-test"


def room_record(name: str = "teahouse", host: str = "alice", node: str = "n1", epoch: str | None = None) -> RoomRecord:
    return RoomRecord(
        name=name,
        epoch=epoch or new_epoch(),
        host=host,
        host_node=node,
        password=None,
        native_only=False,
        created_ms=1_700_000_000_000,
    )


def member_record(name: str, node: str = "n1", credential: str | None = None, dialect: str = "native") -> MemberRecord:
    return MemberRecord(
        name=name,
        node=node,
        dialect=dialect,
        reliable=dialect == "native",
        credential_hash=None if credential is None else secret_hash(credential),
    )


class DirectoryTestCase(TestCase):
    """A redis-server for each test; L{directory} opens one node's connection to it."""

    def setUp(self) -> None:
        self.server = RedisServer.start_for(self, persistent=False)

    async def connection(self) -> RedisConnection:
        redis = await bounded(ensureDeferred(connect(self.server.url, CLOCK, 5.0)), "a connection to Redis")
        self.addCleanup(redis.disconnect)
        return redis

    async def directory(self, node: str, **options: Any) -> RoomDirectory:
        options.setdefault("prefix", PREFIX)
        options.setdefault("timeout", 3.0)
        return RoomDirectory(await self.connection(), node, CLOCK, **options)

    async def raw(self, *command: str | int) -> Any:
        """A command on a connection of its own, to look at or change Redis behind the directory's back."""
        redis = getattr(self, "_raw", None)
        if redis is None:
            redis = self._raw = await self.connection()
        waiting: Deferred[Any] = redis.execute_command(*command)
        return await bounded(waiting, f"Redis answers {command[0]}")
