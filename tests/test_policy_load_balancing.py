"""MeshLoadBalancingStrategy: its validation table, its render (golden), Envoy's acceptance, and real requests
hashed onto one instance by a header, on a sidecar and on the egress."""

from __future__ import annotations

import textwrap
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Loopback
from typer.testing import CliRunner

from meshplan.cli import app
from meshplan.envoy.binary import validate_configs
from meshplan.model import ProxyConfig
from meshplan.render.proxies import render_all
from meshplan.validate.resources import load_and_parse
from meshplan.xds import pki
from tests.builders import (
    Addresses,
    FixedAddresses,
    MeshFiles,
    Service,
    assert_violations_point_at,
    running_sandbox,
    split_violation,
    table_cases,
    violations,
    write_mesh,
)
from tests.golden import TESTDATA
from tests.policy_render import envoy_validates

KIND = "MeshLoadBalancingStrategy"
INSTANCES = 3


# --- a small mesh: web -> backend (3 instances) and web -> httpbin (an external service with 3 endpoints) ---------


SERVICES = [*(Service("backend", instance=f"backend-{i + 1}") for i in range(INSTANCES)),
            Service("web", calls=("backend", "mes:httpbin"))]


def module_mesh(directory: Path, files: dict[str, str], addresses: Addresses | None = None) -> MeshFiles:
    """The module's mesh (fixed addresses unless others are given) and these files (policies) in `directory`."""
    mesh = write_mesh(directory, addresses or FixedAddresses(network="127.0.1."), SERVICES, externals={"httpbin": "http"},
                      external_endpoints=INSTANCES)
    mesh.write({name: text for name, text in files.items()})
    return mesh


def write(directory: Path, files: dict[str, str]) -> Path:
    return module_mesh(directory, files).root


def policy(default: str, *, name: str = "lb", to: str = "kind: MeshService\n        name: backend",
           top: str = "kind: Mesh") -> str:  # fmt: skip
    body = textwrap.indent(textwrap.dedent(default).strip(), " " * 8)
    return (
        f"type: {KIND}\nmesh: default\nname: {name}\nspec:\n  targetRef:\n    {top}\n  to:\n"
        f"    - targetRef:\n        {to}\n      default:\n{body}\n"
    )


EGRESS_TOP = "kind: Mesh\n    proxyType: [Egress]"
TO_HTTPBIN = "kind: MeshExternalService\n        name: httpbin"


# --- validation -------------------------------------------------------------------------------------------------

GOOD = {
    "round-robin": "loadBalancer:\n  type: RoundRobin",
    "random": "loadBalancer:\n  type: Random\n  random: {}",
    "least-request": "loadBalancer:\n  type: LeastRequest\n  leastRequest:\n    choiceCount: 5\n    activeRequestBias: \"0.5\"",
    "ring-hash": """
        loadBalancer:
          type: RingHash
          ringHash:
            hashFunction: XXHash
            minRingSize: 64
            maxRingSize: 64
            hashPolicies:
              - type: Header
                header:
                  name: x-user
                terminal: true
              - type: Cookie
                cookie:
                  name: session
                  ttl: 1h
                  path: /
              - type: Connection
                connection:
                  sourceIP: true
              - type: SourceIP
                connection: {}
              - type: QueryParameter
                queryParameter:
                  name: user
              - type: FilterState
                filterState:
                  key: io.example.key
        """,
    "maglev": "loadBalancer:\n  type: Maglev\n  maglev:\n    tableSize: 65537\n    hashPolicies:\n      - type: SourceIP\n        connection: {sourceIP: true}",
    "top-level-hash-policies": "hashPolicies:\n  - type: Header\n    header:\n      name: x-user\nloadBalancer:\n  type: RingHash",
    "locality-disabled": "localityAwareness:\n  disabled: true",
    "local-zone": "localityAwareness:\n  localZone: {}",
    "local-zone-no-affinity-tags": "localityAwareness:\n  disabled: false\n  localZone:\n    affinityTags: []",
    "affinity-tags": ("localityAwareness:\n  localZone:\n    affinityTags:\n      - key: example.com/rack\n"
                      "      - key: kuma.io/zone"),
    "affinity-tags-weighted-ring-hash": """
        loadBalancer:
          type: RingHash
        localityAwareness:
          localZone:
            affinityTags:
              - key: kuma.io/service
                weight: 700
              - key: example.com/rack
                weight: 30
        """,
}

