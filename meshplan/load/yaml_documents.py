"""YAML text into plain data (dicts, lists, strings, numbers, booleans, None) with the line of every field, within
limits: no text makes this use more than bounded memory and time, recurse, or end in anything but violations that
name their file and line.

PyYAML's loaders compose a node graph and then construct Python objects from it, following an alias each time it is
used: a 539-byte file of nested aliases (the "billion laughs") expands to gigabytes, an alias inside its own anchor
never ends, a few hundred levels of nesting exhaust Python's recursion, and a tag may ask for any constructor. This
reads the parser's events instead, in one loop with an explicit stack, and counts what it builds:

- nesting: at most MAX_DEPTH mappings and lists inside each other;
- aliases: an alias inside its own anchor is an error, and expanding aliases may add at most MAX_ALIAS_VALUES
  values to a file;
- values: the caller's `Budget` caps the values of a whole directory, aliases expanded;
- tags: only the YAML core types (str, int, float, bool, null, timestamp, map, seq); anything else is an error, never
  a constructor, and text a type cannot read (`!!int abc`, an integer of 5000 digits) is an error at its line;
- characters: YAML forbids control characters; each is reported at its own line (the parser would say line 1).

A document with any of these problems is reported and not returned, like a document that is not YAML.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from meshplan.errors import Source, Violation

PathKey = tuple[str | int, ...]

MAX_DEPTH = 64  # the deepest field of any kind meshplan reads is about 12 levels down
MAX_ALIAS_VALUES = 100_000  # per file; a 539-byte billion-laughs file asks for 10^9
MAX_VALUES = 1_000_000  # per desired directory (about 300 MB of loaded data); the 1000-proxy benchmark fleet has 45,000
MAX_NUMBER_CHARS = 4_300  # Python's own limit for decimal integers; also keeps sexagesimal `1:2:3:...` cheap

# libyaml's parser when PyYAML was built with it (about ten times faster on a large directory); marks are the same.
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_CORE = "tag:yaml.org,2002:"
STR, INT, FLOAT, BOOL, NULL, TIMESTAMP = (_CORE + t for t in ("str", "int", "float", "bool", "null", "timestamp"))
MAP, SEQ, MERGE, VALUE = (_CORE + t for t in ("map", "seq", "merge", "value"))
_READS_AS = {INT: "an integer", FLOAT: "a number", BOOL: "a boolean", NULL: "null", TIMESTAMP: "a timestamp"}
_READS_FROM = {INT: (INT,), FLOAT: (FLOAT, INT), BOOL: (BOOL,), NULL: (NULL,), TIMESTAMP: (TIMESTAMP,)}

# Characters YAML 1.1 does not allow in a stream (what libyaml and PyYAML refuse), and its line breaks.
_NOT_PRINTABLE = re.compile("[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_BREAK = re.compile("\r\n?|[\n\x85\u2028\u2029]")
_MAX_CHARACTER_ERRORS = 10
# Where the value of a merge key `<<` is built: no written key is an int and no list index is negative, so no field
# has this step, and the lines recorded below it are dropped once the merged keys have their own.
_MERGE_STEP = -1


@dataclass
class Budget:
    """What one read of a desired directory may still build, shared by its files."""

    values: int = field(default_factory=lambda: MAX_VALUES)


@dataclass(frozen=True)
class Document:
    """One YAML document: its data, the line its content starts on, and the line of every key and list item."""

    data: Any
    line: int
    lines: dict[PathKey, int]


def format_path(path: PathKey) -> str:
    """A field path as written: `spec.to[0].default`; a key that is empty or holds a character that does not print
    (a newline, an escape) is quoted, `["a\\nb"]`, so that a violation stays on one line and says what was written."""
    out = ""
    for part in path:
        if part == _MERGE_STEP:
            out += ".<<" if out else "<<"
        elif isinstance(part, int):
            out += f"[{part}]"
        elif not part or not part.isprintable():
            out += f"[{json.dumps(part)}]"
        else:
            out += f".{part}" if out else part
    return out


def line_at(text: str, position: int) -> int:
    """The 1-based line of a character position, counting line breaks as YAML does."""
    return 1 + sum(1 for _ in _BREAK.finditer(text, 0, position))


def read_documents(text: str, file: str, budget: Budget) -> tuple[list[Document], list[Violation]]:
    """Every non-empty document of `text` without problems, and every problem found reading it. Once the budget is
    spent (`budget.values < 0`, reported in the file where it ran out) the caller should read no more."""
    bad = [
        Violation(Source(file, line_at(text, m.start())), "",
                  f"character U+{ord(m.group()):04X} is not allowed in YAML (control characters and surrogates are not)")
        for m in _take(_NOT_PRINTABLE.finditer(text), _MAX_CHARACTER_ERRORS)
    ]
    if bad:
        return [], bad
    reader = _Reader(_Loader(text), file, budget)
    try:
        reader.read()
    finally:
        reader.loader.dispose()
    return reader.documents, reader.violations


def _take(iterator: Any, count: int) -> list[Any]:
    out = []
    for item in iterator:
        out.append(item)
        if len(out) == count:
            break
    return out


class _StopDocument(Exception):
    """A problem after which the rest of the document cannot be read sensibly."""


class _StopFile(Exception):
    """A problem after which the rest of the file is not worth reading (a budget is spent, or nothing is left that
    would not repeat a report)."""


@dataclass(frozen=True)
class _Anchor:
    value: Any
    path: PathKey  # where it was written
    entries: tuple[int, int]  # the range of `entries` inside it
    size: int  # values it holds, itself included


@dataclass(frozen=True)
class _Merge:
    source: dict[str, Any]
    path: PathKey  # where it was built (below _MERGE_STEP)
    entries: tuple[int, int]


@dataclass
class _Open:
    """A mapping or list being built."""

    value: dict[str, Any] | list[Any]
    path: PathKey
    anchor: str | None
    first_entry: int  # entries[first_entry:] lie inside it
    size_before: int  # values built before it started
    key: str | int | None = None  # a mapping's key waiting for its value (_MERGE_STEP for `<<`)
    key_line: int = 0
    key_entry: int = 0  # len(entries) when the key was read
    merges: list[_Merge] = field(default_factory=list)


class _Reader:
    def __init__(self, loader: Any, file: str, budget: Budget) -> None:
        self.loader = loader
        self.file = file
        self.budget = budget
        self.alias_values = 0
        self.documents: list[Document] = []
        self.violations: list[Violation] = []

    def read(self) -> None:
        try:
            while self.loader.check_event():
                event = self.loader.get_event()
                if isinstance(event, yaml.DocumentStartEvent):
                    self._document()
        except yaml.YAMLError as e:
            self.violations.append(_yaml_violation(self.file, e))
        except _StopFile:
            pass

    def _problem(self, line: int, message: str, path: PathKey = ()) -> None:
        self.violations.append(Violation(Source(self.file, line), format_path(path), message))

    def _document(self) -> None:
        self.entries: list[tuple[PathKey, int]] = []
        self.anchors: dict[str, _Anchor] = {}
        self.open_anchors: set[str] = set()
        self.stack: list[_Open] = []
        self.size = 0
        self.merged = False
        self.root: Any = None
        self.root_line = 0
        before = len(self.violations)
        try:
            while True:
                event = self.loader.get_event()
                if isinstance(event, yaml.DocumentEndEvent):
                    break
                self._event(event)
        except _StopDocument:
            self._skip_document()
        if len(self.violations) == before and self.root is not None:
            entries = [e for e in self.entries if _MERGE_STEP not in e[0]] if self.merged else self.entries
            self.documents.append(Document(self.root, self.root_line, dict(entries)))

    def _skip_document(self) -> None:
        """Pass over the rest of a document already reported; a syntax error in it would only repeat the report."""
        try:
            while not isinstance(self.loader.get_event(), yaml.DocumentEndEvent):
                pass
        except yaml.YAMLError:
            raise _StopFile from None

    # --- events -------------------------------------------------------------------------------------------------

    def _event(self, event: Any) -> None:
        line = event.start_mark.line + 1
        top = self.stack[-1] if self.stack else None
        if isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            self._close()
            return
        if top is not None and isinstance(top.value, dict) and top.key is None:
            self._key(event, top, line)
            return
        path = self._next_path(top, line)
        if isinstance(event, yaml.AliasEvent):
            self._alias(str(event.anchor), path, line)
        elif isinstance(event, yaml.ScalarEvent):
            self._count(1, line)
            value = self._scalar(event, path, line)
            if event.anchor is not None:
                self.anchors[event.anchor] = _Anchor(value, path, (0, 0), 1)
            self._place(value)
        elif isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            self._start(event, path, line)

    def _next_path(self, top: _Open | None, line: int) -> PathKey:
        """The path of the value starting now, recording its line: a mapping value's is its key's, already noted."""
        if top is None:
            self.root_line = line
            self.entries.append(((), line))
            return ()
        if isinstance(top.value, list):
            path = top.path + (len(top.value),)
            self.entries.append((path, line))
            return path
        assert top.key is not None
        return top.path + (top.key,)

    def _key(self, event: Any, mapping: _Open, line: int) -> None:
        if not isinstance(event, yaml.ScalarEvent):
            what = "an alias" if isinstance(event, yaml.AliasEvent) else "a mapping or a list"
            self._problem(line, f"a key must be a plain string, not {what}", mapping.path)
            raise _StopDocument
        tag = event.tag
        if tag not in (None, "!", STR) and tag not in _READS_AS:
            self._problem(line, f"YAML tag {_short(tag)} is not allowed (meshplan reads plain data only)", mapping.path)
        if event.anchor is not None:
            self._problem(line, "an anchor on a key is not supported", mapping.path)
        key = str(event.value)
        mapping.key_line, mapping.key_entry = line, len(self.entries)
        if tag is None and self.loader.resolve(yaml.ScalarNode, key, event.implicit) == MERGE:
            mapping.key = _MERGE_STEP
            self.merged = True
            return
        if key in mapping.value:
            self._problem(line, "duplicate key", mapping.path + (key,))
        mapping.key = key
        self.entries.append((mapping.path + (key,), line))

    def _scalar(self, event: Any, path: PathKey, line: int) -> Any:
        tag = event.tag
        if tag is None:
            tag = self.loader.resolve(yaml.ScalarNode, event.value, event.implicit)
        if tag in ("!", STR, MERGE, VALUE):  # `!` is YAML's "not resolved": a string
            return event.value
        if tag not in _READS_AS:
            self._problem(line, f"YAML tag {_short(tag)} is not allowed (meshplan reads plain data only)", path)
            return None
        text = event.value
        if tag in (INT, FLOAT) and len(text) > MAX_NUMBER_CHARS:
            self._problem(line, f"a number of {len(text)} characters is too long (at most {MAX_NUMBER_CHARS})", path)
            return None
        # A tag's constructor is only given text that would have that type untagged (`!!float 1` too): on anything
        # else (`!!int abc`, `!!int` with no text, `!!bool maybe`) the core constructors raise whatever they meet.
        readable = self.loader.resolve(yaml.ScalarNode, text, (True, False)) in _READS_FROM[tag]
        node = yaml.ScalarNode(tag, text, event.start_mark, event.end_mark, event.style)
        try:
            if readable:
                return self.loader.yaml_constructors[tag](self.loader, node)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError, yaml.YAMLError):
            pass  # text that looks right and is not (2024-13-45, 0b_)
        self._problem(line, f"cannot read {_shorten(text)!r} as {_READS_AS[tag]} ({_short(tag)})", path)
        return None

    def _start(self, event: Any, path: PathKey, line: int) -> None:
        mapping = isinstance(event, yaml.MappingStartEvent)
        if len(self.stack) >= MAX_DEPTH:
            self._problem(line, f"nested more than {MAX_DEPTH} levels deep")
            raise _StopDocument
        tag = event.tag
        if tag not in (None, "!", MAP if mapping else SEQ):
            self._problem(line, f"YAML tag {_short(tag)} is not allowed on a {'mapping' if mapping else 'list'} "
                          "(meshplan reads plain data only)", path)
        self._count(1, line)
        if event.anchor is not None:
            self.open_anchors.add(event.anchor)
        value: dict[str, Any] | list[Any] = {} if mapping else []
        self.stack.append(_Open(value, path, event.anchor, len(self.entries), self.size - 1))

    def _close(self) -> None:
        done = self.stack.pop()
        if isinstance(done.value, dict):
            for merge in done.merges:
                added = {key for key in merge.source if key not in done.value}  # written keys win, then earlier merges
                done.value.update((key, merge.source[key]) for key in merge.source if key in added)
                base = len(merge.path)
                start, end = merge.entries
                self.entries.extend((done.path + path[base:], line) for path, line in self.entries[start:end]
                                    if len(path) > base and path[base] in added and path[:base] == merge.path)
        if done.anchor is not None:
            self.anchors[done.anchor] = _Anchor(done.value, done.path, (done.first_entry, len(self.entries)),
                                                self.size - done.size_before)
            self.open_anchors.discard(done.anchor)
        self._place(done.value)

    def _alias(self, name: str, path: PathKey, line: int) -> None:
        if name in self.open_anchors:
            self._problem(line, f"alias *{name} is inside its own anchor &{name}: the value would never end", path)
            raise _StopDocument
        anchor = self.anchors.get(name)
        if anchor is None:
            self._problem(line, f"alias *{name} has no anchor &{name} before it in this document", path)
            raise _StopDocument
        self.alias_values += anchor.size
        if self.alias_values > MAX_ALIAS_VALUES:
            self._problem(line, f"aliases expand to more than {MAX_ALIAS_VALUES:,} values in this file "
                          "(a YAML bomb?): write the values out, or use fewer aliases")
            raise _StopFile
        self._count(anchor.size, line)
        base = len(anchor.path)
        start, end = anchor.entries
        self.entries.extend((path + inner[base:], entry_line) for inner, entry_line in self.entries[start:end])
        self._place(_copy(anchor.value))

    def _count(self, values: int, line: int) -> None:
        self.size += values
        self.budget.values -= values
        if self.budget.values < 0:
            self._problem(line, f"the desired directory holds more than {MAX_VALUES:,} YAML values "
                          "(aliases expanded): meshplan reads no more")
            raise _StopFile

    def _place(self, value: Any) -> None:
        if not self.stack:
            self.root = value
            return
        top = self.stack[-1]
        if isinstance(top.value, list):
            top.value.append(value)
            return
        if top.key == _MERGE_STEP:
            self._merge(top, value)
        else:
            assert isinstance(top.key, str)
            top.value[top.key] = value
        top.key = None

    def _merge(self, mapping: _Open, value: Any) -> None:
        """`<<: *base` or `<<: [*a, *b]`: the merged mappings are added when the mapping ends (its own keys win)."""
        where = mapping.path + (_MERGE_STEP,)
        entries = (mapping.key_entry, len(self.entries))
        if isinstance(value, dict):
            mapping.merges.append(_Merge(value, where, entries))
        elif isinstance(value, list) and all(isinstance(item, dict) for item in value):
            mapping.merges.extend(_Merge(item, where + (i,), entries) for i, item in enumerate(value))
        else:
            self._problem(mapping.key_line, "`<<` (a merge key) takes a mapping or a list of mappings", mapping.path)


def _copy(value: Any) -> Any:
    """A fresh copy of an aliased value, so that no two fields share one mutable object (depth <= MAX_DEPTH)."""
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _short(tag: str) -> str:
    return "!!" + tag[len(_CORE):] if tag.startswith(_CORE) else tag


def _shorten(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _yaml_violation(file: str, e: yaml.YAMLError) -> Violation:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    line = mark.line + 1 if mark is not None else 1
    problem = getattr(e, "problem", None) or str(e)
    context = getattr(e, "context", None)
    message = f"malformed YAML: {problem}" + (f" ({context})" if context else "")
    return Violation(Source(file, line), "", message)
