"""
The node's standing in the cluster (chatd.daemon.cluster.service) and the
daemon's start with --redis: one line and a non-zero exit when Redis cannot
be reached; a heartbeat that survives Redis going away and coming back; the
reaper removing a dead node's members. Against a real redis-server.
"""

from __future__ import annotations

import socket
import subprocess
import sys

from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import SynchronousTestCase, TestCase

from chatd.daemon.cluster.directory import RoomDirectory
from chatd.daemon.cluster.records import MemberRecord, RoomRecord
from chatd.daemon.cluster.redis_url import connect, parse_redis_url, probe_redis
from chatd.daemon.cluster.service import ClusterService
from chatd.daemon.history import new_epoch
from chatd.daemon.service import make_service
from chatd.daemon.settings import Settings
from tests.daemon.test_twistd import run_twistd
from tests.loopback_clients import free_ports
from tests.redis_server import RedisServer
from tests.waiting import bounded, until


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then let go)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class StartTests(SynchronousTestCase):
    def test_an_unreachable_redis_is_one_line_and_a_non_zero_exit(self) -> None:
        tcp_port, udp_port = free_ports()
        url = f"redis://127.0.0.1:{_closed_port()}/0"
        result = run_twistd("--tcp-port", str(tcp_port), "--udp-port", str(udp_port), "--redis", url)
        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, 1, output)
        self.assertNotIn("Traceback", output)
        expected = f"chatd: cannot reach Redis at {url}: connection refused"
        self.assertEqual(result.stderr.strip().splitlines(), [expected])

    def test_a_bad_url_or_a_node_without_redis_is_a_usage_line(self) -> None:
        for arguments, reason in [
            (["--redis", "http://127.0.0.1:6379"], "it must start with redis://"),
            (["--node", "n1"], "--node names this daemon in a cluster: it needs --redis"),
            (["--redis", "redis://127.0.0.1", "--node", "two words"], "printable characters without spaces"),
            (["--redis", "redis://127.0.0.1", "--node-grace", "5"], "shorter than a heartbeat's lifetime"),
        ]:
            result = run_twistd(*arguments)
            output = result.stdout + result.stderr
            self.assertNotEqual(result.returncode, 0, output)
            self.assertEqual(len([line for line in output.splitlines() if reason in line]), 1, output)

    def test_probe_says_why(self) -> None:
        server = RedisServer.start_for(self, persistent=False)
        self.assertIsNone(probe_redis(parse_redis_url(server.url), 2.0))
        url = parse_redis_url(f"redis://127.0.0.1:{server.port}/99")
        self.assertEqual(probe_redis(url, 2.0), f"cannot use Redis at {url}: ERR DB index is out of range")

    def test_the_plugin_installs_no_reactor_on_import(self) -> None:
        # txredisapi installs the global reactor when imported: the settings
        # (which check --redis) and the plugin must not, or twistd's
        # --reactor could no longer choose one.
        check = "import sys, chatd.daemon.tap; sys.exit('twisted.internet.reactor' in sys.modules)"
        done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=30, check=False)
        self.assertEqual(done.returncode, 0, done.stderr or "importing chatd.daemon.tap installed the reactor")

    def test_the_node_name_defaults_to_host_and_pid(self) -> None:
        name = Settings(redis="redis://127.0.0.1").node_name
        host, pid = name.rsplit(":", 1)
        self.assertEqual(host, socket.gethostname())
        self.assertTrue(pid.isdigit())
        self.assertEqual(Settings(redis="redis://127.0.0.1", node="n1").node_name, "n1")


class ClusterServiceTests(TestCase):
    async def test_the_daemon_joins_the_cluster_and_leaves_it_running(self) -> None:
        server = RedisServer.start_for(self, persistent=False)
        settings = Settings(tcp_port=0, udp_port=0, redis=server.url, node="n1", password_cost=2)
        daemon = make_service(settings, reactor)
        daemon.startService()
        self.addCleanup(daemon.stopService)
        cluster = daemon.cluster
        assert cluster is not None
        directory = await bounded(cluster.ready, "the node in the cluster")
        await until(lambda: cluster.stats.redis_up, "the first heartbeat")
        self.assertTrue(await bounded(ensureDeferred(directory_alive(directory, "n1")), "the node's heartbeat"))
        self.assertTrue(cluster.stats.redis_up)
        self.assertEqual(cluster.stats.registrations, 1)

    def test_the_grace_period_is_the_settings(self) -> None:
        for settings, grace in (
            (Settings(tcp_port=0, udp_port=0, redis="redis://127.0.0.1:1/0"), 30.0),
            (Settings(tcp_port=0, udp_port=0, redis="redis://127.0.0.1:1/0", node_grace=120.0), 120.0),
        ):
            cluster = make_service(settings, reactor).cluster
            assert cluster is not None
            self.assertEqual(cluster.reap_grace, grace)

    def test_without_redis_there_is_no_cluster(self) -> None:
        daemon = make_service(Settings(tcp_port=0, udp_port=0), reactor)
        self.assertIsNone(daemon.cluster)
        self.assertNotIn("cluster", [child.name for child in daemon])

    async def test_redis_lost_and_back_the_node_registers_again_by_itself(self) -> None:
        server = RedisServer.start_for(self, persistent=False)
        cluster = ClusterService(parse_redis_url(server.url), "n1", reactor, timeout=0.5, node_ttl=0.3)
        cluster.startService()
        self.addCleanup(cluster.stopService)
        directory = await bounded(cluster.ready, "the node in the cluster")
        await until(lambda: cluster.stats.redis_up, "the first heartbeat")
        server.stop()
        await until(lambda: not cluster.stats.redis_up, "the heartbeat failing")
        self.assertGreaterEqual(cluster.stats.heartbeat_failures, 1)
        server.restart()  # Not persistent: Redis comes back empty, as after losing its data.
        await until(lambda: cluster.stats.redis_up, "the heartbeat reaching Redis again", timeout=15)
        self.assertGreaterEqual(cluster.stats.registrations, 2)
        alive = await bounded(ensureDeferred(directory_alive(directory, "n1")), "the node registered again", timeout=10)
        self.assertTrue(alive)

    async def test_the_reaper_removes_a_dead_nodes_members(self) -> None:
        server = RedisServer.start_for(self, persistent=False)
        # A node that beat once and died: its member and its room must go.
        redis = await bounded(ensureDeferred(connect(server.url, reactor, 2.0)), "a connection")
        self.addCleanup(redis.disconnect)
        dead = RoomDirectory(redis, "dead", reactor, node_ttl=0.2)
        await bounded(ensureDeferred(dead.heartbeat()), "the dead node's one beat")
        epoch = new_epoch()
        host = MemberRecord("ann", "dead", "native", True, None)
        room = RoomRecord("hoge", epoch, "ann", "dead", None, False, 0)
        self.assertTrue(await bounded(ensureDeferred(dead.claim_room(room, host)), "the claim"))
        cluster = ClusterService(
            parse_redis_url(server.url), "n1", reactor, timeout=1.0, node_ttl=0.3, reap_interval=0.2, reap_grace=0.3
        )
        cluster.startService()
        self.addCleanup(cluster.stopService)
        directory = await bounded(cluster.ready, "the node in the cluster")
        await until(lambda: cluster.stats.reaped_rooms == 1, "the dead node's room released")
        self.assertIsNone(await bounded(ensureDeferred(directory.room("hoge")), "the room looked up"))


async def directory_alive(directory: RoomDirectory, node: str) -> bool:
    return await directory.is_alive(node)
