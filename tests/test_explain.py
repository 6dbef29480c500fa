"""`meshplan explain`: which policies matched where, in what order, and why one does not land."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from meshplan.cli import app

DEMO = Path(__file__).parent.parent / "examples" / "demo"


def explain(*args: str) -> str:
    result = CliRunner().invoke(app, ["explain", str(DEMO), *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def section(text: str, head: str) -> str:
    return text.split(head, 1)[1].split("\n\n", 1)[0]


def test_merge_order_and_overrides_on_a_sidecar() -> None:
    text = explain("web")
    timeout = section(text, "MeshTimeout to outbound 127.0.1.1:10001 -> backend")
    # Kuma's initial default policy first (least specific, no file), then the demo's own
    assert (timeout.index("MeshTimeout/mesh-timeout-all-default to[0] (default)")
            < timeout.index("MeshTimeout/mesh-defaults to[0]") < timeout.index("MeshTimeout/web-to-backend to[0]"))
    assert (f'http.requestTimeout: "5s"  # MeshTimeout/web-to-backend ({DEMO}/policies/timeout.yaml:30); '
            "overrides MeshTimeout/mesh-timeout-all-default (default), "
            f"MeshTimeout/mesh-defaults ({DEMO}/policies/timeout.yaml:15)") in timeout
    assert 'http.streamIdleTimeout: "30m"  # MeshTimeout/mesh-timeout-all-default (default)\n' in timeout
    assert 'connectionTimeout: "2s"  # MeshTimeout/mesh-defaults' in timeout
    # seed placement: no circuit breaker for the external service on the sidecar, retries only there
    assert "MeshCircuitBreaker to outbound 127.0.1.1:10002" not in text
    assert "MeshRetry to outbound 127.0.1.1:10002 -> external service httpbin" in text


def test_egress_gets_the_egress_policies_only() -> None:
    text = explain("egress")
    cb = section(text, "MeshCircuitBreaker to external service httpbin (mesh default)")
    assert "MeshCircuitBreaker/circuit-breaker to[0]" in cb and "default-circuit-breaker" not in cb
    # what render merges: the seed's spelling (the file writes `connectionLimits`), at the line it was written on
    assert f"connectionPool.maxConnections: 128  # MeshCircuitBreaker/circuit-breaker ({DEMO}/policies/circuit-breaker.yaml:" in cb
    assert "connectionLimits" not in cb
    assert "MeshRetry" not in text and "mesh-defaults" not in text


def test_why_a_policy_does_not_land() -> None:
    text = explain("egress", "--policy", "MeshRetry/web-retries")
    assert "lands nowhere on this proxy" in text
    assert "not on egress: targetRef proxyType [sidecar] does not include egress" in text
    text = explain("web", "--policy", "MeshTimeout/web-to-backend")
    assert "lands on outbound 127.0.1.1:10001 -> backend" in text
    assert "not on outbound 127.0.1.1:10002 -> external service httpbin: no `to` item targets MeshExternalService 'httpbin'" in text
    text = explain("backend-1", "--policy", "MeshTimeout/web-to-backend")
    assert "not on backend-1: " in text and "lands nowhere" in text


def test_unknown_policy_is_an_error() -> None:
    result = CliRunner().invoke(app, ["explain", str(DEMO), "web", "--policy", "MeshTimeout/nope"])
    assert result.exit_code == 1
    assert "no policy 'MeshTimeout/nope'" in result.stderr


def test_explain_as_json_has_what_the_text_shows() -> None:
    text = CliRunner(env={"COLUMNS": "300"}).invoke(app, ["explain", str(DEMO), "web"])
    as_json = CliRunner().invoke(app, ["explain", str(DEMO), "web", "-o", "json"])
    assert text.exit_code == as_json.exit_code == 0
    document = json.loads(as_json.stdout)
    assert (document["proxy"], document["type"]) == ("web", "sidecar")
    assert document["sections"]
    for section in document["sections"]:
        assert section["kind"] in text.stdout
        for line in section["fields"]:
            assert line["set_by"] in text.stdout
            assert isinstance(line["written"], bool)
