"""twistd dropin: C{twistd chatd}. Imports nothing of chatd until it runs."""

from twisted.application.service import ServiceMaker

chatd = ServiceMaker(
    "chatd",
    "chatd.daemon.tap",
    "Chat rooms over TCP, message relay over UDP",
    "chatd",
)
