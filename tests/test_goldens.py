"""Golden renders: each case is a desired directory, tests/testdata/<case>.input/, rendered and shown as JSON, compared
byte for byte with tests/testdata/<case>.golden.json (`pytest --update-goldens` rewrites them after an intended change).

What each case shows of the render (a view) is below: the input is copied to `<tmp>/desired` first, and every view
writes the desired directory's path the way its golden file spells it, so the goldens do not depend on where the
tests run.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from meshplan.load.resources import format_path
from meshplan.model import ProxyConfig
from meshplan.render.proxies import render_all
from meshplan.validate.resources import load_and_parse
from tests.golden import TESTDATA, check_golden
from tests.policy_render import touched

Proxies = dict[str, ProxyConfig]
View = Callable[[Proxies, Path], str]


def dotted(path: tuple[str | int, ...]) -> str:
    return ".".join(map(str, path))


def stepped(path: tuple[str | int, ...]) -> str:
    return "".join(f"[{s}]" if isinstance(s, int) else f".{s}" for s in path).lstrip(".")


def origins(proxy: ProxyConfig, kind: str, path: Callable[[tuple[str | int, ...]], str] = dotted) -> dict[str, Any]:
    return {name: {path(k): who for k, who in fields.items()} for name, fields in proxy.origins.get(kind, {}).items()}


def what_policies_touched(proxies: Proxies, root: Path) -> str:
    """Per proxy, the resources a policy changed, with the origin of every field it set (`<desired>/file:line`)."""
    return json.dumps({name: touched(p, root) for name, p in proxies.items()}, indent=2) + "\n"


def inbound_side(*names: str) -> View:
    """The inbound listeners of some proxies and the origins recorded in them (file names inside the directory)."""

    def view(proxies: Proxies, root: Path) -> str:
        out: dict[str, object] = {}
        for proxy in proxies.values():
            if proxy.name not in names:
                continue
            listeners = [listener for listener in proxy.listeners if listener.get("traffic_direction") == "INBOUND"]
            wanted = {listener["name"] for listener in listeners}
            found = {
                name: {format_path(steps): [o.replace(f"{root}/", "") for o in who] for steps, who in paths.items()}
                for name, paths in proxy.origins.get("listener", {}).items()
                if name in wanted
            }
            out[proxy.name] = {"listeners": listeners, "origins": found}
        return json.dumps(out, indent=2) + "\n"

    return view


def web_with_origins(proxies: Proxies, root: Path) -> str:
    """web's clusters and listeners, and the origins of every kind (`<tmp>/desired/file:line`)."""
    web = proxies["web"]
    every = {kind: origins(web, kind) for kind in web.origins}
    text = json.dumps({"clusters": web.clusters, "listeners": web.listeners, "origins": every}, indent=2)
    return text.replace(str(Path.cwd()), "<root>").replace(str(root.parent), "<tmp>") + "\n"


def clusters_of_web_and_egress(proxies: Proxies, root: Path) -> str:
    """web's and the egress's clusters without endpoints and TLS, and their origins (file names inside)."""
    out = {
        name: {
            "clusters": [{k: v for k, v in c.items() if k not in ("load_assignment", "transport_socket")} for c in proxy.clusters],
            "origins": origins(proxy, "cluster"),
        }
        for name, proxy in sorted(proxies.items())
        if name in ("web", "egress")
    }
    return json.dumps(out, indent=2).replace(f"{root}/", "") + "\n"


def listeners_of_web(proxies: Proxies, root: Path) -> str:
    web = proxies["web"]
    text = json.dumps({"listeners": list(web.listeners), "origins": origins(web, "listener")}, indent=2)
    return text.replace(f"{root}/", "") + "\n"


def every_proxy_with_origins(proxies: Proxies, root: Path) -> str:
    out = {
        name: {
            "clusters": list(p.clusters),
            "listeners": list(p.listeners),
            "origins": {kind: origins(p, kind, stepped) for kind in p.origins},
        }
        for name, p in sorted(proxies.items())
    }
    return json.dumps(out, indent=2).replace(f"{root}/", "") + "\n"


def resources_of(proxy: str) -> View:
    def view(proxies: Proxies, root: Path) -> str:
        config = proxies[proxy]
        return json.dumps({"clusters": config.clusters, "listeners": config.listeners}, indent=2) + "\n"

    return view


def clusters_of(proxy: str) -> View:
    def view(proxies: Proxies, root: Path) -> str:
        return json.dumps(proxies[proxy].clusters, indent=2) + "\n"

    return view


CASES: dict[str, View] = {
    "access_log": what_policies_touched,
    "circuit_breaker": clusters_of_web_and_egress,
    "defaults": every_proxy_with_origins,
    "defaults-skip-retry": every_proxy_with_origins,
    "demo-backend-1": resources_of("backend-1"),
    "demo-backend-2": resources_of("backend-2"),
    "demo-egress": resources_of("egress"),
    "demo-web": resources_of("web"),
    "external_tls": clusters_of("egress"),
    "fault_injection": inbound_side("backend", "reports", "ledger", "egress"),
    "health_check": what_policies_touched,
    "http_route-every-field": web_with_origins,
    "http_route-external": web_with_origins,
    "http_route-merged": web_with_origins,
    "load_balancing": what_policies_touched,
    "metric": what_policies_touched,
    "proxy_patch": what_policies_touched,
    "rate_limit": inbound_side("backend", "ledger", "egress"),
    "route_targets": listeners_of_web,
    "rules": inbound_side("orders-1"),
    "retry": listeners_of_web,
    "tcp_route": web_with_origins,
    "timeout": every_proxy_with_origins,
    "trace": what_policies_touched,
    "traffic_permission": inbound_side("backend", "reports", "ledger", "egress"),
}


def test_every_input_has_a_case_and_a_golden_file() -> None:
    inputs = sorted(p.name.removesuffix(".input") for p in TESTDATA.glob("*.input"))
    goldens = sorted(p.name.removesuffix(".golden.json") for p in TESTDATA.glob("*.golden.json"))
    assert inputs == goldens == sorted(CASES)


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(request: pytest.FixtureRequest, tmp_path: Path, case: str) -> None:
    root = tmp_path / "desired"
    shutil.copytree(TESTDATA / f"{case}.input", root)
    proxies = {p.name: p for p in render_all(load_and_parse(root))}
    check_golden(request, f"{case}.golden.json", CASES[case](proxies, root))
