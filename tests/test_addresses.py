"""Proxies use specific addresses, by one rule in validate, the sandbox and apply (addresses.address_problem): not
0.0.0.0 or ::, not multicast, not scoped. And a proxy at an IPv6 address is planned like any other: its admin URL
puts the address in brackets."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import respx
from typer.testing import CliRunner

from meshplan.cli import app
from meshplan.model import ProxyConfig
from meshplan.observe import live
from meshplan.plan.workflow import Selection, _select
from meshplan.render.proxies import render_all
from meshplan.sandbox import loopback
from meshplan.validate.addresses import address_problem, http_url
from meshplan.validate.resources import load_and_parse
from tests.test_live import dump, serve
from tests.test_names import renamed, validate
from tests.test_validate import write

WEB_ADDRESSES = [
    ("address: 127.0.5.1", "networking.address", 5),
    ("servicePort: 18080", "networking.inbound[0].serviceAddress", 9),  # added on the line after the anchor
    ("servicePort: 18080", "networking.inbound[0].address", 9),
    ("port: 10001", "networking.outbound[0].address", 14),
]


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "::ffff:0.0.0.0", "224.0.0.1", "ff02::1", "fe80::1%eth0"])
@pytest.mark.parametrize("anchor, path, line", WEB_ADDRESSES, ids=[p for _, p, _ in WEB_ADDRESSES])
def test_a_dataplane_address_must_be_a_specific_one(tmp_path: Path, address: str, anchor: str, path: str,
                                                     line: int) -> None:
    field = path.rsplit(".", 1)[1]
    new = f"{field}: '{address}'" if anchor.startswith("address") else f"{anchor}\n              {field}: '{address}'"
    write(tmp_path, renamed("web.yaml", anchor, new))
    code, stderr = validate(tmp_path)
    assert code == 1
    assert f"{tmp_path}/web.yaml:{line}: {path}: " in stderr, stderr
    assert address_problem(address) in stderr  # type: ignore[operator]


@pytest.mark.parametrize("file, old, new, expected", [
    ("egress.yaml", "address: 127.0.5.10", "address: 0.0.0.0", "egress.yaml:4: networking.address: 0.0.0.0 is the unspecified"),
    ("external.yaml", "address: 127.0.6.1", "address: '::'", "external.yaml:9: spec.endpoints[0].address: :: is the unspecified"),
    ("external.yaml", "address: 127.0.6.1", "address: 'not a host'",
     "external.yaml:9: spec.endpoints[0].address: must be an IP address or a host name, got 'not a host'"),
], ids=["egress", "external IP", "external host name"])
def test_egress_and_external_addresses(tmp_path: Path, file: str, old: str, new: str, expected: str) -> None:
    write(tmp_path, renamed(file, old, new))
    code, stderr = validate(tmp_path)
    assert code == 1
    assert f"{tmp_path}/{expected}" in stderr, stderr


def test_an_external_host_name_is_accepted(tmp_path: Path) -> None:
    write(tmp_path, renamed("external.yaml", "address: 127.0.6.1", "address: httpbin.org"))
    assert validate(tmp_path)[0] == 0


def test_apply_refuses_an_unspecified_address_before_anything_is_written(tmp_path: Path) -> None:
    desired, state = tmp_path / "desired", tmp_path / "state"
    desired.mkdir()
    write(desired, renamed("web.yaml", "address: 127.0.5.1", "address: 0.0.0.0"))
    result = CliRunner().invoke(app, ["apply", str(desired), "--auto-approve", "--state", str(state)])
    assert result.exit_code == 1
    assert "web.yaml:5: networking.address: 0.0.0.0 is the unspecified address" in result.stderr, result.stderr
    assert not state.exists() or sorted(p.name for p in state.iterdir()) == []  # apply took its lock, and let go


def test_the_sandbox_gives_the_same_answer_as_validate() -> None:
    proxy = ProxyConfig("web", "sidecar", "default", "0.0.0.0", 9901, (), ())
    problems: list[str] = []
    loopback._check_sockets([proxy], [], problems)
    assert problems == [f"admin of proxy web: {address_problem('0.0.0.0')}"]


# --- IPv6 -------------------------------------------------------------------------------------------------------


def test_admin_urls_put_an_ipv6_address_in_brackets() -> None:
    assert http_url("::1", 9901) == "http://[::1]:9901"
    assert http_url("127.0.0.1", 9901) == "http://127.0.0.1:9901"
    assert ProxyConfig("web", "sidecar", "default", "fd00::1", 9901, (), ()).admin_url == "http://[fd00::1]:9901"
    httpx.URL(http_url("fd00::1", 9901))  # a URL httpx accepts


IPV6_MESH = {
    "mesh.yaml": "type: Mesh\nname: default\n",
    "web.yaml": """
        type: Dataplane
        name: web
        networking:
          address: "fd00::1"
          admin: {port: 19901}
          inbound:
            - {port: 8080, serviceAddress: "::1", servicePort: 18080, tags: {kuma.io/service: web, kuma.io/protocol: http}}
          outbound:
            - {address: "::1", port: 10001, tags: {kuma.io/service: backend}}
        """,
    "backend.yaml": """
        type: Dataplane
        name: backend
        networking:
          address: "fd00::2"
          inbound:
            - {port: 8080, serviceAddress: "fd00::2", servicePort: 18080, tags: {kuma.io/service: backend}}
        """,
    "egress.yaml": None,
    "external.yaml": None,
}


def test_a_mesh_at_ipv6_addresses_is_planned(tmp_path: Path) -> None:
    desired = tmp_path / "desired"
    desired.mkdir()
    write(desired, IPV6_MESH)
    loaded = load_and_parse(desired)
    assert _select(loaded, Selection()) == [("backend", "http://[fd00::2]:9901"), ("web", "http://[fd00::1]:19901")]
    proxies = render_all(loaded)
    with respx.mock(assert_all_called=False) as router:
        for proxy in proxies:
            answers = dump(proxy.name, clusters=list(proxy.clusters))
            answers[live.LISTENERS_PATH] = {"configs": [{
                "@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
                "dynamic_listeners": [{"name": x["name"], "active_state": {"version_info": "v1", "listener": x}}
                                      for x in proxy.listeners],
            }]}
            serve(router, proxy.admin_url, answers)
        result = CliRunner().invoke(app, ["plan", str(desired), "--state", str(tmp_path / "state"), "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert {p["name"]: p["status"] for p in document["proxies"]} == {"backend": "ok", "web": "ok"}


def test_two_spellings_of_one_ipv6_address_are_one_socket(tmp_path: Path) -> None:
    files = dict(IPV6_MESH)
    files["web.yaml"] = IPV6_MESH["web.yaml"].replace('{address: "::1", port: 10001', '{address: "0:0::1", port: 18080')  # type: ignore[union-attr]
    write(tmp_path, files)
    code, stderr = validate(tmp_path)
    assert code == 1
    assert "web.yaml:9: networking.outbound[0].port: port 18080 on 0:0::1 is used twice on this proxy: already by " \
           "the application of inbound[0]" in stderr, stderr
