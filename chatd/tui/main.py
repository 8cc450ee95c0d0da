"""
chatd-chat's entry point: the command line (chatd.client.chat_cli), then the
terminal app or, with --line, line mode. It sits with the terminal app, the
top of the client side, so that the client library never imports it; each
face is imported only when chosen (urwid loads only for the terminal app).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from twisted.internet.defer import Deferred
from twisted.internet.task import react

from chatd.client.chat_cli import ChatArguments, parse_arguments


def run(reactor: Any, arguments: ChatArguments) -> Deferred[int]:
    """Run the chosen face on C{reactor}; fire with the exit status."""
    if arguments.line:
        from chatd.client.line_mode import run_line_mode

        return run_line_mode(reactor, arguments)
    from chatd.tui.app import run_terminal_app

    return run_terminal_app(reactor, arguments)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    arguments = parse_arguments(argv)

    def start(reactor: Any) -> Deferred[None]:
        def exit_with(status: int) -> None:
            if status:
                raise SystemExit(status)

        return run(reactor, arguments).addCallback(exit_with)

    react(start)
    sys.exit(0)  # react exits itself; this keeps the NoReturn promise for type checkers


if __name__ == "__main__":
    main()
