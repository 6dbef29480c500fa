"""MeshMetric's conf: one top-level `default`, parsed once (policies/conf.py) for validation and for render.

    default:
      sidecar:
        includeUnused: bool                  false (Kuma's default): only metrics Envoy has updated
        profiles:
          appendProfiles: [{name: All}]      All is what Envoy's admin serves; Basic and None need kuma-dp
          include / exclude: [...]           need kuma-dp (an error, below)
      applications: [...]                    needs kuma-dp (an error, below)
      backends:
        - type: Prometheus                   (may be left out when the `prometheus` block is written)
          prometheus: {port (5670), path (/metrics), clientId, tls: {mode: Disabled}}
        - type: OpenTelemetry                needs kuma-dp (an error, below)

What Kuma implements with its dataplane agent (kuma-dp) cannot be expressed in plain Envoy: kuma-dp serves the
Prometheus endpoint itself, scrapes the applications and merges their metrics with Envoy's, applies the profiles and
selectors to Envoy's metrics, and pushes to an OpenTelemetry collector. Each of those fields is an error at its
line that says so; nothing is ignored. Kuma's validator (pkg/plugins/policies/meshmetric/api/v1alpha1/validator.go)
is applied first, so a field Kuma rejects gets Kuma's verdict.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from meshplan.policies.conf import ConfReader, Setting

DEFAULT_PORT = 5670  # Kuma's default Prometheus port
DEFAULT_PATH = "/metrics"
DEFAULT_CLIENT_ID = "default"
PROFILES = ("All", "Basic", "None")
SELECTOR_TYPES = ("Prefix", "Regex", "Exact", "Contains")
TLS_MODES = ("Disabled", "ProvidedTLS", "ActiveMTLSBackend")
BACKEND_TYPES = {"Prometheus": "prometheus", "OpenTelemetry": "openTelemetry"}
KUMA_DP = "Kuma implements it in its dataplane agent (kuma-dp), which plain Envoy has not"


@dataclass(frozen=True)
class Prometheus:
    port: int
    path: str
    client_id: str


@dataclass(frozen=True)
class Conf:
    include_unused: Setting[bool] | None
    backends: Setting[tuple[Prometheus, ...]] | None  # None or empty: no endpoint


def parse(conf: ConfReader) -> Conf:
    conf.unknown(("sidecar", "applications", "backends"))
    sidecar = conf.section("sidecar", _parse_sidecar)
    if conf.has("applications"):
        conf.entries("applications", _check_application, not_a_mapping="must be a mapping with `path` and `port`")
        if conf.raw["applications"]:
            conf.fail(f"scraping applications is not supported: {KUMA_DP} (it scrapes each application and merges "
                      "their metrics with Envoy's on one endpoint)", "applications")  # fmt: skip
    backends = conf.entries("backends", _parse_backend, not_a_mapping="must be a mapping with `prometheus`")
    if backends is not None:
        seen: dict[int, int] = {}
        for i, backend in enumerate(backends.value):
            if backend.port in seen:
                conf.fail(f"port {backend.port} is already the port of backends[{seen[backend.port]}]: one listener "
                          "per port", "backends")  # fmt: skip
            seen.setdefault(backend.port, i)
    return Conf(sidecar, backends)


def _parse_sidecar(sidecar: ConfReader) -> Setting[bool] | None:
    sidecar.unknown(("profiles", "includeUnused"))
    sidecar.section("profiles", _parse_profiles)
    return sidecar.boolean("includeUnused")


def _parse_profiles(profiles: ConfReader) -> None:
    profiles.unknown(("appendProfiles", "exclude", "include"))
    profiles.entries("appendProfiles", _check_profile, not_a_mapping="must be a mapping with `name`")
    for key in ("exclude", "include"):
        profiles.entries(key, _check_selector, not_a_mapping="must be a mapping with `type` and `match`")
        if profiles.raw.get(key):
            profiles.fail(f"`{key}` selectors are not supported: {KUMA_DP} (it filters Envoy's metrics by them)", key)


def _check_profile(at: ConfReader) -> None:
    at.unknown(("name",))
    name = at.text("name", required=True)
    if name is not None and name.value not in PROFILES:
        at.fail(f"unrecognized profile name {name.value!r} - 'All', 'None', 'Basic' are supported", "name")
    elif name is not None and name.value != "All":
        at.fail(f"profile {name.value!r} is not supported: {KUMA_DP} (it filters Envoy's metrics to the "
                "profile); Envoy's admin serves every metric, which is the All profile", "name")  # fmt: skip


def _check_selector(at: ConfReader) -> None:
    at.unknown(("type", "match"))
    kind = at.text("type", required=True)
    match = at.text("match", required=True)
    if kind is not None and kind.value not in SELECTOR_TYPES:
        at.fail(f"unrecognized type {kind.value!r} - 'Regex', 'Prefix', 'Exact', 'Contains' are supported", "type")
    elif kind is not None and kind.value == "Regex" and match is not None:
        try:
            re.compile(match.value)
        except re.error:
            at.fail("invalid regex", "match")


def _check_application(at: ConfReader) -> None:
    at.unknown(("name", "path", "address", "port"))
    at.text("name")
    at.text("path")
    at.text("address")
    at.port("port") if at.has("port") else at.fail("`port` is required")


def _parse_backend(backend: ConfReader) -> Prometheus | None:
    block = backend.typed_block(BACKEND_TYPES, "backend")
    if block is None:
        return None
    if block == "openTelemetry":
        backend.fail(f"OpenTelemetry backends are not supported: {KUMA_DP} (it reads Envoy's metrics and pushes them "
                     "to the collector every refreshInterval)", block)  # fmt: skip
        return None
    return backend.section("prometheus", _parse_prometheus)


def _parse_prometheus(prometheus: ConfReader) -> Prometheus | None:
    prometheus.unknown(("port", "path", "clientId", "tls"))
    port = prometheus.port("port")
    path = prometheus.text("path")
    client_id = prometheus.text("clientId")
    if path is not None and (not path.value.startswith("/") or any(c in path.value for c in "?# \n")):
        prometheus.fail(f"must be an absolute URL path without a query, got {path.value!r}", "path")
        return None
    if client_id is not None and not re.fullmatch(r"[A-Za-z0-9._-]+", client_id.value):
        prometheus.fail(f"must be letters, digits, '.', '_' or '-' (it names a listener), got {client_id.value!r}",
                        "clientId")
        return None
    prometheus.section("tls", _parse_tls)
    if prometheus.has("port") and port is None:
        return None
    return Prometheus(port.value if port is not None else DEFAULT_PORT,
                      path.value if path is not None and path.value else DEFAULT_PATH,
                      client_id.value if client_id is not None else DEFAULT_CLIENT_ID)


def _parse_tls(tls: ConfReader) -> None:
    tls.unknown(("mode",))
    mode = tls.choice("mode", TLS_MODES)
    if mode is not None and mode.value != "Disabled":
        tls.fail(f"mode {mode.value} is not supported: {KUMA_DP} (it terminates TLS on the metrics endpoint with "
                 "its own certificate); use Disabled", "mode")  # fmt: skip