# (case, default, [(path under spec.to[0].default, message fragment, text on the line the violation points at)])
BAD: list[tuple[str, str, list[tuple[str, str, str]]]] = [
    ("unknown field", "loadbalancer:\n  type: Random", [(".loadbalancer", "unknown field", "loadbalancer:")]),
    ("type", "loadBalancer:\n  ringHash: {}", [(".loadBalancer", "`type` is required", "loadBalancer:")]),
    ("unknown type", "loadBalancer:\n  type: Sticky", [(".loadBalancer.type", "must be one of RoundRobin", "type: Sticky")]),
    ("block of another type", "loadBalancer:\n  type: RoundRobin\n  ringHash:\n    minRingSize: 8",
     [(".loadBalancer.ringHash", "configures type RingHash, but type is RoundRobin", "ringHash:")]),
    ("least request", "loadBalancer:\n  type: LeastRequest\n  leastRequest:\n    choiceCount: 1\n    activeRequestBias: -1", [
        (".loadBalancer.leastRequest.choiceCount", "must be between 2 and", "choiceCount: 1"),
        (".loadBalancer.leastRequest.activeRequestBias", "must be a number at least 0", "activeRequestBias: -1"),
    ]),
    ("ring hash", """
        loadBalancer:
          type: RingHash
          ringHash:
            hashFunction: SHA1
            minRingSize: 2048
            maxRingSize: 1024
        """, [
        (".loadBalancer.ringHash.hashFunction", "must be one of XXHash, MurmurHash2", "hashFunction: SHA1"),
        (".loadBalancer.ringHash.minRingSize", "must not be greater than maxRingSize (2048 > 1024)", "minRingSize:"),
    ]),
    ("ring sizes", "loadBalancer:\n  type: RingHash\n  ringHash:\n    minRingSize: 0\n    maxRingSize: 9000000", [
        (".loadBalancer.ringHash.minRingSize", "must be between 1 and 8000000, got 0", "minRingSize: 0"),
        (".loadBalancer.ringHash.maxRingSize", "must be between 1 and 8000000, got 9000000", "maxRingSize:"),
    ]),
    ("maglev table", "loadBalancer:\n  type: Maglev\n  maglev:\n    tableSize: 65536",
     [(".loadBalancer.maglev.tableSize", "must be a prime number", "tableSize: 65536")]),
    ("hash policies", """
        hashPolicies:
          - header:
              name: x-user
          - type: Header
          - type: Cookie
            cookie:
              name: session
              ttl: forever
              path: session
          - type: QueryParameter
            queryParameter:
              name: ""
          - type: Header
            cookie:
              name: session
            header:
              name: x-user
          - type: Random
          - type: Connection
          - type: SourceIP
          - type: SourceIP
            connection:
              sourceIP: false
        """, [
        (".hashPolicies[0]", "`type` is required", "- header:"),
        (".hashPolicies[1]", "`header` is required", "- type: Header"),
        (".hashPolicies[2].cookie.ttl", "must be a duration", "ttl: forever"),
        (".hashPolicies[2].cookie.path", "must be an absolute path", "path: session"),
        (".hashPolicies[3].queryParameter.name", "must not be empty", "name: \"\""),
        (".hashPolicies[4].cookie", "is not used by a hash policy of type Header", "cookie:"),
        (".hashPolicies[5].type", "must be one of Header, Cookie", "type: Random"),
        (".hashPolicies[6]", "`connection` is required", "- type: Connection"),
        # As Kuma's validator: SourceIP needs its `connection` block too, and it always hashes on the source IP.
        (".hashPolicies[7]", "`connection` is required", "- type: SourceIP"),
        (".hashPolicies[8].connection.sourceIP", "type SourceIP hashes on the source IP: `sourceIP: false` "
         "contradicts it", "sourceIP: false"),
    ]),
    ("hash policies twice", """
        hashPolicies:
          - type: SourceIP
            connection: {}
        loadBalancer:
          type: RingHash
          ringHash:
            hashPolicies:
              - type: SourceIP
                connection: {}
        """, [(".loadBalancer.ringHash.hashPolicies", "already specified in the root level", "hashPolicies:")]),
    ("locality", "localityAwareness:\n  disabled: maybe\n  localZone:\n    affinityTags:\n      - key: k8s.io/node", [
        (".localityAwareness.disabled", "must be a boolean", "disabled: maybe"),
    ]),
    ("affinity tags", """
        localityAwareness:
          localZone:
            affinityTags:
              - key: example.com/rack
                weight: 0
              - key: ""
                weight: 5
              - rack
              - weight: 2
                zone: a
        """, [
        (".localityAwareness.localZone.affinityTags[0].weight", "must be between 1 and 4294967295, got 0", "weight: 0"),
        (".localityAwareness.localZone.affinityTags[1].key", "must not be empty", "key: \"\""),
        (".localityAwareness.localZone.affinityTags[2]", "must be a mapping with a `key`", "- rack"),
        (".localityAwareness.localZone.affinityTags[3]", "`key` is required", "- weight: 2"),
        (".localityAwareness.localZone.affinityTags[3].zone", "unknown field", "zone: a"),
    ]),
    ("affinity weights all or none",
     "localityAwareness:\n  localZone:\n    affinityTags:\n      - key: a\n        weight: 3\n      - key: b",
     [(".localityAwareness.localZone.affinityTags", "all or none affinity tags should have weight", "affinityTags:")]),
    ("affinity default weights overflow", "localityAwareness:\n  localZone:\n    affinityTags:\n"
     + "".join(f"      - key: tag-{i}\n" for i in range(10)),
     [(".localityAwareness.localZone.affinityTags", "at most 9 affinity tags without weights, got 10",
       "affinityTags:")]),
    ("affinity weights overflow", "localityAwareness:\n  localZone:\n    affinityTags:\n"
     "      - key: a\n        weight: 4294967295\n      - key: b\n        weight: 1",
     [(".localityAwareness.localZone.affinityTags", "must add up to less than 4294967295", "affinityTags:")]),
    ("local zone",
     "localityAwareness:\n  localZone:\n    affinityTags: {}\n    nodes: 2\n  crossZone:\n    failover: []", [
        (".localityAwareness.crossZone", "`crossZone` is not supported", "crossZone:"),
        (".localityAwareness.localZone.affinityTags", "must be a list", "affinityTags: {}"),
        (".localityAwareness.localZone.nodes", "unknown field", "nodes: 2"),
    ]),
]


