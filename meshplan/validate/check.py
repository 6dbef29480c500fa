"""Typed access to a resource's fields that records a violation, with its path, for every wrong or missing one."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

from meshplan.errors import Violation
from meshplan.load.resources import PathKey, RawResource
from meshplan.validate.addresses import address_problem

T = TypeVar("T")

class FieldCheck:
    """Typed access to a resource's fields that records a violation for every wrong or missing one."""

    def __init__(self, res: RawResource, out: list[Violation]) -> None:
        self.res = res
        self.out = out

    def fail(self, path: PathKey, message: str) -> None:
        self.out.append(self.res.violation(path, message))

    def field(
        self,
        obj: dict[str, Any],
        path: PathKey,
        key: str,
        kind: type[T] | tuple[type, ...],
        *,
        required: bool = False,
        default: Any = None,
    ) -> Any:
        if key not in obj or obj[key] is None:
            if required:
                self.fail(path, f"`{key}` is required")
            return default
        value = obj[key]
        types = kind if isinstance(kind, tuple) else (kind,)
        # YAML booleans are ints to Python; never accept one where a number is asked for.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            self.fail(path + (key,), f"must be {_describe(types)}, got {_describe((type(value),))}")
            return default
        return value

    def port(self, obj: dict[str, Any], path: PathKey, key: str, *, required: bool = True, default: int | None = None) -> int | None:
        value = self.field(obj, path, key, int, required=required, default=default)
        if value is not None and not 1 <= value <= 65535:
            self.fail(path + (key,), f"must be a port between 1 and 65535, got {value}")
            return None
        return value  # type: ignore[no-any-return]

    def address(self, obj: dict[str, Any], path: PathKey, key: str, *, required: bool = True, default: str | None = None) -> str | None:
        value = self.field(obj, path, key, str, required=required, default=default)
        if value is None:
            return None
        problem = address_problem(value)
        if problem is not None:
            self.fail(path + (key,), problem)
            return None
        return value  # type: ignore[no-any-return]

    def tags(self, obj: dict[str, Any], path: PathKey, key: str, *, required: bool = False) -> dict[str, str]:
        value = self.field(obj, path, key, dict, required=required, default={})
        good: dict[str, str] = {}
        for tag, tag_value in value.items():
            if not isinstance(tag_value, str):
                self.fail(path + (key, tag), f"tag values must be strings, got {_describe((type(tag_value),))}")
            else:
                good[tag] = tag_value
        return good

    def unknown(self, obj: dict[str, Any], path: PathKey, known: tuple[str, ...], unsupported: tuple[str, ...] = ()) -> None:
        """Every key that is not `known`: `unsupported` ones are Kuma's, which meshplan would otherwise ignore."""
        for key in obj:
            if key in unsupported:
                self.fail(path + (key,), "not supported by meshplan (it would be ignored): remove it")
            elif key not in known:
                self.fail(path + (key,), f"unknown field (expected one of: {', '.join(known)})")

    def duration(self, obj: dict[str, Any], path: PathKey, key: str, *, required: bool = False,
                 positive: bool = False) -> str | None:
        """A Go-style duration (`5s`, `1m30s`, `250ms`) as Envoy's proto-JSON Duration (`90s`, `0.250s`)."""
        value = self.field(obj, path, key, str, required=required)
        if value is None:
            return None
        if value.strip().startswith("-"):
            self.fail(path + (key,), f"must not be negative, got {value!r}")
            return None
        seconds = parse_duration(value)
        if seconds is None:
            self.fail(path + (key,), f"must be a duration like 500ms, 5s or 1m30s, got {value!r}")
            return None
        if positive and seconds == 0:
            self.fail(path + (key,), f"must be greater than 0, got {value!r}")
            return None
        if seconds > MAX_DURATION_SECONDS:
            self.fail(path + (key,), f"must be at most {MAX_DURATION_SECONDS}s, got {value!r}")
            return None
        return duration_json(seconds)

    def integer(self, obj: dict[str, Any], path: PathKey, key: str, *, minimum: int = 0, maximum: int | None = None,
                required: bool = False) -> int | None:
        value = self.field(obj, path, key, int, required=required)
        if value is None:
            return None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
            self.fail(path + (key,), f"must be {bound}, got {value}")
            return None
        return int(value)

    def choice(self, obj: dict[str, Any], path: PathKey, key: str, choices: tuple[str, ...], *, required: bool = False) -> str | None:
        value = self.field(obj, path, key, str, required=required)
        if value is not None and value not in choices:
            self.fail(path + (key,), f"must be one of {', '.join(choices)}, got {value!r}")
            return None
        return None if value is None else str(value)


def _describe(types: tuple[type, ...]) -> str:
    names = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
             float: "a number", type(None): "nothing"}
    return " or ".join(names.get(t, t.__name__) for t in types)


MAX_DURATION_SECONDS = Decimal(315_576_000_000)  # the most a google.protobuf.Duration holds
_UNITS = {"ns": Decimal("1e-9"), "us": Decimal("1e-6"), "µs": Decimal("1e-6"), "ms": Decimal("0.001"), "s": Decimal(1),
          "m": Decimal(60), "h": Decimal(3600)}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")


def parse_duration(text: str) -> Decimal | None:
    """Seconds in a Go-style duration, or None if it is not one (negative durations are not accepted)."""
    text = text.strip()
    if text == "0":
        return Decimal(0)
    pos, total = 0, Decimal(0)
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            return None
        try:
            total += Decimal(m.group(1)) * _UNITS[m.group(2)]
        except InvalidOperation:
            return None
        pos = m.end()
    return total if pos == len(text) and pos > 0 else None


def as_decimal(value: Any) -> Decimal | None:
    """An int, a float or a decimal string (Kuma's IntOrString numbers) as a finite Decimal; None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return Decimal(str(value))
    if isinstance(value, str):
        try:
            parsed = Decimal(value.strip())
        except InvalidOperation:
            return None
        return parsed if parsed.is_finite() else None
    return None


def proto_duration(text: str) -> str:
    """A duration `FieldCheck.duration` already accepted, as proto-JSON."""
    seconds = parse_duration(text)
    assert seconds is not None, f"unvalidated duration {text!r}"
    return duration_json(seconds)


def duration_json(seconds: Decimal) -> str:
    """Proto-JSON form of a Duration: whole seconds as `5s`, fractions with 3, 6 or 9 digits as Envoy prints them."""
    if seconds == seconds.to_integral_value():
        return f"{int(seconds)}s"
    for digits in (3, 6, 9):
        scaled = seconds * (10**digits)
        if scaled == scaled.to_integral_value():
            return f"{seconds:.{digits}f}s"
    return f"{seconds:.9f}s"
