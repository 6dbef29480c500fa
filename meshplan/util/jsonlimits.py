"""JSON from outside (an admin API's answer, a state or lock file, a snapshot) read with its nesting bounded.

`json.loads` recurses once per level of nesting: a document 100,000 levels deep ends in a RecursionError, and one
just under the interpreter's limit parses, only for the next recursive walk over it (canonicalising, diffing) to
fail. So the depth is measured on the text first, in time linear in its length and without parsing it, and a
document deeper than `MAX_DEPTH` is refused as a ValueError like any other text that is not acceptable JSON.
"""

from __future__ import annotations

import itertools
import json
import re
from array import array
from typing import Any

# Envoy's own JSON parser stops at 100 levels of messages; with the lists between them and the config dump around
# them, 200 levels hold anything an Envoy can run (a whole dump of the demo mesh is 22 deep).
MAX_DEPTH = 200

_STRING = re.compile(rb'"[^"]*"')
_NOT_QUOTES_OR_BRACKETS = bytes(b for b in range(256) if b not in b'"[]{}')
_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # +1 and, read as a signed byte, -1


class TooDeep(ValueError):
    def __init__(self, depth: int, limit: int) -> None:
        super().__init__(f"JSON nested {depth} levels deep, more than the {limit} allowed")
        self.depth, self.limit = depth, limit


def nesting_depth(text: bytes | bytearray) -> int:
    """The deepest nesting of arrays and objects in the JSON text `text` (0 for a scalar). Exact for valid JSON;
    for anything else, some number that `json.loads` will refuse on its own."""
    # Every step runs in C over the whole text. Backslashes pair from the left as JSON's escapes do, so once the
    # escaped backslashes and then the escaped quotes are gone, every quote left opens or closes a string. Dropping
    # all but quotes and brackets, then every `""` (an empty string, or the end of one string and the start of the
    # next: inside stays inside) leaves only the few strings that hold a bracket for the expression to remove.
    text = text.replace(b"\\\\", b"").replace(b'\\"', b"")
    text = text.translate(None, _NOT_QUOTES_OR_BRACKETS).replace(b'""', b"")
    steps = array("b", _STRING.sub(b"", text).translate(_STEPS, b'"'))
    return max(itertools.accumulate(steps), default=0)


def loads(text: bytes | bytearray | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """`json.loads(text)`, refusing (TooDeep, a ValueError) a document nested deeper than `max_depth`."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    depth = nesting_depth(data)
    if depth > max_depth:
        raise TooDeep(depth, max_depth)
    try:
        return json.loads(data)
    except RecursionError:  # only if the interpreter's own limit is below max_depth
        raise TooDeep(depth, max_depth) from None
