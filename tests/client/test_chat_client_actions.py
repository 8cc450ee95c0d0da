"""
ChatClient carrying out its core's actions: a batch stops once a listener it
called shut the client (a leave from inside an event), so nothing decided for
the session that ended runs after it, such as a timer that would outlive the
sockets.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from chatd.client.actions import DELIVERY, Emit, StartTimer
from chatd.client.chat_client import ChatClient, IChatListener
from chatd.client.events import ChatEvent, MessageReceived

HELLO = MessageReceived("bob", "hello", 0.0)


@implementer(IChatListener)
class LeavesOnHello:
    def __init__(self) -> None:
        self.client: ChatClient | None = None
        self.heard: list[ChatEvent] = []

    def chat_event(self, event: ChatEvent) -> None:
        self.heard.append(event)
        assert self.client is not None
        self.client.leave()


class RunTests(SynchronousTestCase):
    def test_a_leave_from_a_listener_ends_the_batch(self) -> None:
        clock = Clock()
        listener = LeavesOnHello()
        client = listener.client = ChatClient(clock, listener=listener)
        client._run([Emit(HELLO), StartTimer(DELIVERY, 1.0), Emit(HELLO)])
        self.assertEqual(listener.heard, [HELLO])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_without_a_shut_the_whole_batch_runs(self) -> None:
        clock = Clock()
        client = ChatClient(clock)
        client._run([StartTimer(DELIVERY, 1.0)])
        self.assertEqual([call.getTime() for call in clock.getDelayedCalls()], [1.0])
