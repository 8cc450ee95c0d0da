"""
The TCP attacks of chatd-attack that abuse one connection's stream:
C{pipelined}, C{never-reads}, C{invitations} and C{presence-churn}.

Each attack is prepared (rooms, members), run for at most the target's
duration while the legitimate pair measures, then cleaned up, so that the
next attack starts on a daemon without the previous one's rooms.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import queue
import selectors
import socket
import threading
import time
from collections import Counter

from chatd.bench.attack_wire import (
    OP_CREATE,
    OP_INVITE,
    OP_JOIN,
    STATUS_RATE_LIMITED,
    STATUS_SUCCESS,
    Counters,
    Entered,
    ExchangeError,
    FrameReader,
    Target,
    connect_from,
    create_frame,
    enter,
    invite_frame,
    join_frame,
    legacy_datagram,
    model_enter,
    probe_create,
    rss_kb,
    tcp_state,
)
from chatd.bench.setup_rooms import STATE_ACKNOWLEDGE, STATE_COMPLETE, STATUS_NAMES

_unique = itertools.count()


def unique(prefix: str) -> str:
    """A room name no earlier attack of this run (nor another run) has used."""
    return f"{prefix}-{os.getpid()}-{next(_unique)}"


def status_name(status: int) -> str:
    return STATUS_NAMES.get(status, f"status {status}").replace(" ", "_")


class Attack:
    """An attack: prepare (not measured), run (measured, bounded by the duration), clean up."""

    name = ""
    needs_native = False
    """The legit pair must be native (the forgery names its key id)."""

    def prepare(self, target: Target) -> None:
        """Set up what the attack needs before the measurement starts."""

    def run(self, target: Target) -> Counters:
        raise NotImplementedError

    def cleanup(self) -> None:
        """Undo what prepare and run left on the daemon (rooms, connections)."""


class Pipelined(Attack):
    """
    One connection writes, in one write, JOINS joins (with a wrong password)
    and CREATES creates. The creates name a room that exists, so each is
    answered and none ends the connection: a model create that succeeds
    makes the next 2 bytes its port, and the server closes.
    """

    name = "pipelined"
    JOINS = 170
    CREATES = 1000

    def prepare(self, target: Target) -> None:
        self.room = unique("pipelined")
        self.host_udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.host_udp.bind((target.bystander, 0))
        self.server = ("127.0.0.1", target.udp_port)
        frame = create_frame(self.room, "host", password="correct horse")
        _status, self.token = model_enter(target.bystander, target.tcp_port, frame, OP_CREATE, self.port())

    def port(self) -> int:
        port: int = self.host_udp.getsockname()[1]
        return port

    def run(self, target: Target) -> Counters:
        joins = [join_frame(self.room, f"joiner{i}", password=f"guess{i}") for i in range(self.JOINS)]
        creates = [create_frame(self.room, f"creator{i}") for i in range(self.CREATES)]
        blob = b"".join(joins + creates)
        started = time.monotonic()
        deadline = started + target.duration
        statuses: Counter[str] = Counter()
        answers = completes = 0
        closed = False
        with connect_from(target.attacker, target.tcp_port, target.duration) as sock:
            sock.sendall(blob)
            written = time.monotonic() - started
            probe_status, probe_seconds = probe_create(target.bystander, target.tcp_port, unique("probe"))
            reader = FrameReader.of(sock)
            while answers < self.JOINS + self.CREATES:
                frame = reader.next(deadline)
                if frame is None:
                    closed = time.monotonic() < deadline
                    break
                _operation, state, payload = frame
                if state == STATE_ACKNOWLEDGE:
                    answers += 1
                    statuses[status_name(payload[0] if payload else -1)] += 1
                elif state == STATE_COMPLETE:
                    completes += 1
        return {
            "requests": self.JOINS + self.CREATES,
            "bytes_written": len(blob),
            "write_s": round(written, 3),
            "answers": answers,
            "completes": completes,
            "answer_statuses": dict(statuses),
            "server_closed": closed,
            "answers_s": round(time.monotonic() - started, 3),
            "probe_create_status": status_name(probe_status),
            "probe_create_ms": round(probe_seconds * 1000, 1),
        }

    def cleanup(self) -> None:
        with contextlib.suppress(OSError, AttributeError):
            self.host_udp.sendto(legacy_datagram(self.room, self.token, "/exit"), self.server)
        with contextlib.suppress(AttributeError):
            self.host_udp.close()


class NeverReads(Attack):
    """
    Connections that create a room (native host, so the connection stays)
    then pipeline invitation requests and never read the answers. Whether
    the server closed a connection is seen without reading: a send that
    fails (EPIPE, ECONNRESET), or the kernel's TCP state at the end.
    """

    name = "never-reads"
    MAX_REQUESTS = 100_000
    """Per connection: bounds what one run can make the daemon queue."""

    def prepare(self, target: Target) -> None:
        self.hosts: list[tuple[str, Entered]] = []
        for index in range(target.connections):
            room = unique("unread")
            _status, entered = enter(target.attacker, target.tcp_port, create_frame(room, f"h{index}", native=True), 1)
            if entered is not None:
                entered.sock.setblocking(False)
                self.hosts.append((room, entered))
        self.refused_creates = target.connections - len(self.hosts)

    def run(self, target: Target) -> Counters:
        rss_before = rss_kb(target.server_pid)
        started = time.monotonic()
        deadline = started + target.duration
        chunks = {entered.sock: invite_frame(room) * 256 for room, entered in self.hosts}
        frame_size = {entered.sock: len(invite_frame(room)) for room, entered in self.hosts}
        pending = dict(chunks)
        sent_bytes: Counter[socket.socket] = Counter()
        closed_at: dict[socket.socket, float] = {}
        with selectors.DefaultSelector() as selector:
            for sock in chunks:
                selector.register(sock, selectors.EVENT_WRITE)
            while selector.get_map() and time.monotonic() < deadline:
                for key, _mask in selector.select(timeout=0.05):
                    selected = key.fileobj
                    assert isinstance(selected, socket.socket)
                    sock = selected
                    try:
                        count = sock.send(pending[sock])
                    except BlockingIOError:
                        continue
                    except OSError as error:
                        if error.errno not in (errno.EPIPE, errno.ECONNRESET):
                            raise
                        closed_at[sock] = time.monotonic() - started
                        selector.unregister(sock)
                        continue
                    sent_bytes[sock] += count
                    pending[sock] = pending[sock][count:] or chunks[sock]
                    if sent_bytes[sock] // frame_size[sock] >= self.MAX_REQUESTS:
                        selector.unregister(sock)
        rss_after = rss_kb(target.server_pid)
        states = {sock: tcp_state(sock) for sock in chunks}
        closed = [sock for sock in chunks if sock in closed_at or states[sock] in ("closed", "close-wait")]
        growth = None if rss_before is None or rss_after is None or not chunks else (rss_after - rss_before)
        return {
            "connections": len(chunks),
            "refused_creates": self.refused_creates,
            "requests_sent": sum(sent_bytes[sock] // frame_size[sock] for sock in chunks),
            "bytes_sent": sum(sent_bytes.values()),
            "closed_by_server": len(closed),
            "close_after_s": sorted(round(seconds, 2) for seconds in closed_at.values()),
            "tcp_states": dict(Counter(states.values())),
            "rss_growth_per_connection_kb": None if growth is None else round(growth / len(chunks)),
        }

    def cleanup(self) -> None:
        for _room, entered in getattr(self, "hosts", []):
            entered.sock.close()


class Invitations(Attack):
    """A native host mints invitations as fast as the server answers, a window of requests at a time."""

    name = "invitations"
    WINDOW = 32
    MAX_REQUESTS = 1_000_000

    def prepare(self, target: Target) -> None:
        self.room = unique("invites")
        status, self.host = enter(target.attacker, target.tcp_port, create_frame(self.room, "host", native=True), 1)
        self.create_status = status

    def run(self, target: Target) -> Counters:
        if self.host is None:
            return {"create_status": status_name(self.create_status)}
        started = time.monotonic()
        deadline = started + target.duration
        granted = refused = 0
        granted_before_refusal: int | None = None
        first_refusal: tuple[str, float] | None = None
        sock, reader = self.host.sock, self.host.reader
        batch = invite_frame(self.room) * self.WINDOW
        try:
            while time.monotonic() < deadline and granted + refused < self.MAX_REQUESTS:
                sock.sendall(batch)
                for _ in range(self.WINDOW):
                    status, _payload = reader.answer(OP_INVITE, deadline + 2.0)
                    if status == STATUS_SUCCESS:
                        granted += 1
                        continue
                    refused += 1
                    if first_refusal is None:
                        granted_before_refusal = granted
                        first_refusal = (status_name(status), time.monotonic() - started)
        except (OSError, ExchangeError):
            pass
        seconds = time.monotonic() - started
        return {
            "granted": granted,
            "refused": refused,
            "granted_before_refusal": granted if granted_before_refusal is None else granted_before_refusal,
            "first_refusal": None if first_refusal is None else first_refusal[0],
            "first_refusal_after_s": None if first_refusal is None else round(first_refusal[1], 3),
            "granted_per_s": round(granted / seconds) if seconds else None,
        }

    def cleanup(self) -> None:
        if getattr(self, "host", None) is not None:
            assert self.host is not None
            self.host.sock.close()


class PresenceChurn(Attack):
    """
    A room of many native members, each holding its TCP connection (their
    presence), and an outsider from another address who joins and leaves
    as fast as it is let in. Measured: the notice bytes the members receive.
    """

    name = "presence-churn"
    PER_ADDRESS = 15
    """Members per source address: within the default burst of 20 new connections per address."""
    SETUP_TIMEOUT = 60.0

    def prepare(self, target: Target) -> None:
        self.room = unique("churn")
        self.members: list[socket.socket] = []
        self.incoming: queue.SimpleQueue[socket.socket] = queue.SimpleQueue()
        self.counting = threading.Event()
        self.stopping = threading.Event()
        self.notice_bytes = 0
        self.drainer = threading.Thread(target=self._drain, name="churn-drain", daemon=True)
        self.drainer.start()
        deadline = time.monotonic() + self.SETUP_TIMEOUT
        for index in range(target.members):
            if time.monotonic() > deadline:
                break
            source = f"127.0.1.{1 + index // self.PER_ADDRESS}"
            frame = (create_frame if index == 0 else join_frame)(self.room, f"m{index}", native=True)
            try:
                _status, entered = enter(source, target.tcp_port, frame, OP_CREATE if index == 0 else OP_JOIN)
            except (OSError, ExchangeError):
                continue
            if entered is not None:
                self.members.append(entered.sock)
                self.incoming.put(entered.sock)

    def _drain(self) -> None:
        """Read every member's connection, so that none falls behind; count the bytes while measuring."""
        with selectors.DefaultSelector() as selector:
            while not self.stopping.is_set():
                while not self.incoming.empty():
                    sock = self.incoming.get()
                    sock.setblocking(False)
                    selector.register(sock, selectors.EVENT_READ)
                for key, _mask in selector.select(timeout=0.05):
                    selected = key.fileobj
                    assert isinstance(selected, socket.socket)
                    sock = selected
                    try:
                        data = sock.recv(262144)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        selector.unregister(sock)
                    elif self.counting.is_set():
                        self.notice_bytes += len(data)

    def run(self, target: Target) -> Counters:
        started = time.monotonic()
        deadline = started + target.duration
        joins = refused = failed = 0
        self.counting.set()
        while time.monotonic() < deadline:
            frame = join_frame(self.room, f"outsider{joins}", native=True)
            try:
                status, entered = enter(target.attacker, target.tcp_port, frame, OP_JOIN, timeout=1.0)
            except (OSError, ExchangeError):
                failed += 1
                continue
            if entered is not None:
                joins += 1
                entered.sock.close()
            else:
                refused += 1
                if status == STATUS_RATE_LIMITED:
                    # Told to slow down: try again soon, at the rate the server lets in.
                    time.sleep(0.01)
        # Notices for the last changes are still on their way (or coalesced for the interval).
        time.sleep(min(1.5, target.duration))
        self.counting.clear()
        seconds = time.monotonic() - started
        return {
            "members": len(self.members),
            "joins_and_leaves": joins,
            "refused": refused,
            "failed": failed,
            "notice_bytes": self.notice_bytes,
            "notice_bytes_per_s": round(self.notice_bytes / seconds),
            "notice_bytes_per_join": round(self.notice_bytes / joins) if joins else None,
        }

    def cleanup(self) -> None:
        self.stopping.set()
        self.drainer.join(2.0)
        for sock in self.members:
            sock.close()
