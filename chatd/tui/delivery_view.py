"""
What reliable delivery (docs/reliability.md) adds to the chat screen, kept
apart from the session so that each reads in one sitting.

With a server that offers it (the "delivery" feature), the client tells the
state of each message we send, offers what the room said before we came in,
says when messages were lost for good, and which path messages take. Here:

    =======================  =================================================
    what the client says     what the screen shows
    =======================  =================================================
    our message: sending     C{<alice> hello …} (the dots dim)
    sent (acknowledged)      C{<alice> hello}: the dots go, in place
    not delivered            C{<alice> hello ✗ not delivered — /retry} (red),
                             and C{1 not delivered: /retry} in the status line
    history on entering      C{──── history: said before you came in ────},
                             then those messages, dim, at the time they were said
    messages missed          C{-!- 3 messages missed.}
    room created again       C{-!- Room hoge was created again: ...}
    path changed             C{-!- UDP blocked: messages go over TCP.}; the
                             status line shows C{UDP} or C{TCP (UDP blocked)}
    =======================  =================================================

C{/retry} sends the failed messages again (their lines go back to C{…});
C{/stats} shows our own counts. Without the feature both say, in one line,
that the server does not offer reliable delivery, and no state is shown.
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet.interfaces import IReactorTime

from chatd.client.commands import NO_DELIVERY, retry_words, stats_words
from chatd.client.delivery import DeliveryStats
from chatd.client.events import (
    DeliveryPathChanged,
    MessageReceived,
    MessagesMissed,
    MessageStateChanged,
    RoomRecreated,
)
from chatd.tui.chat_screen import NOT_DELIVERED, SENDING, ChatScreen, LineKind
from chatd.tui.wording import sentence

DeliveryEvent = MessageStateChanged | MessagesMissed | RoomRecreated | DeliveryPathChanged

HISTORY_DIVIDER = "history: said before you came in"


class DeliveryClient(Protocol):
    """What the view needs of a chat client, beyond chatting: the reliable delivery part of its API."""

    @property
    def delivery(self) -> bool:
        """The server granted the "delivery" feature."""
        ...

    @property
    def delivery_stats(self) -> DeliveryStats | None: ...

    @property
    def delivery_path(self) -> str | None:
        """C{"udp"} or C{"tcp"}; None without the feature."""
        ...

    def retry(self) -> list[int]:
        """Send the messages given up on again, under their ids; their ids."""
        ...


class DeliveryView:
    """The delivery side of one visit to a room: our messages' states, history, the path."""

    def __init__(self, screen: ChatScreen, client: DeliveryClient, clock: IReactorTime) -> None:
        self._screen = screen
        self._client = client
        self._clock = clock
        self.path: str | None = None
        """The path messages take (C{"udp"}, C{"tcp"}), for the status line; None without the feature."""
        self.failed: set[int] = set()
        """Our messages given up on and not yet sent again."""
        self._early: dict[int, str] = {}
        """
        States heard before their message's line was drawn: the client may
        tell "sending" from inside send(), before the session has the id.
        """
        self._in_history = False
        """The last message shown was history: the next history one needs no new divider."""

    def entered(self) -> None:
        """In the room (first time or again): the path comes from the client."""
        self.path = self._client.delivery_path

    # -- our messages ---------------------------------------------------------------

    def sent(self, text: str, message_id: int | None, *, me: str, action: str | None = None) -> None:
        """Show our message, just sent (C{message_id} None without the feature); C{action} for C{/me}."""
        now = self._clock.seconds()
        state = self._early.pop(message_id, SENDING) if message_id is not None else SENDING
        self._early.clear()
        if action is not None:
            self._screen.add_action(now, me, action, message_id=message_id, state=state)
        else:
            self._screen.add_message(now, me, text, own=True, message_id=message_id, state=state)
        self._note(message_id, state)
        self._in_history = False

    def _note(self, message_id: int | None, state: str) -> None:
        if message_id is None:
            return
        if state == NOT_DELIVERED:
            self.failed.add(message_id)
        else:
            self.failed.discard(message_id)

    # -- what the client says --------------------------------------------------------

    def history(self, event: MessageReceived) -> None:
        """A message said before we came in: dim, under a divider at the start of each run of them."""
        if not self._in_history:
            self._in_history = True
            self._screen.add_divider(event.time, HISTORY_DIVIDER)
        text = event.action if event.is_action else event.text
        self._screen.add_history(event.time, event.sender, text, action=event.is_action)

    def live(self) -> None:
        """A message said now: a later history run gets its own divider."""
        self._in_history = False

    def show(self, event: DeliveryEvent) -> None:
        now = self._clock.seconds()
        match event:
            case MessageStateChanged():
                if not self._screen.set_message_state(event.message_id, event.state):
                    self._early[event.message_id] = event.state
                self._note(event.message_id, event.state)
            case MessagesMissed() | RoomRecreated():
                self._screen.add_line(now, LineKind.NOTICE, sentence(event.text))
            case DeliveryPathChanged():
                self.path = event.path
                self._screen.add_line(now, LineKind.NOTICE, sentence(event.text))

    # -- commands ---------------------------------------------------------------------

    def retry(self) -> None:
        """C{/retry}; may raise the client's NotInRoomError, for the session to explain."""
        now = self._clock.seconds()
        if not self._client.delivery:
            self._screen.add_line(now, LineKind.INFO, sentence(NO_DELIVERY))
            return
        ids = self._client.retry()
        for message_id in ids:
            # At once, whether or not the client says "sending" again itself.
            self._screen.set_message_state(message_id, SENDING)
            self.failed.discard(message_id)
        self._screen.add_line(now, LineKind.INFO, sentence(retry_words(ids)))

    def stats(self) -> None:
        """C{/stats}: our own counts, since this client started."""
        now = self._clock.seconds()
        stats = self._client.delivery_stats
        if not self._client.delivery or stats is None:
            self._screen.add_line(now, LineKind.INFO, sentence(NO_DELIVERY))
            return
        self._screen.add_line(now, LineKind.INFO, f"Reliable delivery, your counts: {stats_words(stats)}.")
