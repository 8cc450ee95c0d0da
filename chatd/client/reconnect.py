"""
The client core's way back into its room after the control connection was
lost, sans I/O: what it asks for again (the rejoin sequence), when it tries
again (exponential backoff, every delay jittered), and when it stops (a
member waits for its host until a deadline; some refusals no try can undo).

Pure: L{Reconnection} keeps the counts and returns L{Action}s; the functions
say which create or join each step of a try sends. L{chatd.client.core.ClientCore}
ties them to the connection.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from chatd.client.actions import Action, CloseControl, CoreConfig, Emit, Log, Membership, Reconnect
from chatd.client.events import Reconnecting, WaitingForHost
from chatd.protocol.errors import (
    CertificateError,
    ChatError,
    ConnectionClosedError,
    ConnectionFailedError,
    InvalidPasswordError,
    RoomExistsError,
    RoomNotFoundError,
)
from chatd.protocol.wire import Operation


def backoff(
    attempt: int,
    first: float,
    cap: float,
    jitter: float = 0.0,
    random: Callable[[], float] | None = None,
) -> float:
    """
    Exponential backoff: C{first} doubled for each attempt after the first,
    at most C{cap}; shortened by up to the fraction C{jitter} of itself,
    drawn from C{random} (uniform in [0, 1)), when both are given, and then
    rounded to the hundredth of a second (so that "reconnecting in 0.43 s"
    reads well); a delay under 0.01 s is not rounded away to nothing.
    """
    delay = min(cap, first * 2.0 ** (attempt - 1))
    if jitter and random is not None:
        jittered = delay * (1.0 - jitter * random())
        delay = max(round(jittered, 2), min(delay, 0.01))
    return delay


# -- the rejoin sequence: which request each step sends --------------------------------


class RejoinStep(Enum):
    """Where a try to come back to the room is (L{chatd.client.core.ClientCore.reconnect_due})."""

    RESUME = "resume"
    """
    The client holds a resume credential: it joins with it, taking its own
    place back (the host role too), before anything else. Refused (the
    credential was used, the member is gone, the room is gone, or the
    server does not resume), the try goes on with the step the client would
    have taken without one, on the same connection.
    """

    CREATE = "create"
    """The host creates its room again."""
    PROBE = "probe"
    """A member joins without its password first (see L{probe})."""
    JOIN = "join"
    """The room asked for the password: the member joins with it, on the same connection."""
    CONFIRM = "confirm"
    """In the room again: waiting, briefly, for the first keepalive's answer before saying so."""


def create_again(wanted: Membership) -> Membership:
    """What the host asks for again: the same room, created anew (with its password, native-only if it was)."""
    return Membership(Operation.CREATE, wanted.room, wanted.user, wanted.password, None, wanted.native_only)


def join_again(wanted: Membership) -> Membership:
    """
    What a member asks for again. An invitation was spent on the first
    join: a member who came in by one can only come back to a room
    without a password.
    """
    return Membership(Operation.JOIN, wanted.room, wanted.user, wanted.password, None)


def probe(wanted: Membership) -> Membership:
    """
    What a member asks for first when it comes back: its join without the
    password. A join that carries a password spends one of the few attempts
    a minute the server allows an address (docs/protocol.md section 5.1),
    and a member waiting for its host to reopen the room asks again and
    again, from the same address as the host's create (which spends one
    too). Without the password, a room that is not back yet costs nothing;
    a password room answers "invalid password" at once, without hashing,
    and the real join follows on the same connection (that refusal does not
    close it).
    """
    return Membership(Operation.JOIN, wanted.room, wanted.user, None, None)


def resume_as(wanted: Membership) -> Membership:
    """
    What a resume asks for: a join of the room under the same name, without
    password or invitation (the credential, sent with it, stands for them;
    a password would cost a hash for nothing).
    """
    return Membership(Operation.JOIN, wanted.room, wanted.user, None, None)


def request_for(step: RejoinStep, wanted: Membership) -> Membership:
    """The create or join that step C{step} sends (a resume's credential aside)."""
    if step is RejoinStep.RESUME:
        return resume_as(wanted)
    if step is RejoinStep.CREATE:
        return create_again(wanted)
    if step is RejoinStep.PROBE:
        return probe(wanted)
    return join_again(wanted)


