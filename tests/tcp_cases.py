"""
Fixtures for the TCP tests of pipelining and back-pressure: requests by the
thousand, their answers paired with them in order, and the store's invariants.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from chatd.daemon.interfaces import IRoomStore
from chatd.protocol.errors import Status
from chatd.protocol.wire import Frame, Operation, SizeEncoding, State
from tests.helpers import frames, request

COMPLETED_ON_SUCCESS = frozenset({Operation.CREATE, Operation.JOIN, Operation.INVITE, Operation.REKEY})
"""Operations whose successful acknowledge is followed by a complete frame."""


@dataclass(frozen=True)
class Pipeline:
    """Requests written back to back, and the operation of each, to pair the answers with."""

    data: bytes
    operations: tuple[Operation, ...]

    def __add__(self, other: Pipeline) -> Pipeline:
        return Pipeline(self.data + other.data, self.operations + other.operations)

    def __mul__(self, times: int) -> Pipeline:
        return Pipeline(self.data * times, self.operations * times)

    def __len__(self) -> int:
        return len(self.operations)


def one(
    operation: Operation,
    room: str,
    payload: bytes | str | dict[str, Any] = b"",
    encoding: SizeEncoding = SizeEncoding.BINARY,
) -> Pipeline:
    return Pipeline(request(operation, room, payload, encoding), (operation,))


def status_of(frame: Frame) -> Status:
    return Status(frame.payload[0])


def answers(test: SynchronousTestCase, operations: Sequence[Operation], replies: list[Frame]) -> list[Status]:
    """
    Check that C{replies} answer C{operations} one by one, in order: one
    acknowledge of the same operation each, followed by its complete frame
    when it succeeded, and nothing more (notices about others are skipped).
    The statuses, in order.
    """
    replies = [reply for reply in replies if reply.operation is not Operation.NOTICE]
    statuses: list[Status] = []
    position = 0
    for index, operation in enumerate(operations):
        test.assertLess(position, len(replies), f"request {index} ({operation.name}) was not answered")
        ack = replies[position]
        position += 1
        test.assertEqual((ack.operation, ack.state), (operation, State.ACKNOWLEDGE), f"request {index}")
        status = status_of(ack)
        if status is Status.SUCCESS and operation in COMPLETED_ON_SUCCESS:
            complete = replies[position]
            position += 1
            test.assertEqual((complete.operation, complete.state), (operation, State.COMPLETE), f"request {index}")
        statuses.append(status)
    test.assertEqual(replies[position:], [], "answers to no request")
    return statuses


def answered(test: SynchronousTestCase, operations: Sequence[Operation], transport: StringTransport) -> list[Status]:
    """L{answers} for what was written to C{transport} (and forget it)."""
    return answers(test, operations, frames(transport))


def check_invariants(test: SynchronousTestCase, store: IRoomStore) -> None:
    """
    The store is consistent: every open room has a host among its members,
    and every member of it is live (its token finds it) and in that room.
    """
    for room in store.rooms():
        test.assertFalse(room.closed, room.name)
        test.assertIsNotNone(room.host, f"room {room.name} has no host")
        test.assertIn(room.host, room.members.values(), f"the host of {room.name} is not a member")
        for name, member in room.members.items():
            test.assertEqual(member.name, name)
            test.assertIs(member.room, room)
            test.assertIs(store.member_for_token(member.token), member)
    test.assertEqual(store.member_count(), sum(len(room.members) for room in store.rooms()))


def check_tokens(test: SynchronousTestCase, store: IRoomStore, tokens: Sequence[str]) -> None:
    """Every token handed out is dead, or its member is in an open room."""
    for token in tokens:
        member = store.member_for_token(token)
        if member is not None:
            test.assertFalse(member.room.closed)
            test.assertIn(member.room, store.rooms())
            test.assertIs(member.room.members.get(member.name), member)
