"""The browser's settings: --web-port and --web-origin, as twistd reads and checks them."""

from __future__ import annotations

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from chatd.daemon.settings import OPTIONS, Settings, web_origins_complaint
from chatd.daemon.tap import Options


def parsed(*arguments: str) -> Settings:
    options = Options()
    options.parseOptions(list(arguments))
    return options.settings()


class WebSettingsTests(SynchronousTestCase):
    def test_off_by_default(self) -> None:
        self.assertIsNone(Settings().web_port)
        self.assertEqual(Settings().web_origins(), ())
        self.assertIsNone(parsed().web_port)

    def test_options(self) -> None:
        names = {option.name for option in OPTIONS}
        self.assertLessEqual({"web-port", "web-origin"}, names)
        settings = parsed("--web-port", "8080", "--web-origin", "https://a.example, http://b.example:8080/")
        self.assertEqual(settings.web_port, 8080)
        self.assertEqual(settings.web_origins(), ("https://a.example", "http://b.example:8080/"))

    def test_bad_values_are_usage_errors(self) -> None:
        for arguments in (
            ["--web-port", "70000"],
            ["--web-origin", "a.example"],
            ["--web-origin", "ftp://a.example"],
            ["--web-origin", "https://a.example/path"],
            ["--web-origin", "https://user@a.example"],
            ["--web-port", "9001"],
            ["--web-port", "9100", "--metrics-port", "9100"],
        ):
            with self.assertRaises(usage.UsageError, msg=arguments):
                parsed(*arguments)

    def test_origin_complaints_name_the_option(self) -> None:
        self.assertIsNone(web_origins_complaint("--web-origin", None))
        self.assertIsNone(web_origins_complaint("--web-origin", "https://a.example,,http://[::1]:8080"))
        self.assertEqual(
            web_origins_complaint("--web-origin", "https://ok.example, nope"),
            "--web-origin: 'nope' is not an origin such as https://chat.example.org",
        )

    def test_ports_that_clash(self) -> None:
        self.assertIn("--web-port and --tcp-port", Settings(web_port=9001).contradiction() or "")
        self.assertIn("--web-port and --tls-port", Settings(web_port=9003, tls_cert="c").contradiction() or "")
        self.assertIsNone(Settings(web_port=9003).contradiction())
        self.assertIsNone(Settings(web_port=0).contradiction())