@pytest.mark.parametrize("case", sorted(GOOD))
def test_good_specs_pass(tmp_path: Path, case: str) -> None:
    files = {"policy.yaml": policy(GOOD[case])}
    assert violations(write(tmp_path, files)) == []


@pytest.mark.parametrize(("default", "expected"), table_cases(BAD))
def test_bad_specs_report_every_violation_with_file_line_and_path(
    tmp_path: Path, default: str, expected: list[tuple[str, str, str]]
) -> None:
    directory = write(tmp_path, {"policy.yaml": policy(default)})
    assert_violations_point_at(directory, "policy.yaml", expected)


def test_placement_external_service_needs_the_egress(tmp_path: Path) -> None:
    on_sidecar = policy("loadBalancer:\n  type: Random", to=TO_HTTPBIN, top="kind: Mesh\n    proxyType: [Sidecar]")
    [(_, _, path, message)] = map(split_violation, violations(write(tmp_path, {"policy.yaml": on_sidecar})))
    assert path == "spec.to[0].targetRef"
    assert 'MeshLoadBalancingStrategy for a MeshExternalService is implemented on: Egress (to + proxyType: ["egress"])' in message


# --- render -----------------------------------------------------------------------------------------------------


def test_local_zone_sets_the_overprovisioning_factor_and_keeps_every_endpoint(tmp_path: Path) -> None:
    """`localZone` without affinity tags, in one zone: Kuma's overprovisioning factor (200) on the load assignment of
    the clusters it selects, the endpoints unchanged (all in the local zone); other clusters untouched."""
    plain = {p.name: p for p in render_all(load_and_parse(write(tmp_path / "plain", {})))}
    files = {"policy.yaml": policy("localityAwareness:\n  localZone: {}") + "---\n"
             + policy("localityAwareness:\n  localZone:\n    affinityTags: []", name="lb-egress", to=TO_HTTPBIN,
                      top=EGRESS_TOP)}
    directory = write(tmp_path / "zoned", files)
    zoned = {p.name: p for p in render_all(load_and_parse(directory))}
    changed = {(proxy, name) for proxy in zoned for name, c in _clusters(zoned[proxy]).items()
               if c != _clusters(plain[proxy])[name]}
    assert changed == {("web", "backend"), ("egress", "mes:default:httpbin")}
    for proxy, name in sorted(changed):
        before, after = _clusters(plain[proxy])[name], _clusters(zoned[proxy])[name]
        assert after["load_assignment"].pop("policy") == {"overprovisioning_factor": 200}
        assert after == before
        origins = zoned[proxy].origins["cluster"][name][("load_assignment", "policy", "overprovisioning_factor")]
        assert [o.split(" (")[0] for o in origins] == [f"{KIND}/{'lb' if proxy == 'web' else 'lb-egress'}"]


