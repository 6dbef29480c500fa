"""No field of any kind is silently ignored.

Every field path that Kuma v2.14.3's schemas give a kind's `spec` (tests/data/kuma_fields.yaml, written by
scripts/kuma_fields.py from Kuma's own rest.yaml files) is set, one at a time, in an otherwise valid resource of that
kind from the test corpus — with every value its enum allows, or one plausible value of its type. Validation must
then either read the field (a typed read: the values render uses come from the same reads) or refuse it with a
violation at the field, below it, or at a section above it that meshplan refuses whole. A field that is neither is
accepted and ignored: the test lists every such one.

A Kuma field that is refused must be refused for what it is: "unknown field" is what a typo gets, so a field Kuma has
gets a message that says meshplan does not support it (and why, where the kind's module knows).
"""

from __future__ import annotations

import ast
import copy
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshplan.errors import Violation
from meshplan.load.resources import PathKey, format_path, load_text
from meshplan.load.yaml_documents import Budget
from meshplan.policies.conf import ConfReader
from meshplan.validate import resources as validate_module
from meshplan.validate.check import FieldCheck
from tests.fixture_corpus import resources

FIELDS = Path(__file__).parent / "data" / "kuma_fields.yaml"
STEP = re.compile(r"[^.\[\]]+|\[\]")
DURATION = re.compile(r"(?i)(timeout|interval|duration|time)$")

# Each kind must have at least this many of its fields read (not refused): the walk reaches the kind's own fields.
MIN_READ = 5


@dataclass(frozen=True)
class Field:
    kind: str
    path: str  # `spec.to[].default.http.requestTimeout`
    type: str
    enum: tuple[Any, ...]
    whole: bool  # a mapping whose keys are data (labels, tags) or free (an Envoy resource): walked as one value

    @property
    def steps(self) -> list[str]:
        return STEP.findall(self.path)

    @property
    def target(self) -> str:
        return self.path.replace("[]", "[0]")

    def samples(self) -> list[Any]:
        if self.enum:
            return list(self.enum)
        name = self.path.rsplit(".", 1)[-1]
        if self.whole:
            return [{"k": "v"}]
        return {
            "string": ["1s" if DURATION.search(name) else "x"],
            "integer": [1], "number": [1], "integer|string": [1], "boolean": [True],
        }.get(self.type, ["x"])


def _fields() -> list[Field]:
    data = yaml.safe_load(FIELDS.read_text())
    found = []
    for kind, entries in data["kinds"].items():
        for entry in entries:
            whole = bool(entry.get("map") or entry.get("free"))
            if entry["path"] == "spec" or (entry["type"] in ("object", "array") and not whole):
                continue  # a section: its leaves are walked
            found.append(Field(kind, entry["path"], entry["type"], tuple(entry.get("enum", ())), whole))
    return found


def _violations(document: dict[str, Any]) -> list[Violation]:
    raws, violations = load_text(yaml.safe_dump(document, sort_keys=False), "resource.yaml", Budget())
    return violations + validate_module.parse(raws)[1]


def _get(document: Any, steps: list[str]) -> Any:
    for step in steps:
        if step == "[]":
            if not isinstance(document, list) or not document:
                return None
            document = document[0]
        elif isinstance(document, dict) and step in document:
            document = document[step]
        else:
            return None
    return document


def _put(document: Any, steps: list[str], value: Any) -> None:
    """Set the field at `steps` (lists: their first item), making the sections above it as needed."""
    for i, step in enumerate(steps):
        last = i == len(steps) - 1
        empty: Any = [] if not last and steps[i + 1] == "[]" else {}
        if step == "[]":
            if not document:
                document.append(empty)
            if last:
                document[0] = value
                return
            document = document[0]
        elif last:
            document[step] = value
        else:
            if not isinstance(document.get(step), (dict, list)):
                document[step] = empty
            document = document[step]


def _under(path: str, other: str) -> bool:
    """`other` is `path` or below it."""
    return other == path or other.startswith((path + ".", path + "["))


@pytest.fixture(scope="module")
def valid_by_kind() -> dict[str, list[dict[str, Any]]]:
    """Per kind, the corpus's resources that are valid on their own, smallest first."""
    by_kind: dict[str, list[dict[str, Any]]] = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(validate_module, "_check_references", lambda *args: None)
        for _, document in resources():
            if not _violations(document):
                by_kind.setdefault(str(document.get("type") or document.get("kind")), []).append(document)
    for documents in by_kind.values():
        documents.sort(key=lambda d: len(yaml.safe_dump(d)))
    return by_kind


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """The paths validation reads (a typed read through FieldCheck, or a kind's ConfReader); reset per resource."""
    monkeypatch.setattr(validate_module, "_check_references", lambda *args: None)
    seen: set[str] = set()
    original = FieldCheck.field

    def recording(self: FieldCheck, obj: dict[str, Any], path: PathKey, key: str, *args: Any, **kwargs: Any) -> Any:
        if isinstance(obj, dict) and key in obj:
            full = format_path(path + (key,))
            seen.update({full, "spec." + full})  # policy checks see paths from the spec, others from the top
        return original(self, obj, path, key, *args, **kwargs)

    def recording_setting(self: ConfReader, key: str, value: Any) -> Any:
        if value is not None:  # a kind's typed read that converts the value itself (a percentage, a number)
            full = format_path(self.path + (key,))
            seen.update({full, "spec." + full})
        return original_setting(self, key, value)

    original_setting = ConfReader._setting
    monkeypatch.setattr(FieldCheck, "field", recording)
    monkeypatch.setattr(ConfReader, "_setting", recording_setting)
    return seen


