"""Tests for chatd.daemon.settings: each setting declared once, and what is derived from the declarations."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, fields

from twisted.trial.unittest import SynchronousTestCase

from chatd.daemon.settings import (
    OPTIONS,
    Check,
    Settings,
    at_least_one,
    declaration,
    ip_address,
    more_than_zero,
    name_length,
    one_of,
    options_of,
    port,
    positive_number,
    power_of_two,
    setting,
    unexposed,
)


class DeclarationTests(SynchronousTestCase):
    def test_every_field_is_declared(self) -> None:
        for setting_field in fields(Settings):
            self.assertTrue(declaration(setting_field).help, setting_field.name)

    def test_only_shutdown_grace_has_no_option(self) -> None:
        # A setting without an option is a choice, made in its declaration
        # (unexposed, with the reason) and here.
        exposed = {option.field for option in OPTIONS}
        self.assertEqual({f.name for f in fields(Settings)} - exposed, {"shutdown_grace"})

    def test_options_are_named_after_their_fields(self) -> None:
        names = {option.field: option.name for option in OPTIONS}
        self.assertEqual(names["max_connections_per_host"], "max-connections-per-host")
        self.assertEqual(names["legacy"], "no-legacy")
        self.assertEqual(len(set(names.values())), len(names))

    def test_defaults_are_valid(self) -> None:
        self.assertIsNone(Settings().invalid_value())
        self.assertIsNone(Settings().contradiction())

    def test_usable_directly_unchecked(self) -> None:
        settings = Settings(max_rooms=3, presence_interval=0)
        self.assertEqual((settings.max_rooms, settings.presence_interval), (3, 0))
        self.assertEqual(settings.invalid_value(), "--presence-interval must be more than 0")
        with self.assertRaises(AttributeError):
            settings.max_rooms = 4  # type: ignore[misc]

    def test_adding_a_setting_is_one_declaration(self) -> None:
        @dataclass(frozen=True, slots=True)
        class Toy:
            colour: str = setting("red", "Colour of the toy.", short="c", check=one_of("red", "blue"))
            wheels: int = setting(4, "Wheels.", check=at_least_one)
            speed: float = setting(1.5, "Speed.")
            quiet: bool = setting(False, "Make no noise.")
            loud: bool = setting(True, "Make noise.", name="no-loud")
            listen: int | None = setting(None, "Port.", coerce=port)
            secret: float = unexposed(2.0, "Not for operators.")

        self.assertEqual(Toy(), Toy(colour="red"))
        derived = {option.field: option for option in options_of(Toy)}
        self.assertEqual(list(derived), ["colour", "wheels", "speed", "quiet", "loud", "listen"])
        colour = derived["colour"]
        self.assertEqual(
            (colour.name, colour.short, colour.default, colour.help), ("colour", "c", "red", "Colour of the toy.")
        )
        self.assertEqual((colour.coerce, colour.flag), (None, False))
        self.assertEqual(
            (derived["wheels"].coerce, derived["speed"].coerce, derived["listen"].coerce), (int, float, port)
        )
        self.assertEqual([derived[name].flag for name in ("quiet", "loud")], [True, True])
        self.assertEqual(derived["loud"].name, "no-loud")

    def test_declarations_that_make_no_option_are_refused(self) -> None:
        @dataclass(frozen=True)
        class Undeclared:
            plain: int = 1

        @dataclass(frozen=True)
        class NoCoercer:
            maybe: int | None = setting(None, "An int or nothing, with no coercer.")

        @dataclass(frozen=True)
        class OnByDefault:
            legacy: bool = setting(True, "A flag on by default needs a name to turn it off.")

        for cls in (Undeclared, NoCoercer, OnByDefault):
            self.assertRaises(TypeError, options_of, cls)

    def test_importing_settings_does_not_import_usage(self) -> None:
        code = "import sys, chatd.daemon.settings; print('twisted.python.usage' in sys.modules)"
        output = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
        self.assertEqual(output.strip(), "False")


class FromOptionsTests(SynchronousTestCase):
    def defaults(self) -> dict[str, object]:
        """What twistd's Options hold when nothing is given: flags 0, parameters their defaults."""
        return {option.name: 0 if option.flag else option.default for option in OPTIONS}

    def test_nothing_given_is_the_defaults(self) -> None:
        self.assertEqual(Settings.from_options(self.defaults()), Settings())

    def test_each_option_fills_its_field(self) -> None:
        for option in OPTIONS:
            values = self.defaults()
            values[option.name] = 1 if option.flag else object()
            settings = Settings.from_options(values)
            expected = (not option.default) if option.flag else values[option.name]
            self.assertEqual(getattr(settings, option.field), expected, option.name)

    def test_extra_options_are_ignored(self) -> None:
        self.assertEqual(Settings.from_options({**self.defaults(), "log-json": "-"}), Settings())


class CheckTests(SynchronousTestCase):
    def test_checks(self) -> None:
        cases: list[tuple[Check, object, str | None]] = [
            (ip_address, "::1", None),
            (ip_address, "localhost", "--x: 'localhost' is not an IP address"),
            (more_than_zero, 0.1, None),
            (more_than_zero, 0.0, "--x must be more than 0"),
            (more_than_zero, float("nan"), "--x must be more than 0"),
            (positive_number, 1e9, None),
            (positive_number, float("inf"), "--x must be a positive number"),
            (positive_number, float("nan"), "--x must be a positive number"),
            (at_least_one, 1, None),
            (at_least_one, 0, "--x must be at least 1"),
            (name_length, 255, None),
            (name_length, 256, "--x must be from 1 to 255"),
            (name_length, 0, "--x must be from 1 to 255"),
            (power_of_two, 2, None),
            (power_of_two, 1, "--x must be a power of 2"),
            (power_of_two, 1000, "--x must be a power of 2"),
            (one_of("a", "b"), "b", None),
            (one_of("a", "b"), "c", "--x must be one of a, b"),
        ]
        for check, value, complaint in cases:
            self.assertEqual(check("--x", value), complaint, (check, value))

    def test_port(self) -> None:
        self.assertEqual((port("0"), port("65535")), (0, 65535))
        for text in ("-1", "65536", "http"):
            self.assertRaises(ValueError, port, text)

    def test_first_invalid_value_in_field_order(self) -> None:
        settings = Settings(interface="localhost", max_rooms=0)
        self.assertEqual(settings.invalid_value(), "--interface: 'localhost' is not an IP address")
