"""
A model of the server's reliable-delivery rules for one room, as plain test
code following docs/reliability.md, section 3: numbering, a duplicate window
by message id, a history ring, REPAIR with REPAIR_BATCH and GONE, keepalive
answers with the latest number. It is not the daemon (whose relay gets its
own tests); frames go through the real codecs of chatd.protocol.delivery.

Shared by the simulations of the client's delivery pieces
(tests/client/test_delivery_sim.py) and of whole client cores
(tests/client/test_core_delivery_sim.py), which put it behind
tests/lossy_network.py.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from chatd.protocol.datagrams import FrameType
from chatd.protocol.delivery import (
    REPAIR_BATCH,
    decode_range,
    decode_send,
    encode_latest,
    encode_posted,
    encode_range,
    encode_sent,
)

ModelFrame = tuple[FrameType, bytes]
"""A frame type and its body, unsealed."""


@dataclass
class ServerModel:
    """The server's delivery rules for one room, as a test model."""

    ring_size: int = 512
    epoch: str = "0123456789abcdef"
    latest: int = 0
    ring: deque[tuple[int, int, str, str]] = field(default_factory=deque)
    windows: dict[str, dict[int, tuple[int, int]]] = field(default_factory=dict)
    members: set[str] = field(default_factory=set)
    relayed: list[tuple[str, int]] = field(default_factory=list)
    """(sender, message id) in room order: what was numbered."""

    def join(self, name: str, history: int = 50) -> tuple[str, int, int]:
        self.members.add(name)
        self.windows.setdefault(name, {})
        oldest = self.ring[0][0] if self.ring else self.latest + 1
        return self.epoch, self.latest, max(self.latest - history + 1, oldest)

    def leave(self, name: str) -> None:
        self.members.discard(name)

    def recreate(self) -> None:
        """The room closed and created again: a new epoch, numbering from 1, the history and windows gone."""
        self.epoch = "fedcba9876543210"
        self.latest = 0
        self.ring.clear()
        self.windows = {name: {} for name in self.members}

    def receive(self, now: float, sender: str, frame: ModelFrame) -> list[tuple[str, ModelFrame]]:
        if sender not in self.members:
            return []
        kind, body = frame
        time_ms = int(now * 1000)
        if kind is FrameType.SEND:
            send = decode_send(body)
            window = self.windows[sender]
            if send.message_id in window:
                seq, at = window[send.message_id]
                return [(sender, (FrameType.SENT, encode_sent(send.message_id, seq, at)))]
            self.latest += 1
            window[send.message_id] = (self.latest, time_ms)
            self.relayed.append((sender, send.message_id))
            self.ring.append((self.latest, time_ms, sender, send.text))
            while len(self.ring) > self.ring_size:
                self.ring.popleft()
            posted = encode_posted(self.latest, time_ms, sender, send.text)
            out = [(member, (FrameType.POSTED, posted)) for member in sorted(self.members) if member != sender]
            out.append((sender, (FrameType.SENT, encode_sent(send.message_id, self.latest, time_ms))))
            return out
        if kind is FrameType.REPAIR:
            wanted = decode_range(body)
            if wanted.first > self.latest:
                return []
            last = min(wanted.last, wanted.first + REPAIR_BATCH - 1, self.latest)
            oldest = self.ring[0][0] if self.ring else self.latest + 1
            out = []
            if wanted.first < oldest:
                out.append((sender, (FrameType.GONE, encode_range(wanted.first, min(oldest - 1, wanted.last)))))
            for seq, at, name, text in self.ring:
                if wanted.first <= seq <= last:
                    out.append((sender, (FrameType.POSTED, encode_posted(seq, at, name, text))))
            return out
        if kind is FrameType.KEEPALIVE:
            return [(sender, (FrameType.KEEPALIVE_ACK, encode_latest(self.latest)))]
        raise AssertionError(f"unexpected frame {kind}")
