"""Finding Envoy and offline validation, against the real binary."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from meshplan.envoy.binary import (
    ENVOY_ENV,
    envoy_binary,
    envoy_error_message,
    validate_configs,
)
from meshplan.errors import EnvoyError
from tests.builders import MeshBuilder, http_listener, static_cluster

pytestmark = pytest.mark.envoy


def test_binary_is_the_packaged_one_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENVOY_ENV, raising=False)
    binary = Path(envoy_binary())
    assert binary.is_absolute() and os.access(binary, os.X_OK)
    assert binary.parent.name == "_bin"  # the binary itself, not the slower Python wrapper on PATH


def test_binary_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "my-envoy"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv(ENVOY_ENV, str(fake))
    assert envoy_binary() == str(fake)
    monkeypatch.setenv(ENVOY_ENV, str(tmp_path / "missing"))
    with pytest.raises(EnvoyError, match=ENVOY_ENV):
        envoy_binary()


def test_validate_passes_good_and_names_what_is_wrong_with_bad(mesh: MeshBuilder, tmp_path: Path) -> None:
    good = mesh.sidecar("good")
    negative = mesh.sidecar("negative")
    negative = mesh.change("negative", clusters=(dict(negative.clusters[0], connect_timeout="-1s"),))
    missing = mesh.sidecar("missing")
    missing = mesh.change("missing", listeners=(http_listener("in", missing.address, 80, "nowhere"),))
    unknown = mesh.sidecar("unknown")
    unknown = mesh.change("unknown", clusters=(static_cluster("c", unknown.address, 80, colour="blue"),))

    results = validate_configs([good, negative, missing, unknown], tmp_path)

    assert results["good"] is None
    assert results["negative"] is not None and "Invalid duration" in results["negative"]
    assert results["missing"] == "route: unknown cluster 'nowhere'"
    assert results["unknown"] is not None and "no such field: 'colour'" in results["unknown"]
    assert "@ clusters['c']" in results["unknown"]  # the resource by name, not by index in a bootstrap
    assert "[critical]" not in results["negative"]  # Envoy's message, not its log prefix


def test_error_message_keeps_the_message_and_drops_the_noise() -> None:
    log = (
        "[2026-11-25 08:32:04.474][3450][info][main] [source/server/server.cc:989] runtime: {}\n"
        "[2026-11-25 08:32:04.426][3447][critical][main] [source/server/config_validation/server.cc:76] error "
        "initializing configuration '/tmp/x.json': Invalid duration: Expected positive   duration\n"
        "seconds: -1\n"
    )
    assert envoy_error_message(log) == "Invalid duration: Expected positive duration seconds: -1"
