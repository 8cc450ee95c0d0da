"""The twistd dropin finds chatd's Options and makeService."""

from __future__ import annotations

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.trial.unittest import SynchronousTestCase

from chatd.daemon import tap


class PluginTests(SynchronousTestCase):
    def test_twistd_finds_chatd(self) -> None:
        makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker)}
        self.assertIn("chatd", makers)
        self.assertIs(makers["chatd"].options, tap.Options)
        self.assertIs(makers["chatd"].makeService, tap.makeService)
