"""Text for a terminal, safe whatever it came from.

Names, keys, file names, Envoy's messages and admin answers reach human output; a control character among them
(ESC starts a terminal escape sequence: colours, cursor moves, a window title, on some terminals a clipboard write)
would be obeyed by the terminal, and a newline would forge a line of output. Every human presenter passes what it
prints through `printable`, which writes each such character as an escape instead (`\\x1b`, `\\n`, `\\u202e`).
JSON output is never passed through it: it stays exact (and `json.dumps` escapes control characters itself).
"""

from __future__ import annotations

import re

from rich.markup import escape

# C0 controls (newline and tab included), DEL, C1 controls (0x9b is a one-byte CSI on some terminals), the line and
# paragraph separators, and the bidirectional controls that can make text read otherwise than it is ("Trojan
# Source"): the Arabic letter mark, LRM/RLM, LRE..RLO and LRI..PDI.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
_UNSAFE_BUT_NEWLINE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object, *, keep_newlines: bool = False) -> str:
    """`text` (made a string with `str`) with every control character written as an escape. `keep_newlines` for a
    message whose lines are its own (an error of several lines): its newlines stay, every other control is escaped."""
    value = str(text)
    return (_UNSAFE_BUT_NEWLINE if keep_newlines else _UNSAFE).sub(_escape, value)


def markup_safe(text: object) -> str:
    """`printable(text)`, made safe to embed in rich markup too (its `[` cannot start a style)."""
    return escape(printable(text))