def step_after(step: RejoinStep, refusal: ChatError, wanted: Membership) -> RejoinStep | None:
    """
    The step after C{step} was refused with C{refusal}; None when the try
    has failed. The host that finds its room's name taken (by a client that
    is not this library, or a stranger) joins that room as a member, on a
    new connection; a member whose probe is told the room has a password
    joins with it.
    """
    if step is RejoinStep.CREATE and isinstance(refusal, RoomExistsError):
        return RejoinStep.PROBE
    if step is RejoinStep.PROBE and isinstance(refusal, InvalidPasswordError) and wanted.password is not None:
        return RejoinStep.JOIN
    return None


# -- when to try again, and when to stop -------------------------------------------------


@dataclass(frozen=True, slots=True)
class GiveUp:
    """No try can get back in: why (for ConnectionLost), and what to log first."""

    reason: str
    logged: tuple[Log, ...] = ()


class Reconnection:
    """The tries of one stretch without a connection: how many, and since when the room is gone."""

    def __init__(self, config: CoreConfig, random: Callable[[], float]) -> None:
        self._config = config
        self._random = random
        """Uniform in [0, 1): random.random, or a test's fixed numbers."""
        self.attempt = 0
        self._waiting_since: float | None = None
        """When this member first found the room gone; None while the server is out of reach."""
        self._tries_waiting = 0

    def reset(self) -> None:
        """The connection was lost (or a room entered): a new stretch of tries."""
        self.attempt = 0
        self._waiting_since = None
        self._tries_waiting = 0

    def next_try(
        self, now: float, room: str, host: str | None, server: str = "", resuming: bool = False
    ) -> list[Action]:
        """The wait before the next try (to C{server}; a resume first when C{resuming}), and the event that says so."""
        self.attempt += 1
        config = self._config
        if self._waiting_since is None:
            # Jittered too: every client of a restarted server lost it at the
            # same moment, and should not all come back in the same instant.
            delay = backoff(
                self.attempt, config.first_retry_delay, config.max_retry_delay, config.retry_jitter, self._random
            )
            return [Emit(Reconnecting(self.attempt, delay, server, resuming)), Reconnect(delay)]
        # The server is back: the backoff that grew while it was down starts
        # again, so that a host's return is noticed soon.
        self._tries_waiting += 1
        gives_up_in = max(0.0, self._waiting_since + config.host_wait - now)
        jittered = backoff(
            self._tries_waiting, config.first_retry_delay, config.max_retry_delay, config.retry_jitter, self._random
        )
        delay = min(jittered, gives_up_in)
        return [Emit(WaitingForHost(room, host, self.attempt, delay, gives_up_in)), Reconnect(delay)]

    def failed(
        self,
        error: ChatError,
        now: float,
        wanted: Membership,
        host: str | None,
        server: str = "",
        resuming: bool = False,
    ) -> list[Action] | GiveUp:
        """
        A try failed with C{error}: close the control connection and try
        again (the actions end with L{Reconnect}; the next try goes to
        C{server}, resuming first when C{resuming}), or give up.
        """
        attempt = self.attempt
        if isinstance(error, CertificateError):
            # The server is not the one we trust (its certificate changed, or
            # someone is in the middle): retrying cannot help.
            return GiveUp(str(error), (Log("warn", f"reconnect attempt {attempt} refused: {error}"),))
        if isinstance(error, RoomNotFoundError):
            if self._waiting_since is None:
                self._waiting_since, self._tries_waiting = now, 0
            elif now >= self._waiting_since + self._config.host_wait:
                who = host if host is not None else "its host"
                return GiveUp(
                    f"room {wanted.room} is gone since the server restarted, and {who}"
                    f" did not reopen it within {self._config.host_wait:g} s"
                )
            return [CloseControl(), *self.next_try(now, wanted.room, host, server, resuming)]
        if isinstance(error, InvalidPasswordError) and wanted.invite is not None:
            # The invitation was spent on the first join and the room has a
            # password: no number of tries can get back in.
            return GiveUp(
                f"room {wanted.room} needs its password, and the invitation was used up"
                " on the first join; ask its host for a new one"
            )
        if isinstance(error, ConnectionFailedError | ConnectionClosedError):
            # The server is out of reach again: that is not the host's delay.
            self._waiting_since = None
        return [
            Log("info", f"reconnect attempt {attempt} failed: {error}"),
            CloseControl(),
            *self.next_try(now, wanted.room, host, server, resuming),
        ]
