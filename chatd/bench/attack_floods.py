"""
The attacks of chatd-attack that repeat one cheap request as fast as they
are let: C{room-squat} and C{password-creates} (model creates from one
address) and the UDP floods C{garbage} and C{forgery}.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import threading
import time
from collections import Counter

from chatd.bench.attack_tcp import Attack, status_name, unique
from chatd.bench.attack_wire import (
    OP_CREATE,
    STATUS_RATE_LIMITED,
    STATUS_SUCCESS,
    Counters,
    ExchangeError,
    Target,
    create_frame,
    legacy_datagram,
    model_enter,
    probe_create,
)

SEALED_PREFIX = b"\x00\x01\x00"
"""Marker 0x00, version 1, flags 0: what makes a datagram look sealed."""
TAG_SIZE = 16
FLOOD_VARIETY = 1024
"""Distinct datagrams prepared per flood, sent round-robin: making each on the fly would cap the rate."""


def garbage_datagram(rng: random.Random) -> bytes:
    """Random bytes of a random size; the first byte is not 0, so that the legacy path judges most of them."""
    size = rng.randint(1, 256)
    return bytes([rng.randint(1, 255)]) + rng.randbytes(size - 1)


def forged_datagram(rng: random.Random, key_id: int) -> bytes:
    """A sealed-looking frame under C{key_id}: random counter, ciphertext of a chat message's size, random tag."""
    ciphertext = rng.randint(1 + 8, 1 + 120)
    return SEALED_PREFIX + key_id.to_bytes(4, "big") + rng.randbytes(8) + rng.randbytes(ciphertext + TAG_SIZE)


def flood(source: str, udp_port: int, datagrams: list[bytes], rate: float, duration: float) -> Counters:
    """Send C{datagrams} round-robin from C{source} at C{rate}/s for C{duration} s, paced every millisecond."""
    server = ("127.0.0.1", udp_port)
    sent = errors = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < duration:
            due = int(elapsed * rate) - sent
            for _ in range(min(due, 10_000)):
                try:
                    sock.sendto(datagrams[sent % len(datagrams)], server)
                except OSError:
                    errors += 1
                sent += 1
            time.sleep(0.001)
        seconds = time.monotonic() - started
    return {"datagrams": sent, "send_errors": errors, "rate_per_s": round(sent / seconds)}


class Garbage(Attack):
    name = "garbage"

    def run(self, target: Target) -> Counters:
        rng = random.Random(os.urandom(8))
        datagrams = [garbage_datagram(rng) for _ in range(FLOOD_VARIETY)]
        return flood(target.attacker, target.udp_port, datagrams, target.rate, target.duration)


class Forgery(Attack):
    name = "forgery"
    needs_native = True

    def run(self, target: Target) -> Counters:
        if target.sender_key_id is None:
            return {"skipped": "no native legit sender: its key id is what the forgery names"}
        rng = random.Random(os.urandom(8))
        datagrams = [forged_datagram(rng, target.sender_key_id) for _ in range(FLOOD_VARIETY)]
        counters = flood(target.attacker, target.udp_port, datagrams, target.rate, target.duration)
        counters["key_id"] = target.sender_key_id
        return counters


class Creates(Attack):
    """
    Model creates of distinct rooms from one address, each on its own
    connection with its 2 port bytes, by WORKERS connections at a time; a
    refusal for opening connections too fast is waited out, any other
    refusal of a create ends the attack. The rooms are closed afterwards by
    their host's C{/exit}.
    """

    WORKERS = 1
    MAX_ROOMS = 2000
    password: str | None = None

    def prepare(self, target: Target) -> None:
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((target.attacker, 0))
        self.server = ("127.0.0.1", target.udp_port)
        self.rooms: list[tuple[str, str]] = []
        self.statuses: Counter[str] = Counter()
        self.first_refusal: tuple[str, float] | None = None
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def _create(self, target: Target, started: float, deadline: float) -> None:
        port: int = self.udp.getsockname()[1]
        while time.monotonic() < deadline and not self.stop.is_set():
            room = unique(self.name)
            frame = create_frame(room, "squatter", password=self.password)
            try:
                status, token = model_enter(target.attacker, target.tcp_port, frame, OP_CREATE, port)
            except (OSError, ExchangeError):
                status, token = -1, ""
            with self.lock:
                self.statuses[status_name(status)] += 1
                if status == STATUS_SUCCESS:
                    self.rooms.append((room, token))
                    if len(self.rooms) >= self.MAX_ROOMS:
                        self.stop.set()
                elif status == STATUS_RATE_LIMITED or status == -1:
                    pass
                elif self.first_refusal is None:
                    self.first_refusal = (status_name(status), time.monotonic() - started)
                    self.stop.set()
            if status in (STATUS_RATE_LIMITED, -1):
                time.sleep(0.01)

    def run(self, target: Target) -> Counters:
        started = time.monotonic()
        deadline = started + target.duration
        workers = [
            threading.Thread(target=self._create, args=(target, started, deadline), daemon=True)
            for _ in range(self.WORKERS)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(target.duration + 10.0)
        seconds = time.monotonic() - started
        probe_status, probe_seconds = probe_create(target.bystander, target.tcp_port, unique("probe"))
        return {
            "rooms": len(self.rooms),
            "seconds": round(seconds, 3),
            "rooms_per_s": round(len(self.rooms) / seconds, 1),
            "statuses": dict(self.statuses),
            "first_refusal": None if self.first_refusal is None else self.first_refusal[0],
            "first_refusal_after_s": None if self.first_refusal is None else round(self.first_refusal[1], 3),
            "probe_create_status": status_name(probe_status),
            "probe_create_ms": round(probe_seconds * 1000, 1),
        }

    def cleanup(self) -> None:
        for index, (room, token) in enumerate(getattr(self, "rooms", [])):
            with contextlib.suppress(OSError):
                self.udp.sendto(legacy_datagram(room, token, "/exit"), self.server)
            if index % 100 == 99:
                # Paced, so that the daemon's UDP receive buffer does not drop /exits and leave rooms behind.
                time.sleep(0.005)
        with contextlib.suppress(AttributeError):
            self.udp.close()


class RoomSquat(Creates):
    name = "room-squat"


class PasswordCreates(Creates):
    """Each create carries a password, so each costs the server a hash; several at once."""

    name = "password-creates"
    WORKERS = 4
    password = "correct horse battery staple"
