"""Every resource the examples and the tests write as valid: examples/demo, the demo in Kubernetes form, the golden
cases' inputs (tests/testdata/*.input), and each YAML
text the test modules hold (their meshes, policies and the good specs of every policy kind's validation table).

The unknown-field test injects a key at every mapping of each; the loader fuzz test starts from them.
"""

from __future__ import annotations

import importlib
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).parent.parent
DIRECTORIES = [ROOT / "examples" / "demo", ROOT / "tests" / "data" / "demo-k8s",
               *sorted(p for p in (ROOT / "tests" / "testdata").glob("*.input") if not p.is_symlink())]  # golden inputs

# Modules whose module-level YAML texts are resources (whole meshes, policies, routes).
MODULES = [
    "tests.test_validate", "tests.policy_tables",
    *(f"tests.test_policy_{kind}" for kind in (
        "access_log", "circuit_breaker", "fault_injection", "health_check", "http_route", "load_balancing",
        "rate_limit", "retry", "tcp_route", "timeout", "traffic_permission")),
]


def _good_specs() -> dict[str, Callable[[Any], list[str]]]:
    """Per module, how its table of good specs (a `default` body each) becomes whole policy files."""
    from tests.policy_tables import policy_file

    def tables(module: Any) -> list[str]:
        return [module.policy(body) for body in module.GOOD.values()]

    return {
        "tests.test_policy_access_log": lambda m: [
            text for body in m.GOOD.values()
            for text in (m.policy(body), m.policy(body, name="inbound", section="from", ref=m.FROM_MESH))],
        "tests.test_policy_circuit_breaker": lambda m: [policy_file(m.KIND, body) for _, body in m.GOOD],
        "tests.test_policy_retry": lambda m: [policy_file(m.KIND, body) for _, body in m.GOOD],
        "tests.test_policy_timeout": lambda m: [policy_file(m.KIND, body, section) for _, section, body in m.GOOD],
        "tests.test_policy_fault_injection": lambda m: [m.policy(body) for body in m.GOOD.values()],
        "tests.test_policy_rate_limit": lambda m: [m.policy(body) for body in m.GOOD.values()],
        "tests.test_policy_traffic_permission": lambda m: [m.policy(body) for body in m.GOOD.values()],
        "tests.test_policy_health_check": tables,
        "tests.test_policy_load_balancing": tables,
        "tests.test_policy_http_route": lambda m: [text for _, files in m.GOOD for text in files.values()],
        "tests.test_policy_tcp_route": lambda m: [text for _, files in m.GOOD for text in files.values()],
    }


def _texts(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _texts(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _texts(item)


def _resources(text: str) -> list[dict[str, Any]]:
    try:
        documents = list(yaml.safe_load_all(textwrap.dedent(text)))
    except yaml.YAMLError:
        return []
    from meshplan.policies.registry import KINDS
    from meshplan.validate.resources import INFRA_KINDS

    known = set(INFRA_KINDS) | set(KINDS)
    return [d for d in documents if isinstance(d, dict) and ("type" in d or "apiVersion" in d)
            and str(d.get("type" if "type" in d else "kind")) in known]


def resources() -> list[tuple[str, dict[str, Any]]]:
    """(where it comes from, one resource as plain data), each distinct resource once."""
    found: list[tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()

    def add(where: str, text: str) -> None:
        for document in _resources(text):
            key = yaml.safe_dump(document, sort_keys=True)
            if key not in seen:
                seen.add(key)
                found.append((where, document))

    for directory in DIRECTORIES:
        for path in sorted(directory.rglob("*.y*ml")):
            add(str(path.relative_to(ROOT)), path.read_text())
    good = _good_specs()
    for name in MODULES:
        module = importlib.import_module(name)
        for attribute, value in sorted(vars(module).items()):
            if attribute.isupper() and not attribute.startswith(("BAD", "CASES")):  # tables of invalid input
                for text in _texts(value):
                    add(f"{name}.{attribute}", text)
        if name in good:
            for text in good[name](module):
                add(f"{name}.GOOD", text)
    return found