def _clusters(proxy: ProxyConfig) -> dict[str, Any]:
    return {c["name"]: c for c in proxy.clusters}


# web (rack a, in room r1) calls backend on racks a, b, b, the last in room r1 too; `reports` (no rack) calls it too.
AFFINITY_SERVICES = [
    Service("backend", tags={"example.com/rack": "a"}, instance="backend-1"),
    Service("backend", tags={"example.com/rack": "b"}, instance="backend-2"),
    Service("backend", tags={"example.com/rack": "b", "example.com/room": "r1"}, instance="backend-3"),
    Service("web", tags={"example.com/rack": "a", "example.com/room": "r1"}, calls=("backend",)),
    Service("reports", calls=("backend",)),
]
RACK_AFFINITY = policy("localityAwareness:\n  localZone:\n    affinityTags:\n      - key: example.com/rack")


def affinity_mesh(directory: Path, policies: str, addresses: Addresses | None = None) -> MeshFiles:
    mesh = write_mesh(directory, addresses or FixedAddresses(network="127.0.1."), AFFINITY_SERVICES)
    mesh.write({"policy.yaml": policies})
    return mesh


def _localities(cluster: dict[str, Any], mesh: MeshFiles) -> list[tuple[Any, int, list[str]]]:
    """Each locality group of the cluster: its locality, weight and instances (by the dataplane at each address)."""
    by_address = {address: name for name, address in mesh.inbound.items()}
    return [(group.get("locality"), group.get("load_balancing_weight", 0),
             [by_address[f"{e['endpoint']['address']['socket_address']['address']}:"
                         f"{e['endpoint']['address']['socket_address']['port_value']}"] for e in group["lb_endpoints"]])
            for group in cluster["load_assignment"]["endpoints"]]


def test_affinity_tags_weigh_the_clients_localities(tmp_path: Path) -> None:
    """Kuma's localities: the endpoints sharing the client's rack (weight 9, Kuma's default for one tag), the others
    (weight 1); a client without the tag gets one locality of weight 1; each such cluster balances by locality."""
    mesh = affinity_mesh(tmp_path, RACK_AFFINITY)
    proxies = {p.name: p for p in render_all(load_and_parse(mesh.root))}
    web, reports = _clusters(proxies["web"])["backend"], _clusters(proxies["reports"])["backend"]
    assert _localities(web, mesh) == [({}, 1, ["backend-2", "backend-3"]),
                                      ({"sub_zone": "example.com/rack=a"}, 9, ["backend-1"])]
    assert _localities(reports, mesh) == [({}, 1, ["backend-1", "backend-2", "backend-3"])]
    for cluster in (web, reports):
        assert cluster["common_lb_config"] == {"locality_weighted_lb_config": {}}
        assert cluster["load_assignment"]["policy"] == {"overprovisioning_factor": 200}
    origins = proxies["web"].origins["cluster"]["backend"]
    for path in (("load_assignment", "endpoints"), ("common_lb_config", "locality_weighted_lb_config")):
        assert [o.split(" (")[0] for o in origins[path]] == [f"{KIND}/lb"]


