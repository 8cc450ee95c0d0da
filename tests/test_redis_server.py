"""The tests' real redis-server (tests.redis_server): it starts, answers, keeps its data across a restart, and stops."""

from __future__ import annotations

import socket

import txredisapi
from twisted.trial.unittest import TestCase

from tests.redis_server import RedisServer, _ping
from tests.waiting import bounded


class RedisServerTests(TestCase):
    async def test_answers_txredisapi_and_keeps_its_data_across_a_restart(self) -> None:
        server = RedisServer.start_for(self)
        self.assertTrue(server.running)
        connection = await bounded(
            txredisapi.Connection("127.0.0.1", server.port, reconnect=False), "a connection to redis-server"
        )
        await bounded(connection.set("chatd:test", "kept"), "SET")
        await bounded(connection.disconnect(), "the disconnection")
        port = server.port
        server.restart()
        self.assertEqual(server.port, port)
        connection = await bounded(
            txredisapi.Connection("127.0.0.1", server.port, reconnect=False), "a connection after the restart"
        )
        self.assertEqual(await bounded(connection.get("chatd:test"), "GET"), "kept")
        await bounded(connection.disconnect(), "the disconnection")

    def test_stopped_means_nothing_listens(self) -> None:
        server = RedisServer.start_for(self, persistent=False)
        port = server.port
        server.stop()
        self.assertFalse(server.running)
        self.assertFalse(_ping(port))
        with self.assertRaises(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            pass
