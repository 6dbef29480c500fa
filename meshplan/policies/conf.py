"""A kind's typed conf, read once by one function for both of its uses.

`validate` reads one item's `default` and records every violation at its path; render reads what the items that
matched a destination merged to, and gets the same typed values, each with the policies that set it. A kind's
`parse(reader)` is the only place its YAML field names are spelled and its values checked and converted (a
duration to Envoy's form, once); the Envoy side reads the dataclasses it returns, never the raw dict.
"""

from __future__ import annotations

from collections.abc import Callable, Container
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Generic, TypeVar

from meshplan.load.resources import PathKey
from meshplan.match.matcher import Merged
from meshplan.validate.check import FieldCheck, as_decimal

T = TypeVar("T")
C = TypeVar("C")
V = TypeVar("V")


@dataclass(frozen=True)
class Setting(Generic[T]):
    """One conf value, converted, and the policies that set it (`Kind/name (file:line)`; none while validating)."""

    value: T
    origins: tuple[str, ...] = ()


@dataclass(frozen=True)
class Header:
    """A header's name and value (Kuma's HeaderValue), as MeshHealthCheck, MeshRateLimit and MeshHTTPRoute write
    the headers they set or add."""

    name: str
    value: str


# Kuma's header match types (common_api HeaderMatch), as MeshHTTPRoute and MeshRetry read them.
HEADER_MATCH_TYPES = ("Exact", "Present", "RegularExpression", "Absent", "Prefix")


@dataclass(frozen=True)
class HeaderMatch:
    name: str
    type: str  # one of HEADER_MATCH_TYPES; Exact when not written
    value: str | None


class MergedConfError(AssertionError):
    """A merged conf that a kind's parse refuses although every item it came from was valid: a bug in the kind."""