def test_affinity_tags_first_shared_tag_wins_with_written_or_default_weights(tmp_path: Path) -> None:
    """An endpoint goes to the first tag whose value it shares with the client: rack before room; weights as written,
    else Kuma's 9 * 10^(n-i-1) (90 and 9 for two tags); a Dataplane label stands in for a tag the inbound lacks."""
    two = ("localityAwareness:\n  localZone:\n    affinityTags:\n      - key: example.com/rack\n"
           "      - key: example.com/room")
    mesh = affinity_mesh(tmp_path / "default", policy(two))
    web = _clusters({p.name: p for p in render_all(load_and_parse(mesh.root))}["web"])["backend"]
    assert _localities(web, mesh) == [({}, 1, ["backend-2"]),
                                      ({"sub_zone": "example.com/rack=a"}, 90, ["backend-1"]),
                                      ({"sub_zone": "example.com/room=r1"}, 9, ["backend-3"])]
    weighted = two.replace("rack\n", "rack\n        weight: 5\n").replace("room", "room\n        weight: 50")
    mesh = affinity_mesh(tmp_path / "weighted", policy(weighted))
    dataplanes = mesh.root / "dataplanes.yaml"  # backend-2's room as a label, not a tag
    labelled = "name: backend-2\nlabels:\n  example.com/room: r1\n"
    dataplanes.write_text(dataplanes.read_text().replace("name: backend-2\n", labelled, 1))
    web = _clusters({p.name: p for p in render_all(load_and_parse(mesh.root))}["web"])["backend"]
    assert _localities(web, mesh) == [({"sub_zone": "example.com/rack=a"}, 5, ["backend-1"]),
                                      ({"sub_zone": "example.com/room=r1"}, 50, ["backend-2", "backend-3"])]



