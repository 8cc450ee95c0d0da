"""
The screens before the chat: the user name, then create or join a room.

Each is a box widget that reports what was entered through a plain callback
and shows errors where they can be corrected. Neither knows the network: the
controller decides what happens next.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import urwid
from typing_extensions import override

from chatd.protocol.errors import InvalidNameError
from chatd.protocol.payloads import validate_name, validate_user_name
from chatd.tui import theme
from chatd.tui.editing import TextEdit

_Size = tuple[()] | tuple[int] | tuple[int, int]

_ANY_LENGTH = 1 << 16
"""Length is the server's to judge (its limits are settings); only the characters are checked here."""

DIALOG_WIDTH = 72


class Field(Enum):
    """A field of the room screen, to put the cursor where a correction goes."""

    ROOM = "room"
    PASSWORD = "password"
    INVITE = "invite"
    HOST = "host"
    TCP_PORT = "tcp port"
    UDP_PORT = "udp port"


@dataclass(frozen=True, slots=True)
class RoomChoice:
    """What the room screen asks for: which room, how to get in, and where."""

    create: bool
    room: str
    password: str | None
    invite: str | None
    host: str
    tcp_port: int
    udp_port: int
    native_only: bool = False
    """Create a room only native clients may join (chatd-chat --native-only; over TLS only)."""


def _dialog(title: str, rows: list[urwid.Widget]) -> tuple[urwid.Widget, urwid.Pile]:
    pile = urwid.Pile(rows)
    box = urwid.LineBox(urwid.Padding(pile, left=1, right=1), title=title, title_attr=theme.FORM_TITLE)
    framed = urwid.Filler(_Centred(box, DIALOG_WIDTH), valign="middle")
    return framed, pile


class _Centred(urwid.Padding[urwid.Widget]):
    """Centred at C{width} columns, or the whole width of a narrower terminal."""

    def __init__(self, widget: urwid.Widget, width: int) -> None:
        super().__init__(widget, align="center", width=("relative", 100))
        self._most = width

    @override
    def padding_values(self, size: _Size, focus: bool) -> tuple[int, int]:
        spare = max(0, size[0] - self._most) if size else 0
        return spare // 2, spare - spare // 2


def _field(label: str, edit: urwid.Edit, note: str = "", label_width: int = 12) -> urwid.Columns:
    columns: list[urwid.Widget | tuple[int, urwid.Widget]] = [
        (label_width, urwid.Text((theme.LABEL, label))),
        urwid.AttrMap(edit, theme.FIELD, theme.FIELD_FOCUS),
    ]
    if note:
        columns.append((len(note) + 1, urwid.Text((theme.HINT, " " + note))))
    return urwid.Columns(columns)


class MessageLine(urwid.Text):
    """The line where a screen says what went wrong, or what just happened."""

    def __init__(self) -> None:
        super().__init__("")

    def error(self, text: str) -> None:
        self.set_text((theme.ERROR, text))

    def info(self, text: str) -> None:
        self.set_text((theme.NOTICE, text))

    def clear(self) -> None:
        self.set_text("")


class NameScreen(urwid.WidgetWrap[urwid.Widget]):
    """Asks for the user name; Enter submits it."""

    def __init__(self, on_submit: Callable[[str], None], name: str = "") -> None:
        self._on_submit = on_submit
        self._edit = TextEdit("", name)
        self.message = MessageLine()
        widget, _ = _dialog(
            "chatd",
            [
                urwid.Text("Welcome to chatd. Pick the name the room will know you by."),
                urwid.Divider(),
                _field("Your name", self._edit, label_width=11),
                urwid.Divider(),
                self.message,
                urwid.Text((theme.HINT, "Enter: continue · Ctrl-C: quit")),
            ],
        )
        super().__init__(widget)

    @property
    def name(self) -> str:
        return str(self._edit.edit_text).strip()

    @override
    def keypress(self, size: _Size, key: str) -> str | None:
        unhandled = super().keypress(size, key)
        if unhandled != "enter":
            return unhandled
        try:
            name = validate_user_name(self.name, _ANY_LENGTH)
        except InvalidNameError as error:
            self.message.error(f"That name will not do: {error}.")
            return None
        self.message.clear()
        self._on_submit(name)
        return None


