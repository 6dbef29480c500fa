"""`meshplan inspect`: what one real Envoy runs now, as tables and as raw resources, with nothing secret printed; an
Envoy that cannot be read is an error. The Envoy tests share one sandbox of examples/demo, applied once."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import respx
import yaml
from rich.console import Console
from typer.testing import CliRunner

from meshplan.cli import app
from meshplan.observe import live
from meshplan.observe.inspect import (
    REDACTED,
    Inspection,
    cluster_rows,
    redacted,
    route_rows,
    secret_rows,
)
from meshplan.present.inspect import render_inspection
from meshplan.render.proxies import render_all
from meshplan.sandbox import mesh as sandbox
from meshplan.validate.resources import load_and_parse
from meshplan.xds import pki
from tests.builders import DemoCopy, copy_demo

runner = CliRunner(env={"COLUMNS": "250", "NO_COLOR": "1"})


def meshplan(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def applied(module_sandbox_state: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoCopy]:
    """examples/demo on its own addresses: every Envoy started empty from its bootstrap, then `meshplan apply`."""
    demo = copy_demo(tmp_path_factory.mktemp("inspect") / "demo")
    desired = load_and_parse(demo.path)
    pki.ensure(desired, module_sandbox_state)
    empty = [dataclasses.replace(p, clusters=(), listeners=()) for p in render_all(desired)]
    sandbox.up(desired, empty, module_sandbox_state)
    code, _, err = meshplan("apply", str(demo.path), "--state", str(module_sandbox_state), "--auto-approve")
    assert code == 0, err
    yield demo


def inspect(demo: DemoCopy, *args: str) -> tuple[int, str, str]:
    return meshplan("inspect", str(demo.path), *args)


@pytest.mark.envoy
def test_clusters_show_the_backend_with_its_tls_and_breakers(applied: DemoCopy) -> None:
    code, out, err = inspect(applied, "web", "clusters")
    assert code == 0, err
    backend = next(line for line in out.splitlines() if "│ backend " in line)
    cells = [cell.strip() for cell in backend.split("│")[1:-1]]
    assert cells == ["backend", "STATIC", "2s", "2", "yes", "yes", "mTLS sni=backend.default.mesh"]
    assert "Listeners of web" not in out  # one section asked, one shown


@pytest.mark.envoy
def test_routes_show_each_listeners_route_config(applied: DemoCopy) -> None:
    code, out, err = inspect(applied, "web", "routes")
    assert code == 0, err
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in out.splitlines() if "outbound:backend" in line]
    assert [row[4:7] for row in rows] == [
        ["path /v2", "-> backend:version=v2", "5s"],
        ["prefix /v2/", "-> backend:version=v2", "5s"],
        ["prefix /", "-> backend", "5s"],
    ]
    assert all(row[7].startswith("3x on gateway-error") for row in rows)


@pytest.mark.envoy
def test_secrets_show_certificates_by_name_and_never_a_key(applied: DemoCopy) -> None:
    code, table, err = inspect(applied, "web", "secrets")
    assert code == 0, err
    assert "identity:default" in table and "ca:default" in table
    assert "URI:spiffe://default/web" in table and "CN=web" in table
    code, raw, _ = inspect(applied, "web", "secrets", "-o", "json")
    assert code == 0
    secrets = {s["name"]: s for s in json.loads(raw)["secrets"]}
    assert set(secrets) == {"identity:default", "ca:default"}
    assert secrets["identity:default"]["tls_certificate"]["private_key"] == REDACTED
    chain = base64.b64decode(secrets["identity:default"]["tls_certificate"]["certificate_chain"]["inline_bytes"])
    assert b"BEGIN CERTIFICATE" in chain
    for text in (table, raw, chain.decode()):
        assert "PRIVATE KEY" not in text


@pytest.mark.envoy
def test_json_has_the_names_the_tables_show(applied: DemoCopy) -> None:
    code, tables, err = inspect(applied, "web")
    assert code == 0, err
    code, raw, _ = inspect(applied, "web", "all", "-o", "json")
    assert code == 0
    document = json.loads(raw)
    assert list(document) == ["clusters", "listeners", "routes", "secrets"]
    for section in ("clusters", "listeners", "secrets"):
        names = [resource["name"] for resource in document[section]]
        assert names, section
        assert all(f"│ {name} " in tables for name in names), section
    assert {r["listener"] for r in document["routes"]} == {r["name"] for r in document["listeners"]}
    code, as_yaml, _ = inspect(applied, "web", "all", "-o", "yaml")
    assert code == 0 and yaml.safe_load(as_yaml) == document


@pytest.mark.envoy
def test_admin_overrides_the_address_and_the_proxy_must_be_the_one_named(applied: DemoCopy) -> None:
    web = applied.addr("127.0.1.1") + ":9901"
    code, out, err = inspect(applied, "web", "listeners", "--admin", web)
    assert code == 0, err
    assert "outbound:" in out
    code, _, err = inspect(applied, "backend-1", "listeners", "--admin", web)
    assert code == 1
    assert "wrong proxy: answered by 'web'" in " ".join(err.split())


def test_an_unreachable_proxy_is_an_error(tmp_path: Path) -> None:
    demo = copy_demo(tmp_path / "demo")  # fresh addresses: nothing listens there
    code, out, err = inspect(demo, "web", "--timeout", "1")
    assert code == 1
    assert out == ""
    assert "Error: web: http://" in err and "cannot be inspected: unreachable" in err
    code, _, err = inspect(demo, "nope")
    assert code == 1 and "no proxy named 'nope'" in err
    code, _, err = inspect(demo, "web", "--admin", "nowhere")
    assert code == 1 and "--admin must be HOST:PORT" in err


def test_redaction_reaches_every_depth() -> None:
    cluster = {"name": "c", "transport_socket": {"typed_config": {"common_tls_context": {"tls_certificates": [
        {"certificate_chain": {"inline_string": "cert"}, "private_key": {"inline_string": "-----BEGIN PRIVATE KEY"},
         "pkcs12": {"inline_bytes": "a2V5"}, "password": {"inline_string": "hunter2"}}]}}}}
    cleaned = json.dumps(redacted(cluster))
    assert "PRIVATE KEY" not in cleaned and "a2V5" not in cleaned and "hunter2" not in cleaned
    assert '"inline_string": "cert"' in cleaned


def test_rows_read_any_shape_envoy_may_report() -> None:
    eds = {"name": "e", "type": "EDS", "eds_cluster_config": {}}
    plain = {"name": "p"}  # every default left out, as proto-JSON does
    weighted = {"name": "l", "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager"
                                 ".v3.HttpConnectionManager", "route_config": {"name": "rc", "virtual_hosts": [
                                     {"name": "vh", "domains": ["a", "b"], "routes": [
                                         {"match": {"safe_regex": {"regex": "^/x"}, "headers": [{"name": "h"}]},
                                          "route": {"weighted_clusters": {"clusters": [
                                              {"name": "x", "weight": 90}, {"name": "y", "weight": 10}]}}},
                                         {"match": {"prefix": "/"}, "direct_response": {"status": 403}}]}]}}}]}]}
    secret = {"name": "s", "tls_certificate": {"certificate_chain": {"filename": "/etc/cert.pem"}}}
    inspection = Inspection("p", "http://x", (eds, plain), (weighted,), (secret,))
    assert [(r.type, r.connect_timeout, r.endpoints, r.tls) for r in cluster_rows(inspection)] == [
        ("EDS", "5s", "EDS", "-"), ("STATIC", "5s", "0", "-")]
    assert [(r.match, r.action, r.timeout) for r in route_rows(inspection)] == [
        ("regex ^/x + headers h", "-> x (90), y (10)", "15s"), ("prefix /", "respond 403", "-")]
    (row,) = secret_rows(inspection)
    assert (row.type, row.subject) == ("tls certificate", "file /etc/cert.pem (on the proxy's host)")


def test_tables_escape_what_a_proxy_names() -> None:
    inspection = Inspection("p", "http://x", ({"name": "evil\x1b]0;owned\x07[bold]"},), (), ())
    out = io.StringIO()
    render_inspection(Console(file=out, width=200, force_terminal=False), inspection, ["clusters"])
    assert "\x1b" not in out.getvalue() and "\x07" not in out.getvalue()
    assert "evil\\x1b]0;owned\\x07[bold]" in out.getvalue()


FAKE = "127.0.50.9:9901"  # answered by respx, never by a socket
KEY = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----\n"


def answers(secrets: list[dict[str, object]], padding: int = 0) -> dict[str, object]:
    """What an Envoy named web answers to each masked /config_dump, `padding` bytes more in its clusters."""
    return {
        live.IDENTITY_PATH: {"configs": [{"@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
                                          "bootstrap": {"node": {"id": "web"}}}]},
        live.CLUSTERS_PATH: {"configs": [{"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
                                          "padding": "x" * padding}]},
        live.LISTENERS_PATH: {"configs": [{"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump"}]},
        live.SECRETS_PATH: {"configs": [{"@type": "type.googleapis.com/envoy.admin.v3.SecretsConfigDump",
                                         "dynamic_active_secrets": [{"name": s["name"], "secret": s} for s in secrets]}]},
    }


def inspect_mocked(responses: dict[str, object], *args: str) -> tuple[int, str, str]:
    with respx.mock(assert_all_called=False) as router:
        for path, answer in responses.items():
            router.get(f"http://{FAKE}/config_dump", params={"mask": path.split("mask=", 1)[1]}).mock(
                return_value=httpx.Response(200, json=answer))
        return meshplan("inspect", str(Path(__file__).parent.parent / "examples" / "demo"), "web", "--admin", FAKE,
                        *args)


def test_a_key_envoy_did_not_redact_is_never_printed() -> None:
    """An Envoy that sends key material after all (an old one, or something posing as one): redacted here."""
    secrets = [{"name": "id", "tls_certificate": {"private_key": {"inline_string": KEY},
                                                   "password": {"inline_string": "hunter2"}}},
               {"name": "tickets", "session_ticket_keys": {"keys": [{"inline_string": KEY}]}},
               {"name": "generic", "generic_secret": {"secret": {"inline_string": KEY}}}]
    for output in ("table", "json", "yaml"):
        code, out, err = inspect_mocked(answers(secrets), "secrets", "-o", output)
        assert code == 0, err
        assert "PRIVATE KEY" not in out and "hunter2" not in out, output
        assert all(name in out for name in ("id", "tickets", "generic")), output


def test_an_answer_larger_than_allowed_is_an_error() -> None:
    code, out, err = inspect_mocked(answers([], padding=4096), "--max-response-bytes", "1KiB")
    assert code == 1 and out == ""
    assert "cannot be inspected: bad response" in err and "answer too large" in " ".join(err.split())
