"""
Draw a terminal screen, captured with its colours, as an SVG image.

    tmux capture-pane -e -p -N -t SESSION > screen.ansi
    python docs/screenshot.py --columns 100 screen.ansi > docs/chat-screen.svg

The input is text with ANSI SGR sequences (tmux's C{-e}). It understands the
16 colours, 256 colours and true colour, bold, dim, italic, underline and
reverse; other escape sequences are skipped. Each character is drawn at its
own column, wide ones (CJK, emoji) over two, as in the terminal, and the light
box-drawing characters as lines, so that borders join up whatever the font.
tmux leaves out the cells that a program cleared at the end of a line: they
are drawn in the background in force there, up to C{--columns}.

Standard library only; the image carries no font (the viewer's monospace
font draws it).
"""

from __future__ import annotations

import argparse
import re
import sys
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from html import escape
from pathlib import Path

FONT_SIZE = 14.0
CELL_WIDTH = 8.4
"""Pixels per column: the 0.6 em advance of most monospace fonts at FONT_SIZE."""
CELL_HEIGHT = 18.0
BASELINE = 13.5
"""Pixels from a row's top to the text's baseline."""
PADDING = 12.0
FONT_FAMILY = "'DejaVu Sans Mono', Menlo, Consolas, 'Liberation Mono', monospace"

DEFAULT_FOREGROUND = "#d3d7cf"
DEFAULT_BACKGROUND = "#1d1f21"
PALETTE = (
    # Tango, as in GNOME Terminal: black, red, green, yellow, blue, magenta, cyan, white...
    "#2e3436",
    "#cc0000",
    "#4e9a06",
    "#c4a000",
    "#3465a4",
    "#75507b",
    "#06989a",
    "#d3d7cf",
    # ... and their bright forms.
    "#555753",
    "#ef2929",
    "#8ae234",
    "#fce94f",
    "#729fcf",
    "#ad7fa8",
    "#34e2e2",
    "#eeeeec",
)

_ESCAPE = re.compile(r"\x1b\[([0-?]*)[ -/]*([@-~])|\x1b[@-_]")
"""A control sequence (CSI: parameters, final byte), or another two-byte escape."""

# Light box drawing: which edges of its cell each character reaches (up, right, down, left).
_BOX: dict[str, str] = {
    "│": "ud",
    "─": "rl",
    "┌": "rd",
    "┐": "dl",
    "└": "ur",
    "┘": "ul",
    "├": "urd",
    "┤": "udl",
    "┬": "rdl",
    "┴": "url",
    "┼": "urdl",
}


@dataclass(frozen=True, slots=True)
class Style:
    foreground: str | None = None
    """A colour (#rrggbb), or None for the default."""
    background: str | None = None
    bold: bool = False
    dim: bool = False
    italic: bool = False
    underline: bool = False
    reverse: bool = False

    def colours(self) -> tuple[str, str | None]:
        """The text colour and the background colour (None: the default), reverse applied."""
        foreground, background = self.foreground, self.background
        if self.reverse:
            return background or DEFAULT_BACKGROUND, foreground or DEFAULT_FOREGROUND
        return foreground or DEFAULT_FOREGROUND, background


@dataclass(frozen=True, slots=True)
class Cell:
    column: int
    text: str
    """One character, with any combining marks that follow it."""
    width: int
    style: Style


@dataclass(slots=True)
class Row:
    cells: list[Cell]
    end: Style
    """
    The style in force after the last character: tmux leaves out the cells
    at the end of a line that the program cleared, and they had its background.
    """

    @property
    def width(self) -> int:
        return self.cells[-1].column + self.cells[-1].width if self.cells else 0