class RoomScreen(urwid.WidgetWrap[urwid.Widget]):
    """
    Create or join: the room, its password or an invitation, and the server.

    Enter in any field submits; Tab and Shift-Tab move between fields, Esc
    goes back to the name.
    """

    def __init__(
        self,
        defaults: RoomChoice,
        on_submit: Callable[[RoomChoice], None],
        on_back: Callable[[], None],
    ) -> None:
        self._defaults = defaults
        self._on_submit = on_submit
        self._on_back = on_back
        self._group: list[urwid.RadioButton] = []
        self._join = urwid.RadioButton(self._group, "join a room", state=not defaults.create)
        self._create = urwid.RadioButton(self._group, "create a room (you host it)", state=defaults.create)
        self._edits = {
            Field.ROOM: TextEdit("", defaults.room),
            Field.PASSWORD: TextEdit("", defaults.password or "", mask="*"),
            Field.INVITE: TextEdit("", defaults.invite or ""),
            Field.HOST: TextEdit("", defaults.host),
            Field.TCP_PORT: TextEdit("", str(defaults.tcp_port)),
            Field.UDP_PORT: TextEdit("", str(defaults.udp_port)),
        }
        self._who = urwid.Text("")
        self.message = MessageLine()
        choice = urwid.Columns(
            [
                (16, urwid.Text((theme.LABEL, "I want to"))),
                (16, urwid.AttrMap(self._join, None, theme.CHOICE_FOCUS)),
                urwid.AttrMap(self._create, None, theme.CHOICE_FOCUS),
            ]
        )
        server = urwid.Columns(
            [
                (16, urwid.Text((theme.LABEL, "Server"))),
                urwid.AttrMap(self._edits[Field.HOST], theme.FIELD, theme.FIELD_FOCUS),
                (5, urwid.Text((theme.LABEL, " TCP "))),
                (6, urwid.AttrMap(self._edits[Field.TCP_PORT], theme.FIELD, theme.FIELD_FOCUS)),
                (5, urwid.Text((theme.LABEL, " UDP "))),
                (6, urwid.AttrMap(self._edits[Field.UDP_PORT], theme.FIELD, theme.FIELD_FOCUS)),
            ]
        )
        widget, self._pile = _dialog(
            "Create or join a room",
            [
                self._who,
                urwid.Divider(),
                choice,
                _field("Room", self._edits[Field.ROOM], label_width=16),
                _field("Password", self._edits[Field.PASSWORD], "optional", label_width=16),
                _field("Invitation", self._edits[Field.INVITE], "to join without the password", label_width=16),
                server,
                urwid.Divider(),
                self.message,
                urwid.Text((theme.HINT, "Enter: connect · Tab: next field · Esc: change name · Ctrl-C: quit")),
            ],
        )
        super().__init__(widget)
        self._stops = self._tab_stops()
        self.focus_field(Field.ROOM)

    def set_name(self, name: str) -> None:
        self._who.set_text(["You are ", (theme.OWN_NICK, name), "."])

    def set_create(self, create: bool) -> None:
        (self._create if create else self._join).set_state(True)

    def clear_invite(self) -> None:
        """An invitation is spent once it has let someone in."""
        self._edits[Field.INVITE].set_edit_text("")

    def focus_field(self, field: Field) -> None:
        self._pile.set_focus_path(self._path_of(self._edits[field]))

    def _path_of(self, edit: urwid.Edit) -> list[int | str]:
        for position, (row, _) in enumerate(self._pile.contents):
            if isinstance(row, urwid.Columns):
                for column, (cell, _) in enumerate(row.contents):
                    if isinstance(cell, urwid.AttrMap) and cell.original_widget is edit:
                        return [position, column]
        raise LookupError(edit)

    def _tab_stops(self) -> list[list[int | str]]:
        stops: list[list[int | str]] = []
        for position, (row, _) in enumerate(self._pile.contents):
            if isinstance(row, urwid.Columns):
                stops.extend([position, column] for column, (cell, _) in enumerate(row.contents) if cell.selectable())
            elif row.selectable():
                stops.append([position])
        return stops

    def _move(self, step: int) -> None:
        current = self._pile.get_focus_path()
        index = self._stops.index(current) if current in self._stops else 0
        self._pile.set_focus_path(self._stops[(index + step) % len(self._stops)])

    @override
    def keypress(self, size: _Size, key: str) -> str | None:
        if key in ("tab", "shift tab"):
            self._move(1 if key == "tab" else -1)
            return None
        if key == "esc":
            self._on_back()
            return None
        unhandled = super().keypress(size, key)
        if unhandled == "enter":
            self._submit()
            return None
        return unhandled

    def _text(self, field: Field) -> str:
        return str(self._edits[field].edit_text).strip()

    def _fail(self, text: str, field: Field) -> None:
        self.message.error(text)
        self.focus_field(field)

    def _submit(self) -> None:
        create = self._create.get_state() is True
        room = self._text(Field.ROOM)
        password = str(self._edits[Field.PASSWORD].edit_text) or None
        invite = self._text(Field.INVITE) or None
        try:
            validate_name(room, _ANY_LENGTH, "the room name")
        except InvalidNameError as error:
            self._fail(f"{str(error).capitalize()}.", Field.ROOM)
            return
        if create and invite:
            self._fail("An invitation is for joining a room; clear it to create one.", Field.INVITE)
            return
        if password and invite:
            self._fail("Give the password or an invitation, not both.", Field.INVITE)
            return
        host = self._text(Field.HOST)
        if not host:
            self._fail("Which server? Type its address, e.g. 127.0.0.1.", Field.HOST)
            return
        ports: dict[Field, int] = {}
        for field in (Field.TCP_PORT, Field.UDP_PORT):
            text = self._text(field)
            if not (text.isdigit() and 0 < int(text) < 65536):
                self._fail(f"The {field.value} must be a number from 1 to 65535.", field)
                return
            ports[field] = int(text)
        self.message.clear()
        # Native-only is the command line's choice: the form has no field for it.
        native_only = self._defaults.native_only
        self._on_submit(
            RoomChoice(create, room, password, invite, host, ports[Field.TCP_PORT], ports[Field.UDP_PORT], native_only)
        )
