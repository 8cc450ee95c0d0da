"""
The client core's control connection, sans I/O: frames out of the byte
stream, one request at a time, and its answer matched to it and read
(docs/protocol.md sections 3 and 4).

L{Requests} is a part of L{chatd.client.core.ClientCore}: it knows which
request waits and what its answer says (read by chatd.protocol.payloads),
not what the answer means to the client; the core takes each L{Finished} or
L{Failed} from here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum

from chatd.client.actions import REQUEST, Action, CoreConfig, Membership, SendFrame, Timers
from chatd.protocol.errors import ChatError, ClientError, MalformedFrameError, ProtocolError
from chatd.protocol.payloads import (
    NATIVE_VERSION,
    read_acknowledge_payload,
    read_entered_payload,
    read_invite_payload,
    read_members_payload,
    read_rekey_payload,
    room_request_payload,
)
from chatd.protocol.wire import Frame, FrameDecoder, Operation, State, encode_frame

CLIENT_MAX_PAYLOAD = 1 << 16

_ANSWERED_WITH_COMPLETE = frozenset(
    {Operation.CREATE, Operation.JOIN, Operation.INVITE, Operation.REKEY, Operation.MEMBERS}
)
"""Requests whose success acknowledge is followed by a complete frame."""


def room_request(
    wanted: Membership, features: Sequence[str] = (), client_id: str | None = None, resume: str | None = None
) -> Frame:
    """
    The create or join request (docs/protocol.md section 4.1) for C{wanted},
    asking for C{features} under the client's own id C{client_id} (if any),
    with the resume credential C{resume} (a join's, if any).
    """
    native_only = wanted.native_only and wanted.operation is Operation.CREATE
    payload = room_request_payload(
        wanted.user,
        wanted.password,
        wanted.invite,
        native_only,
        NATIVE_VERSION,
        features=features,
        client_id=client_id,
        resume=resume if wanted.operation is Operation.JOIN else None,
    )
    return Frame(wanted.operation, State.REQUEST, wanted.room, payload)


class Purpose(Enum):
    """Who asked, and so where a request's answer goes."""

    CALLER = "caller"
    """The adapter's caller: the answer is an L{Answer} action."""
    REKEY = "rekey"
    """The core, for a fresh UDP key: no Answer; a failure is logged."""
    REJOIN = "rejoin"
    """The core, coming back after the connection was lost: no Answer; the rejoin sequence goes on."""


@dataclass(slots=True)
class Pending:
    request: int
    operation: Operation
    purpose: Purpose
    frames: list[Frame] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Finished:
    """
    Request C{pending} succeeded. C{answer}, as chatd.protocol.payloads
    reads it: an EnteredAnswer (create, join), the key and key id (rekey),
    the members and host (members), the invitation (invite), the frames
    otherwise.
    """

    pending: Pending
    answer: object


@dataclass(frozen=True, slots=True)
class Failed:
    """Request C{pending} was refused, its answer was unusable, or no answer came."""

    pending: Pending
    error: ChatError


Outcome = Finished | Failed


class Requests:
    """The frames of the control connection, and the one request waiting for its answer."""

    def __init__(self, config: CoreConfig, timers: Timers) -> None:
        self._config = config
        self._timers = timers
        self._decoder = FrameDecoder(CLIENT_MAX_PAYLOAD)
        self.pending: Pending | None = None
        self._count = 0

    def new_stream(self) -> None:
        """A new control connection: nothing of the last one's bytes carries over."""
        self._decoder = FrameDecoder(CLIENT_MAX_PAYLOAD)

    def frames(self, data: bytes) -> Iterator[Frame]:
        """The frames C{data} completes; raises ProtocolError when the stream cannot be read."""
        self._decoder.feed(data)
        while (item := self._decoder.next()) is not None:
            assert isinstance(item, Frame)
            yield item

    def ask(self, frame: Frame, purpose: Purpose) -> tuple[int, list[Action]]:
        """Send C{frame}; raises ClientError while another request waits."""
        if self.pending is not None:
            raise ClientError("another request is waiting for its answer")
        self._count += 1
        self.pending = Pending(self._count, frame.operation, purpose)
        # The timer first: the answer may come before the adapter's next action.
        return self._count, [
            self._timers.start(REQUEST, self._config.request_timeout),
            SendFrame(encode_frame(frame)),
        ]

    def cancel(self, request: int) -> list[Action]:
        """The caller gave up on request C{request}: its answer, should it come, is ignored."""
        if self.pending is None or self.pending.request != request:
            return []
        self.pending = None
        return self._timers.cancel(REQUEST)

    def fail(self, error: ChatError) -> Failed | None:
        """The waiting request, if any, ends with C{error} (no answer in time, the connection lost)."""
        pending, self.pending = self.pending, None
        return Failed(pending, error) if pending is not None else None

    def received(self, frame: Frame) -> Outcome | None:
        """
        A frame (not a notice) for the waiting request: its outcome, or None
        while more is to come. Raises MalformedFrameError for an acknowledge
        without a status byte or with an unreadable refusal (the stream).
        """
        pending = self.pending
        assert pending is not None
        pending.frames.append(frame)
        if frame.state is State.ACKNOWLEDGE:
            refusal = read_acknowledge_payload(frame.payload).refusal
            if refusal is not None:
                self.pending = None
                return Failed(pending, refusal)
            if pending.operation in _ANSWERED_WITH_COMPLETE:
                # These answer with a complete frame after the acknowledge; the others end here.
                return None
        elif frame.state is not State.COMPLETE:
            return None
        self.pending = None
        try:
            return Finished(pending, _read_answer(pending))
        except ProtocolError as error:
            return Failed(pending, error)
        except (KeyError, TypeError, ValueError) as error:
            return Failed(pending, MalformedFrameError(f"unusable answer: {error}"))


def _read_answer(pending: Pending) -> object:
    operation, payload = pending.operation, pending.frames[-1].payload
    if operation is Operation.REKEY:
        return read_rekey_payload(payload)
    if operation in (Operation.CREATE, Operation.JOIN):
        return read_entered_payload(payload)
    if operation is Operation.MEMBERS:
        return read_members_payload(payload)
    if operation is Operation.INVITE:
        return read_invite_payload(payload)
    return pending.frames