def _walk(fields: list[Field], valid_by_kind: dict[str, list[dict[str, Any]]],
          reads: set[str]) -> Iterator[tuple[Field, Any, str]]:
    """Each field with each sample value, and what validation did with it: read, refused, unknown or ignored."""
    for field in fields:
        documents = valid_by_kind.get(field.kind)
        assert documents, f"the test corpus has no valid {field.kind}: add one (tests/testdata or a policy test)"
        base = next((d for d in documents if _get(d, field.steps[:-1]) is not None), documents[0])
        for value in field.samples():
            document = copy.deepcopy(base)
            _put(document, field.steps, value)
            reads.clear()
            violations = _violations(document)
            target = field.target
            at = [v for v in violations if v.path not in ("", "spec") and (_under(v.path, target) or _under(target, v.path))]
            list_read = field.path.endswith("[]") and target.removesuffix("[0]") in reads  # a list of scalars
            if at:
                unknown = [v for v in at if v.message.startswith("unknown field")]
                yield field, value, "unknown" if unknown and len(unknown) == len(at) else "refused"
            elif target in reads or list_read:
                yield field, value, "read"
            else:
                yield field, value, "ignored"


def test_every_kuma_field_is_read_or_refused(valid_by_kind: dict[str, list[dict[str, Any]]], reads: set[str]) -> None:
    fields = _fields()
    outcomes: dict[str, list[str]] = {"read": [], "refused": [], "unknown": [], "ignored": []}
    read_per_kind: Counter[str] = Counter()
    for field, value, outcome in _walk(fields, valid_by_kind, reads):
        outcomes[outcome].append(f"{field.kind} {field.target} = {value!r}")
        read_per_kind[field.kind] += outcome == "read"
    assert outcomes["ignored"] == [], "accepted and ignored"
    assert outcomes["unknown"] == [], "Kuma's fields refused as if they were typos: " + "; ".join(outcomes["unknown"])
    assert {kind for kind in {f.kind for f in fields} if read_per_kind[kind] < MIN_READ} == set(), read_per_kind
    assert len(outcomes["read"]) > 300 and len(outcomes["refused"]) > 100, {k: len(v) for k, v in outcomes.items()}


def test_the_walk_finds_a_field_accepted_and_not_read(valid_by_kind: dict[str, list[dict[str, Any]]],
                                                      reads: set[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The walk can fail: a key that the unknown-field check lets through and nothing reads is reported."""
    original = FieldCheck.unknown

    def lenient(self: FieldCheck, obj: dict[str, Any], path: PathKey, known: tuple[str, ...],
                unsupported: tuple[str, ...] = ()) -> None:
        original(self, {k: v for k, v in obj.items() if k != "zzIgnored"}, path, known, unsupported)

    monkeypatch.setattr(FieldCheck, "unknown", lenient)
    fields = [Field("MeshTimeout", "spec.to[].default.zzIgnored", "string", (), False),
              Field("MeshTimeout", "spec.to[].default.idleTimeout", "string", (), False)]
    assert [outcome for _, _, outcome in _walk(fields, valid_by_kind, reads)] == ["ignored", "read"]


# Conf fields that are read and deliberately change nothing in Envoy, with why (docs/policies.md says so too).
MEANINGLESS_HERE = {
    "load_balancing.Conf.locality_disabled": "meshplan renders one zone, where locality awareness changes nothing",
}


def test_every_field_of_every_typed_conf_is_used() -> None:
    """The walk shows each field read into its kind's typed conf; each field of the conf is then used somewhere
    beyond its own declaration, in its kind's package or the kinds' shared modules (the Envoy side, or a method that
    writes Envoy's form) — a parsed value that nothing reads would be ignored all the same."""
    policies = Path(__file__).resolve().parents[1] / "meshplan" / "policies"
    shared = "\n".join(p.read_text() for p in sorted(policies.glob("*.py")))  # base.py, conf.py, backend_refs.py, ...
    unused, declared = [], set()
    for api in sorted(policies.glob("*/api.py")):
        source = shared + "\n".join(p.read_text() for p in sorted(api.parent.glob("*.py")))  # the kind's own package
        for node in ast.parse(api.read_text()).body:
            if isinstance(node, ast.ClassDef) and any("dataclass" in ast.unparse(d) for d in node.decorator_list):
                for item in node.body:
                    if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                        name = f"{api.parent.name}.{node.name}.{item.target.id}"
                        declared.add(name)
                        if not re.search(rf"\.{item.target.id}\b", source) and name not in MEANINGLESS_HERE:
                            unused.append(name)
    assert unused == []
    assert declared >= MEANINGLESS_HERE.keys() and len(declared) > 200