def _route_action(proxy: ProxyConfig, listener_prefix: str) -> dict[str, Any]:
    listener = next(item for item in proxy.listeners if item["name"].startswith(listener_prefix))
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    action: dict[str, Any] = manager["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
    return action


@pytest.mark.envoy
def test_every_proxy_passes_envoy_validation(tmp_path: Path) -> None:
    desired = load_and_parse(TESTDATA / "load_balancing.input")  # the golden case's mesh and policies
    assert envoy_validates(desired, tmp_path / "state") == dict.fromkeys(desired.proxy_names())


@pytest.mark.envoy
@pytest.mark.parametrize("case", sorted(GOOD))
def test_each_good_spec_passes_envoy_validation(tmp_path: Path, case: str) -> None:
    directory = write(tmp_path / "desired", {"policy.yaml": policy(GOOD[case])})
    desired = load_and_parse(directory)
    pki.ensure(desired, tmp_path / "state")
    web = [p for p in render_all(desired) if p.name == "web"]
    assert validate_configs(web, tmp_path / "validate") == {"web": None}


# --- real traffic -----------------------------------------------------------------------------------------------

# With `localZone` (no affinity tags): the clusters carry Kuma's overprovisioning factor, and every instance still takes
# traffic (test_different_header_values_spread_over_instances).
RING_HASH_ON_USER = """
    loadBalancer:
      type: RingHash
      ringHash:
        hashPolicies:
          - type: Header
            header:
              name: x-user
    localityAwareness:
      localZone: {}
    """
TRAFFIC_POLICIES = policy(RING_HASH_ON_USER) + "---\n" + policy(RING_HASH_ON_USER, name="lb-egress", to=TO_HTTPBIN, top=EGRESS_TOP)


@dataclass(frozen=True)
class Running:
    mesh: MeshFiles
    proxies: dict[str, ProxyConfig]
    client: httpx.Client


@pytest.fixture(scope="module")
def running(loopback: Loopback, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """One sandbox for the module's traffic tests; brought down, and checked for leftovers, however they end."""
    root = tmp_path_factory.mktemp("load-balancing")
    mesh = module_mesh(root / "desired", {"policy.yaml": TRAFFIC_POLICIES}, loopback)
    directory = mesh.root
    with running_sandbox(load_and_parse(directory), root / "state") as started:
        with httpx.Client(trust_env=False, timeout=5.0) as client:
            yield Running(mesh, {p.name: p for p in started}, client)


OUTBOUNDS = {"web_backend": ("web", "backend"), "web_httpbin": ("web", "mes:httpbin")}


def _hits(running: Running, outbound: str, users: list[str]) -> Counter[str]:
    seen: Counter[str] = Counter()
    for user in users:
        answer = running.client.get(f"{running.mesh.outbound[OUTBOUNDS[outbound]]}/whoami", headers={"x-user": user})
        assert answer.status_code == 200, answer.text
        seen[answer.json()["instance"]] += 1
    return seen


@pytest.mark.envoy
@pytest.mark.parametrize("outbound", ["web_backend", "web_httpbin"])
def test_one_header_value_always_reaches_the_same_instance(running: Running, outbound: str) -> None:
    for user in ("alice", "bob"):
        seen = _hits(running, outbound, [user] * 20)
        assert len(seen) == 1 and sum(seen.values()) == 20, seen


@pytest.mark.envoy
@pytest.mark.parametrize("outbound", ["web_backend", "web_httpbin"])
def test_different_header_values_spread_over_instances(running: Running, outbound: str) -> None:
    users = [f"user-{i}" for i in range(20)]
    first = _hits(running, outbound, users)
    assert len(first) >= 2, first  # 3 instances: all 20 users on one would be a 1 in 3**19 chance
    assert _hits(running, outbound, users) == first  # and each user stays where it went


@pytest.mark.envoy
def test_running_envoys_hold_the_local_zone_overprovisioning_factor(running: Running) -> None:
    """What the sandbox's Envoys run (their /config_dump): the sidecar's and the egress's selected clusters carry
    Kuma's overprovisioning factor for `localZone`; the egress's cluster back to the sidecar's service does not."""
    def clusters(proxy: str) -> dict[str, Any]:
        dump = running.client.get(f"{running.mesh.admin[proxy]}/config_dump",
                                  params={"resource": "dynamic_active_clusters"}).json()
        return {entry["cluster"]["name"]: entry["cluster"] for entry in dump["configs"]}

    web, egress = clusters("web"), clusters("egress")
    assert web["backend"]["load_assignment"]["policy"]["overprovisioning_factor"] == 200
    assert egress["mes:default:httpbin"]["load_assignment"]["policy"]["overprovisioning_factor"] == 200
    assert "policy" not in web["mes:default:httpbin"].get("load_assignment", {})


@pytest.fixture(scope="module")
def affinity(loopback: Loopback, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Running, Path]]:
    root = tmp_path_factory.mktemp("affinity")
    mesh = affinity_mesh(root / "desired", RACK_AFFINITY, loopback)
    with running_sandbox(load_and_parse(mesh.root), root / "state") as started:
        with httpx.Client(trust_env=False, timeout=5.0) as client:
            yield Running(mesh, {p.name: p for p in started}, client), root / "state"


@pytest.mark.envoy
def test_affinity_localities_run_as_rendered(affinity: tuple[Running, Path]) -> None:
    """What the Envoys run is what meshplan rendered, localities included: a plan against them has no changes."""
    running, state = affinity
    result = CliRunner().invoke(app, ["plan", str(running.mesh.root), "--state", str(state), "--detailed-exitcode"])
    assert result.exit_code == 0, result.output


@pytest.mark.envoy
def test_affinity_tag_sends_most_requests_to_the_clients_rack(affinity: tuple[Running, Path]) -> None:
    """Real traffic: web's rack-a instance (locality weight 9 against 1 for the two others) takes about 90% of its
    requests; `reports`, without a rack, spreads them over all three."""
    running, _ = affinity

    def hits(client: str, count: int) -> Counter[str]:
        seen: Counter[str] = Counter()
        for _ in range(count):
            answer = running.client.get(running.mesh.url(client, "backend", "/whoami"))
            assert answer.status_code == 200, answer.text
            seen[answer.json()["instance"]] += 1
        return seen

    web = hits("web", 100)
    assert web["backend-1"] >= 75, web  # expected 90; below 75 is over 5 standard deviations away
    reports = hits("reports", 90)
    assert reports["backend-1"] <= 55, reports  # expected 30 (round robin over three)
    assert len(reports) == 3, reports