class ConfReader:
    """A kind's conf (or a section of it) as its parse sees it: typed reads that record a violation for every wrong
    field when validating an item, and attach each value's origins when reading a merged conf."""

    def __init__(self, raw: dict[str, Any], path: PathKey, check: FieldCheck, merged: Merged | None = None,
                 prefix: str = "") -> None:
        self.raw = raw
        self.path = path
        self.check = check
        self.merged = merged
        self.prefix = prefix  # the dotted path of this section in the merged conf

    @classmethod
    def of_merged(cls, merged: Merged) -> ConfReader:
        return cls(merged.conf, (), _Strict(), merged)

    @classmethod
    def of_single(cls, default: dict[str, Any]) -> ConfReader:
        """A validated policy's own top-level `default` (a kind with one `default`, nothing merged): read as a
        merged conf is, any violation a bug."""
        return cls(default, ("default",), _Strict())

    @property
    def validating(self) -> bool:
        return self.merged is None

    def has(self, key: str) -> bool:
        return self.raw.get(key) is not None

    def origins(self, key: str) -> tuple[str, ...]:
        """Who set `key` of this section, or anything below it, sorted."""
        if self.merged is None:
            return ()
        full = self.prefix + key
        return tuple(sorted({str(origin.set_by) for path, origin in self.merged.origins.items()
                             if path == full or path.startswith(full + ".")}))

    def unknown(self, known: tuple[str, ...]) -> None:
        self.check.unknown(self.raw, self.path, known)

    def fail(self, message: str, key: str | None = None) -> None:
        self.check.fail(self.path + ((key,) if key is not None else ()), message)

    def duration(self, key: str, *, positive: bool = False) -> Setting[str] | None:
        """A Go-style duration as Envoy's proto-JSON Duration (`90s`, `0.250s`)."""
        return self._setting(key, self.check.duration(self.raw, self.path, key, positive=positive))

    def integer(self, key: str, *, minimum: int = 0, maximum: int | None = None) -> Setting[int] | None:
        return self._setting(key, self.check.integer(self.raw, self.path, key, minimum=minimum, maximum=maximum))

    def choice(self, key: str, choices: tuple[str, ...]) -> Setting[str] | None:
        return self._setting(key, self.check.choice(self.raw, self.path, key, choices))

    def section(self, key: str, read: Callable[[ConfReader], C]) -> C | None:
        """A nested mapping, read by `read`; None when it is not set (or, validating, not a mapping)."""
        raw = self.check.field(self.raw, self.path, key, dict)
        if raw is None:
            return None
        return read(ConfReader(raw, self.path + (key,), self.check, self.merged, f"{self.prefix}{key}."))

    def _setting(self, key: str, value: T | None) -> Setting[T] | None:
        return None if value is None else Setting(value, self.origins(key))

    # --- added for MeshRetry and MeshLoadBalancingStrategy: more typed reads ---

    def text(self, key: str, *, required: bool = False) -> Setting[str] | None:
        """A string (`required`: a violation on this section when it is not set)."""
        value = self.check.field(self.raw, self.path, key, str, required=required)
        return self._setting(key, None if value is None else str(value))

    def tags(self, key: str, *, required: bool = False) -> Setting[dict[str, str]] | None:
        """A mapping of tag names to string values (those that are strings, when some are not); None when not set."""
        value = self.check.tags(self.raw, self.path, key, required=required)
        return self._setting(key, value) if self.has(key) else None

    def items(self, key: str, convert: Callable[[Any], V | None],
              problem: Callable[[Any], str]) -> Setting[tuple[V, ...]] | None:
        """A list of scalars, each converted by `convert`; one it refuses (None) is left out, with the violation
        `problem(item)` at its index."""
        raw = self.check.field(self.raw, self.path, key, list)
        if raw is None:
            return None
        found: list[V] = []
        for i, item in enumerate(raw):
            value = convert(item)
            if value is None:
                self.check.fail(self.path + (key, i), problem(item))
            else:
                found.append(value)
        return self._setting(key, tuple(found))

    def written_by(self) -> tuple[str, ...]:
        """The policies whose items wrote this section at all, each at the section's line, sorted: for what the
        section's presence alone decides (a default it implies); none while validating."""
        if self.merged is None:
            return ()
        path = tuple(str(key) for key in self.path)  # a merged conf's reader is at its path in the conf
        found = set()
        for c in self.merged.contributions:
            node: Any = c.item.default
            for key in path:
                node = node.get(key) if isinstance(node, dict) else None
            if node is not None:
                found.add(str(c.origin(path)))
        return tuple(sorted(found))

    def number(self, key: str, *, minimum: int = 0) -> Setting[Decimal] | None:
        """A number at least `minimum`: an integer, a float or a decimal string (Kuma's IntOrString). Unlike the other
        reads, a key written as null is read, and refused, too."""
        if key not in self.raw:
            return None
        value = as_decimal(self.raw[key])
        if value is None or value < minimum:
            self.fail(f"must be a number at least {minimum} (an integer or a decimal string like \"1.5\"), "
                      f"got {self.raw[key]!r}", key)
            return None
        return self._setting(key, value)

    # --- reads for MeshRateLimit, MeshFaultInjection and MeshTrafficPermission ---------------------------------

    def required(self, key: str) -> bool:
        """Whether `key` is set; when it is not, a violation "`key` is required" at this section."""
        if self.has(key):
            return True
        self.check.fail(self.path, f"`{key}` is required")
        return False

    def boolean(self, key: str) -> Setting[bool] | None:
        """A YAML boolean (`true`/`false`)."""
        value = self.check.field(self.raw, self.path, key, bool)
        return self._setting(key, None if value is None else bool(value))

    def status(self, key: str, allowed: Container[int], wrong: Callable[[int], str]) -> Setting[int] | None:
        """An HTTP status code: an integer in `allowed`; any other integer is a violation with the message `wrong(code)`."""
        value = self.check.field(self.raw, self.path, key, int)
        if value is None:
            return None
        if value not in allowed:
            self.check.fail(self.path + (key,), wrong(value))
            return None
        return self._setting(key, int(value))

    def percentage(self, key: str) -> Setting[Decimal] | None:
        """A percentage from 0 to 100, exactly: an integer, a YAML number or a decimal string (`"0.5"`), as Kuma's
        IntOrString; a YAML float is read from its text (0.1 is 0.1, not its binary approximation)."""
        value = self.check.field(self.raw, self.path, key, (int, str, float))
        if value is None:
            return None
        try:
            percent: Decimal | None = Decimal(str(value).strip())
        except InvalidOperation:
            percent = None
        if percent is None or not percent.is_finite():
            self.check.fail(self.path + (key,), f"must be a number between 0 and 100, got {value!r}")
            return None
        if not 0 <= percent <= 100:
            self.check.fail(self.path + (key,), f"must be between 0 and 100, got {value!r}")
            return None
        return self._setting(key, percent)

    def entries(self, key: str, read: Callable[[ConfReader], C | None], *, not_a_mapping: str,
                at_most: tuple[int, str] | None = None) -> Setting[tuple[C, ...]] | None:
        """A list of mappings, each read by `read` as a section at its index (`key[i]`); None when it is not set.

        An entry that is not a mapping is a violation with the message `not_a_mapping`; one that `read` returns None
        for is left out. `at_most` (count, noun), when given, bounds the length ("at most 16 headers, got 17"). A
        list is one leaf of a merge (set as a whole), so the origins are the list's; its entries' reads have none.
        """
        raw = self.check.field(self.raw, self.path, key, list)
        if raw is None:
            return None
        if at_most is not None and len(raw) > at_most[0]:
            self.check.fail(self.path + (key,), f"at most {at_most[0]} {at_most[1]}, got {len(raw)}")
        out: list[C] = []
        for i, entry in enumerate(raw):
            if not isinstance(entry, dict):
                self.check.fail(self.path + (key, i), not_a_mapping)
                continue
            value = read(ConfReader(entry, self.path + (key, i), self.check, self.merged, f"{self.prefix}{key}.{i}."))
            if value is not None:
                out.append(value)
        return Setting(tuple(out), self.origins(key))

    # --- reads for MeshCircuitBreaker and MeshHealthCheck ---

    def decimal(self, key: str, *, minimum: Decimal, maximum: Decimal,
                exclusive: bool = False) -> Setting[Decimal] | None:
        """A number, or a decimal written as a string (Kuma's int-or-string), within bounds (`exclusive`: above the
        minimum)."""
        value = self.check.field(self.raw, self.path, key, (int, float, str))
        if value is None:
            return None
        try:
            number = Decimal(str(value).strip())
        except InvalidOperation:
            number = Decimal("NaN")
        if not number.is_finite():
            self.fail(f"must be a number, got {value!r}", key)
            return None
        if number < minimum or (exclusive and number == minimum) or number > maximum:
            low = f"greater than {minimum}" if exclusive else f"at least {minimum}"
            self.fail(f"must be {low} and at most {maximum}, got {value!r}", key)
            return None
        return self._setting(key, number)

    def section_setting(self, key: str, read: Callable[[ConfReader], C]) -> Setting[C] | None:
        """A nested mapping read by `read`, as a Setting whose origins are the policies that set anything in it (an
        empty mapping included): for what a section decides as a whole."""
        section = self.section(key, read)
        return None if section is None else Setting(section, self.origins(key))

    def percent(self, key: str) -> Setting[Decimal] | None:
        """A percentage, 0 to 100: a number or a decimal string (`"99.9"`), with one message for any wrong value
        (MeshCircuitBreaker's and MeshHealthCheck's wording; `percentage` keeps the inbound kinds' two messages)."""
        if self.raw.get(key) is None:
            return None
        value = as_decimal(self.raw[key])
        if value is None or not 0 <= value <= 100:
            self.fail(f"must be a percentage between 0 and 100 (a number or a decimal string like \"99.9\"), got "
                      f"{self.raw[key]!r}", key)
            return None
        return self._setting(key, value)

    def list_of(self, key: str, read: Callable[[Any, ConfReader], T | None]) -> Setting[tuple[T, ...]] | None:
        """A list, each element read by `read(element, at)`, where `at` reads and fails at the element's path (its
        fields, when the element is a mapping); elements read as None are left out. A list is one value of a merged
        conf (a later policy's replaces it), so its origins are the list's. None when it is not set (or, validating,
        not a list)."""
        raw = self.check.field(self.raw, self.path, key, list)
        if raw is None:
            return None
        read_elements = (read(element, ConfReader(element if isinstance(element, dict) else {}, self.path + (key, i),
                                                  self.check, self.merged, f"{self.prefix}{key}.{i}."))
                         for i, element in enumerate(raw))
        return Setting(tuple(value for value in read_elements if value is not None), self.origins(key))


    # --- added for MeshHTTPRoute ---

    def port(self, key: str) -> Setting[int] | None:
        """A TCP port, 1 to 65535 ("must be a port between 1 and 65535"); None when it is not set."""
        return self._setting(key, self.check.port(self.raw, self.path, key, required=False))

    # --- a typed union (MeshAccessLog, MeshTrace, MeshMetric backends and formats) ---

    def typed_block(self, blocks: dict[str, str], noun: str, *, also: tuple[str, ...] = (),
                    written_here: bool = True) -> str | None:
        """Which block of a typed union this mapping uses: the one its `type` names (`blocks` maps each type to its
        block's key), or, with no `type`, the only block written. Reports every field but `type`, the blocks and
        `also`; an unknown type; no block or several; every block that does not go with the type; and
        (`written_here`) the chosen block missing ("must be defined"). None when no block can be chosen (or it is
        missing)."""
        self.unknown(("type",) + tuple(blocks.values()) + also)
        written = [b for b in blocks.values() if b in self.raw]
        kind = self.choice("type", tuple(blocks))
        if kind is None and isinstance(self.raw.get("type"), str):
            return None  # an unknown type (reported); one that is not a string is reported and read from the block
        block = blocks[kind.value] if kind is not None else (written[0] if len(written) == 1 else None)
        if block is None:
            keys = [f"`{b}`" for b in blocks.values()]
            got = f", got {len(written)}" if written else ""
            self.fail(f"must have exactly one of {', '.join(keys[:-1])} or {keys[-1]}{got}")
            return None
        for other in written:
            if other != block:
                self.fail(f"`{other}` is not used by a {noun} of type {kind.value if kind else None}", other)
        if written_here and block not in self.raw:
            self.fail("must be defined", block)
            return None
        return block


class _Strict(FieldCheck):
    """The check of a merged conf: its items were validated, so any violation is a bug, raised at once."""

    def __init__(self) -> None:
        self.out = []

    def fail(self, path: PathKey, message: str) -> None:
        raise MergedConfError(f"merged conf at {'.'.join(map(str, path))}: {message}")