def colour_256(index: int) -> str:
    """The xterm colour C{index} (0-255) as #rrggbb."""
    if index < 16:
        return PALETTE[index]
    if index < 232:
        index -= 16
        levels = [0 if value == 0 else 55 + 40 * value for value in (index // 36, index // 6 % 6, index % 6)]
        return "#{:02x}{:02x}{:02x}".format(*levels)
    grey = 8 + 10 * (index - 232)
    return f"#{grey:02x}{grey:02x}{grey:02x}"


def _extended_colour(codes: list[int]) -> str | None:
    """The colour of a 38/48 sequence's rest (5;N or 2;R;G;B), consuming it from C{codes}."""
    kind = codes.pop(0) if codes else None
    if kind == 5 and codes:
        return colour_256(min(codes.pop(0), 255))
    if kind == 2 and len(codes) >= 3:
        red, green, blue = (min(codes.pop(0), 255) for _ in range(3))
        return f"#{red:02x}{green:02x}{blue:02x}"
    return None


def apply_sgr(style: Style, parameters: str) -> Style:
    """C{style} after the SGR sequence C{ESC [ parameters m}."""
    codes = [int(code) if code else 0 for code in re.split("[;:]", parameters)] if parameters else [0]
    while codes:
        code = codes.pop(0)
        if code == 0:
            style = Style()
        elif code == 1:
            style = replace(style, bold=True)
        elif code == 2:
            style = replace(style, dim=True)
        elif code == 3:
            style = replace(style, italic=True)
        elif code == 4:
            style = replace(style, underline=True)
        elif code == 7:
            style = replace(style, reverse=True)
        elif code == 22:
            style = replace(style, bold=False, dim=False)
        elif code == 23:
            style = replace(style, italic=False)
        elif code == 24:
            style = replace(style, underline=False)
        elif code == 27:
            style = replace(style, reverse=False)
        elif 30 <= code <= 37:
            style = replace(style, foreground=PALETTE[code - 30])
        elif 90 <= code <= 97:
            style = replace(style, foreground=PALETTE[code - 90 + 8])
        elif 40 <= code <= 47:
            style = replace(style, background=PALETTE[code - 40])
        elif 100 <= code <= 107:
            style = replace(style, background=PALETTE[code - 100 + 8])
        elif code == 38:
            style = replace(style, foreground=_extended_colour(codes) or style.foreground)
        elif code == 48:
            style = replace(style, background=_extended_colour(codes) or style.background)
        elif code == 39:
            style = replace(style, foreground=None)
        elif code == 49:
            style = replace(style, background=None)
    return style


def char_width(char: str) -> int:
    """Columns C{char} takes in a terminal: 0 (combining, zero-width), 1, or 2 (wide)."""
    if unicodedata.combining(char) or unicodedata.category(char) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def parse(text: str) -> list[Row]:
    """The screen in C{text}, line by line; styles carry over from one line to the next."""
    rows = [Row([], Style())]
    style = Style()
    position = 0
    # A last escape, so that the text after the last real one is read too.
    for match in _ESCAPE.finditer(text + "\x1b\\"):
        for char in text[position : match.start()]:
            cells = rows[-1].cells
            column = rows[-1].width
            if char == "\n":
                rows[-1].end = style
                rows.append(Row([], style))
            elif char == "\t":
                cells.extend(Cell(column + offset, " ", 1, style) for offset in range(8 - column % 8))
            elif unicodedata.category(char) == "Cc":
                continue
            elif (width := char_width(char)) == 0:
                if cells:
                    cells[-1] = replace(cells[-1], text=cells[-1].text + char)
            else:
                cells.append(Cell(column, char, width, style))
        if match.group(2) == "m" and re.fullmatch("[0-9;:]*", match.group(1)):
            style = apply_sgr(style, match.group(1))
        position = match.end()
    rows[-1].end = style
    if text.endswith("\n"):
        rows.pop()
    return rows


def _backgrounds(row: Row, columns: int) -> Iterator[tuple[int, int, str]]:
    """The spans of non-default background in C{row}: first column, columns, colour."""
    spans: list[tuple[int, int, str | None]] = [
        (cell.column, cell.width, cell.style.colours()[1]) for cell in row.cells
    ]
    spans.append((row.width, max(0, columns - row.width), row.end.colours()[1]))
    start, width, colour = 0, 0, None
    for span_start, span_width, span_colour in spans:
        if span_colour == colour and span_start == start + width:
            width += span_width
            continue
        if colour is not None and width:
            yield start, width, colour
        start, width, colour = span_start, span_width, span_colour
    if colour is not None and width:
        yield start, width, colour


def _runs(cells: list[Cell]) -> Iterator[list[Cell]]:
    """Cells drawn together: narrow ones of one style in a row; a wide or box-drawing one alone."""
    run: list[Cell] = []
    for cell in cells:
        alone = cell.width != 1 or cell.text in _BOX
        if run and (alone or run[-1].style != cell.style):
            yield run
            run = []
        if alone:
            yield [cell]
        else:
            run.append(cell)
    if run:
        yield run


def _attributes(style: Style, colour: str) -> str:
    attributes = f' fill="{colour}"'
    if style.bold:
        attributes += ' font-weight="bold"'
    if style.italic:
        attributes += ' font-style="italic"'
    if style.underline:
        attributes += ' text-decoration="underline"'
    if style.dim:
        attributes += ' fill-opacity="0.6"'
    return attributes


def _box_lines(cell: Cell, colour: str, top: float) -> str:
    left = PADDING + cell.column * CELL_WIDTH
    middle_x, middle_y = left + CELL_WIDTH / 2, top + CELL_HEIGHT / 2
    ends = {
        "u": (middle_x, top),
        "r": (left + CELL_WIDTH, middle_y),
        "d": (middle_x, top + CELL_HEIGHT),
        "l": (left, middle_y),
    }
    path = " ".join(f"M{middle_x:g} {middle_y:g}L{ends[edge][0]:g} {ends[edge][1]:g}" for edge in _BOX[cell.text])
    return f'<path d="{path}" stroke="{colour}" stroke-width="1" stroke-linecap="square"/>'


def render(rows: Sequence[Row], columns: int | None = None, title: str | None = None) -> str:
    """
    The SVG image of C{rows}, C{columns} wide (by default as wide as the
    widest row); C{title} is what screen readers and tooltips say it shows.
    """
    if columns is None:
        columns = max((row.width for row in rows), default=0)
    width = 2 * PADDING + columns * CELL_WIDTH
    height = 2 * PADDING + len(rows) * CELL_HEIGHT
    backgrounds: list[str] = []
    texts: list[str] = []
    for number, row in enumerate(rows):
        top = PADDING + number * CELL_HEIGHT
        baseline = top + BASELINE
        for start, span, background in _backgrounds(row, columns):
            # A little over, so that no hairline shows between neighbours.
            backgrounds.append(
                f'<rect x="{PADDING + start * CELL_WIDTH:g}" y="{top:g}"'
                f' width="{span * CELL_WIDTH + 0.5:g}" height="{CELL_HEIGHT + 0.5:g}" fill="{background}"/>'
            )
        for run in _runs(row.cells):
            first = run[0]
            colour, _ = first.style.colours()
            text = "".join(cell.text for cell in run)
            if first.text in _BOX:
                texts.append(_box_lines(first, colour, top))
            elif first.width == 2:
                centre = PADDING + (first.column + 1) * CELL_WIDTH
                texts.append(
                    f'<text x="{centre:g}" y="{baseline:g}" text-anchor="middle"'
                    f"{_attributes(first.style, colour)}>{escape(text)}</text>"
                )
            elif text.strip() or first.style.underline:
                texts.append(
                    f'<text x="{PADDING + first.column * CELL_WIDTH:g}" y="{baseline:g}"'
                    f' textLength="{len(run) * CELL_WIDTH:g}" lengthAdjust="spacingAndGlyphs"'
                    f"{_attributes(first.style, colour)}>{escape(text)}</text>"
                )
    return "\n".join(
        [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:g}" height="{height:g}"'
            f' viewBox="0 0 {width:g} {height:g}" xml:space="preserve">',
            *([f"<title>{escape(title)}</title>"] if title else []),
            f'<rect width="100%" height="100%" rx="6" fill="{DEFAULT_BACKGROUND}"/>',
            *backgrounds,
            f'<g font-family="{FONT_FAMILY}" font-size="{FONT_SIZE:g}px" style="white-space: pre">',
            *texts,
            "</g>",
            "</svg>",
            "",
        ]
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Draw a terminal screen captured with ANSI colours as SVG.")
    parser.add_argument("capture", nargs="?", help="the capture (tmux capture-pane -e -p -N); default stdin")
    parser.add_argument("--columns", type=int, help="the screen's width (default: the widest line)")
    parser.add_argument("--title", help="what the image shows, for screen readers and tooltips")
    args = parser.parse_args(argv)
    text = Path(args.capture).read_text("utf-8") if args.capture else sys.stdin.read()
    sys.stdout.write(render(parse(text), args.columns, args.title))


if __name__ == "__main__":
    main()
