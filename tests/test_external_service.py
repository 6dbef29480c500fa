"""MeshExternalService: Kuma v2.14.3's verdicts on its fields (the cases of Kuma's validator tests, on inputs of our
own), meshplan's own refusals (each with its reason, docs/policies.md), and what the egress renders from them: TLS
version bounds, SAN match types, an inline CA, endpoint priorities. Real Envoys check the renders in
test_external_service_envoy.py."""

from __future__ import annotations

import base64
import textwrap
from pathlib import Path

import pytest

from meshplan.render.proxies import render_all
from meshplan.validate.resources import load_and_parse
from tests.builders import split_violation, table_cases, violations
from tests.test_validate import write

CA_PEM = (Path(__file__).parent / "testdata" / "external_tls.input" / "external.yaml").read_text().split(
    "inlineString: |\n", 1)[1].split("\n---\n", 1)[0]
CA_PEM = textwrap.dedent(CA_PEM)
CA_B64 = base64.b64encode(CA_PEM.encode()).decode()


def external(spec: str, name: str = "weather") -> str:
    """external.yaml: one MeshExternalService named `name` whose spec is `spec` (YAML, at the indentation of `spec:`)."""
    return f"type: MeshExternalService\nmesh: default\nname: {name}\nspec:\n" + textwrap.indent(textwrap.dedent(spec).lstrip("\n"), "  ")


MINIMAL = "match: {port: 80, protocol: http}\nendpoints: [{address: 192.0.2.10, port: 8080}]\n"

# (case, name, spec, expected violations as (path, fragment of the message); [] when valid). Kuma's verdict unless
# the case says "meshplan:" (a deliberate difference, listed in docs/policies.md).
TABLE: list[tuple[str, str, str, list[tuple[str, str]]]] = [
    ("minimal", "weather", MINIMAL, []),
    ("match type and protocol left to their defaults", "weather",
     "match: {port: 80}\nendpoints: [{address: forecast.example.org, port: 443}]\n", []),
    ("endpoints with priorities", "weather", """
        match: {type: HostnameGenerator, port: 9000, protocol: tcp}
        endpoints:
          - {address: 198.51.100.1, port: 9001, priority: 0}
          - {address: 198.51.100.2, port: 9001, priority: 1}
          - {address: 198.51.100.3, port: 9001, priority: 2}
        """, []),
    ("every TLS field but client certificates", "weather", f"""
        match: {{port: 8080, protocol: http}}
        endpoints: [{{address: 203.0.113.4, port: 4443}}, {{address: forecast.example.org, port: 443}}]
        tls:
          enabled: true
          allowRenegotiation: false
          version: {{min: TLS12, max: TLS13}}
          verification:
            serverName: forecast.example.org
            subjectAltNames:
              - {{type: Exact, value: forecast.example.org}}
              - {{type: Prefix, value: "spiffe://forecast.example/ns/"}}
            caCert: {{inline: {CA_B64}}}
        """, []),
    ("TLSAuto on either side is no bound", "weather", MINIMAL + "tls: {enabled: true, version: {min: TLS13, max: TLSAuto}}\n", []),
    ("equal bounds", "weather", MINIMAL + "tls: {enabled: true, version: {min: TLS11, max: TLS11}}\n", []),
    ("min above max", "weather", MINIMAL + "tls: {enabled: true, version: {min: TLS13, max: TLS12}}\n",
     [("spec.tls.version.min", "must not be above max: TLS13 is a later version than TLS12")]),
    ("unknown protocol", "weather", "match: {port: 80, protocol: ftp}\nendpoints: [{address: 192.0.2.10, port: 8080}]\n",
     [("spec.match.protocol", "unknown protocol 'ftp'")]),
    ("unknown match type", "weather", "match: {type: Dns, port: 80}\nendpoints: [{address: 192.0.2.10, port: 8080}]\n",
     [("spec.match.type", "must be HostnameGenerator")]),
    ("match port 0", "weather", "match: {port: 0}\nendpoints: [{address: 192.0.2.10, port: 8080}]\n",
     [("spec.match.port", "between 1 and 65535, got 0")]),
    ("match port above 65535", "weather", "match: {port: 65536}\nendpoints: [{address: 192.0.2.10, port: 8080}]\n",
     [("spec.match.port", "between 1 and 65535, got 65536")]),
    ("IP endpoint without a port", "weather", "match: {port: 80}\nendpoints: [{address: 192.0.2.10}]\n",
     [("spec.endpoints[0]", "`port` is required")]),
    ("hostname endpoint without a port", "weather", "match: {port: 80}\nendpoints: [{address: forecast.example.org}]\n",
     [("spec.endpoints[0]", "`port` is required")]),
    ("endpoint port out of range", "weather", "match: {port: 80}\nendpoints: [{address: 192.0.2.10, port: 700000}]\n",
     [("spec.endpoints[0].port", "between 1 and 65535, got 700000")]),
    ("endpoint without an address", "weather", "match: {port: 80}\nendpoints: [{port: 90}]\n",
     [("spec.endpoints[0]", "`address` is required")]),
    ("endpoint address neither IP nor hostname", "weather", "match: {port: 80}\nendpoints: [{address: 'not a host', port: 90}]\n",
     [("spec.endpoints[0].address", "must be an IP address or a host name")]),
    ("priority above Kuma's 128", "weather", "match: {port: 80}\nendpoints: [{address: 192.0.2.10, port: 90, priority: 129}]\n",
     [("spec.endpoints[0].priority", "between 0 and 128, got 129")]),
    ("unknown TLS versions", "weather", MINIMAL + "tls: {enabled: true, version: {min: TLS15, max: TLS16}}\n",
     [("spec.tls.version.min", "must be one of TLSAuto, TLS10, TLS11, TLS12, TLS13, got 'TLS15'"),
      ("spec.tls.version.max", "got 'TLS16'")]),
    ("server name not a DNS name", "weather", MINIMAL + "tls: {enabled: true, verification: {serverName: 'bad[]name'}}\n",
     [("spec.tls.verification.serverName", "must be a DNS name")]),
    ("unknown verification mode", "weather", MINIMAL + "tls: {enabled: true, verification: {mode: Trusting}}\n",
     [("spec.tls.verification.mode", "must be one of Secured, SkipSAN, SkipCA, SkipAll, got 'Trusting'")]),
    ("SAN match type Regex", "weather", MINIMAL + "tls: {enabled: true, verification: {subjectAltNames: [{type: Regex, value: '.*'}]}}\n",
     [("spec.tls.verification.subjectAltNames[0].type", "must be one of Exact, Prefix, got 'Regex'")]),
    ("clientKey without clientCert", "weather", MINIMAL + "tls: {enabled: true, verification: {clientKey: {secret: k}}}\n",
     [("spec.tls.verification.clientCert", "must be defined when clientKey is defined"),
      ("spec.tls.verification.clientKey", "meshplan: client certificates towards external services are not supported")]),
    # Kuma v2.14.3 refuses a unix domain socket address (removed in 2.9, kumahq/kuma#11350): one violation on the
    # address, none on the port it may or may not carry; the host endpoints beside it are fine
    ("unix domain socket endpoint", "weather",
     "match: {port: 80}\nendpoints: [{address: 192.0.2.10, port: 90}, {address: 'unix:///run/weather.sock'}]\n",
     [("spec.endpoints[1].address", "unix domain socket endpoints are not supported: Kuma v2.14.3 refuses them too")]),
    ("unix domain socket endpoint with a port", "weather",
     "match: {port: 80}\nendpoints: [{address: 'unix:///run/weather.sock', port: 90}]\n",
     [("spec.endpoints[0].address", "unix domain socket endpoints are not supported: Kuma v2.14.3 refuses them too")]),
    ("name of 63 characters", "w" * 63, MINIMAL, []),
    ("name of 64 characters", "w" * 64, MINIMAL, [("name", "must not be longer than 63 characters")]),
    # meshplan's own refusals, each with its reason (docs/policies.md)
    ("meshplan: client certificate and key", "weather",
     MINIMAL + "tls: {enabled: true, verification: {clientCert: {secret: c}, clientKey: {secret: k}}}\n",
     [("spec.tls.verification.clientCert", "client certificates towards external services are not supported"),
      ("spec.tls.verification.clientKey", "client certificates towards external services are not supported")]),
    ("meshplan: extension", "weather", MINIMAL + "extension: {type: Lambda}\n",
     [("spec.extension", "not supported by meshplan: it has no MeshExternalService extensions")]),
    ("meshplan: SkipCA with subjectAltNames", "weather",
     MINIMAL + "tls: {enabled: true, verification: {mode: SkipCA, subjectAltNames: [{type: Exact, value: a.example}]}}\n",
     [("spec.tls.verification.subjectAltNames", "SkipCA does not verify the certificate chain")]),
    ("meshplan: SkipSAN with subjectAltNames", "weather",
     MINIMAL + "tls: {enabled: true, verification: {mode: SkipSAN, subjectAltNames: [{value: a.example}]}}\n",
     [("spec.tls.verification.subjectAltNames", "SkipSAN does not check subject alt names")]),
    ("meshplan: SkipAll with a CA", "weather",
     MINIMAL + f"tls: {{enabled: true, verification: {{mode: SkipAll, caCert: {{inline: {CA_B64}}}}}}}\n",
     [("spec.tls.verification.caCert", "SkipAll does not verify the certificate chain, so a CA would not be used")]),
    ("meshplan: CA from a secret", "weather", MINIMAL + "tls: {enabled: true, verification: {caCert: {secret: ca}}}\n",
     [("spec.tls.verification.caCert.secret", "meshplan has no secret store")]),
    ("meshplan: CA given twice", "weather",
     MINIMAL + f"tls: {{enabled: true, verification: {{caCert: {{inline: {CA_B64}, file: /etc/ca.pem}}}}}}\n",
     [("spec.tls.verification.caCert", "set exactly one of file, inline, inlineString, got file, inline")]),
    ("meshplan: inline CA not base64", "weather", MINIMAL + "tls: {enabled: true, verification: {caCert: {inline: '%%%'}}}\n",
     [("spec.tls.verification.caCert.inline", "must be the base64 of a PEM certificate")]),
    ("meshplan: inline CA not a certificate", "weather",
     MINIMAL + "tls: {enabled: true, verification: {caCert: {inlineString: hello}}}\n",
     [("spec.tls.verification.caCert.inlineString", "must be one or more PEM certificates")]),
    ("meshplan: a private key as the CA", "weather",
     MINIMAL + "tls: {enabled: true, verification: {caCert: {inlineString: '-----BEGIN PRIVATE KEY-----\\nAAAA\\n'}}}\n",
     [("spec.tls.verification.caCert.inlineString", "holds a private key")]),
    ("meshplan: TLS settings without tls.enabled", "weather", MINIMAL + "tls: {version: {min: TLS12}}\n",
     [("spec.tls.version", "has no effect without `tls.enabled: true`")]),
    ("meshplan: empty SAN prefix", "weather", MINIMAL + "tls: {enabled: true, verification: {subjectAltNames: [{type: Prefix, value: ''}]}}\n",
     [("spec.tls.verification.subjectAltNames[0].value", "must not be empty")]),
]


@pytest.mark.parametrize("name, spec, expected", table_cases(TABLE))
def test_validation_table(tmp_path: Path, name: str, spec: str, expected: list[tuple[str, str]]) -> None:
    write(tmp_path, {"external.yaml": external(spec, name)})
    found = sorted((split_violation(v) for v in violations(tmp_path)), key=lambda v: v[2])
    assert all(where == "external.yaml" for where, *_ in found), found
    assert len(found) == len(expected), found
    for (_, _, path, message), (want_path, fragment) in zip(found, sorted(expected), strict=True):
        assert path == want_path and fragment.removeprefix("meshplan: ") in message, found


def test_every_violation_of_kumas_full_invalid_case_in_one_run(tmp_path: Path) -> None:
    """Kuma's all-wrong resource, in our words: every violation at its line, in one run."""
    write(tmp_path, {"external.yaml": external("""
        match:
          type: Other
          port: 0
          protocol: smtp
        endpoints:
          - address: 192.0.2.1
          - address: 192.0.2.2
            port: 999999
          - address: forecast.example.org
          - port: 90
        tls:
          enabled: true
          version: {min: SSL3, max: TLS14}
          verification:
            serverName: "no spaces allowed"
            mode: Maybe
            subjectAltNames: [{type: Glob, value: "*.example.org"}]
            clientCert: {secret: cert}
        """)})
    found = [(line, path) for _, line, path, _ in map(split_violation, violations(tmp_path))]
    assert found == [
        (6, "spec.match.type"), (7, "spec.match.port"), (8, "spec.match.protocol"),
        (10, "spec.endpoints[0]"), (12, "spec.endpoints[1].port"), (13, "spec.endpoints[2]"), (14, "spec.endpoints[3]"),
        (17, "spec.tls.version.max"), (17, "spec.tls.version.min"), (18, "spec.tls.verification.clientKey"),
        (19, "spec.tls.verification.serverName"), (20, "spec.tls.verification.mode"),
        (21, "spec.tls.verification.subjectAltNames[0].type"), (22, "spec.tls.verification.clientCert"),
    ]


def _egress_cluster(directory: Path, name: str) -> dict[str, object]:
    egress = {p.name: p for p in render_all(load_and_parse(directory))}["egress"]
    [cluster] = [c for c in egress.clusters if c["name"] == f"mes:default:{name}"]
    return cluster


def _tls(cluster: dict[str, object]) -> dict[str, object]:
    return cluster["transport_socket"]["typed_config"]  # type: ignore[index, no-any-return]


def test_secured_checks_the_server_name_or_any_san_each_by_its_match_type(tmp_path: Path) -> None:
    write(tmp_path, {"external.yaml": external(f"""
        match: {{port: 443, protocol: http}}
        endpoints: [{{address: 192.0.2.7, port: 8443}}]
        tls:
          enabled: true
          version: {{min: TLS12, max: TLS13}}
          verification:
            subjectAltNames: [{{type: Prefix, value: "weather-"}}, {{value: api.weather.test}}]
            caCert: {{inline: {CA_B64}}}
        """)})
    tls = _tls(_egress_cluster(tmp_path, "weather"))
    assert "sni" not in tls  # an IP endpoint and no serverName: no server name to send, as Kuma
    context = tls["common_tls_context"]  # type: ignore[index]
    assert context["tls_params"] == {"tls_minimum_protocol_version": "TLSv1_2", "tls_maximum_protocol_version": "TLSv1_3"}
    validation = context["validation_context"]
    assert validation["trusted_ca"] == {"inline_bytes": CA_B64}
    # Kuma's meaning: the endpoint's own address exactly (no server name here), or any SAN as written.
    assert validation["match_typed_subject_alt_names"] == [
        {"san_type": kind, "matcher": matcher} for kind in ("DNS", "IP_ADDRESS")
        for matcher in ({"exact": "192.0.2.7"}, {"prefix": "weather-"}, {"exact": "api.weather.test"})
    ]


@pytest.mark.parametrize("mode, validated", [("Secured", True), ("SkipSAN", True), ("SkipCA", False), ("SkipAll", False)])
def test_version_bounds_hold_in_every_mode(tmp_path: Path, mode: str, validated: bool) -> None:
    """Kuma sets tls_params only where it verifies the chain; meshplan always (a bound the user wrote is never
    dropped: docs/policies.md)."""
    write(tmp_path, {"external.yaml": external(f"""
        match: {{port: 443}}
        endpoints: [{{address: forecast.example.org, port: 443}}]
        tls: {{enabled: true, version: {{max: TLS12}}, verification: {{mode: {mode}}}}}
        """)})
    context = _tls(_egress_cluster(tmp_path, "weather"))["common_tls_context"]  # type: ignore[index]
    assert context["tls_params"] == {"tls_maximum_protocol_version": "TLSv1_2"}
    assert ("validation_context" in context) is validated
    if mode == "SkipSAN":
        assert "match_typed_subject_alt_names" not in context["validation_context"]


def test_priorities_become_localities_and_no_priority_changes_nothing(tmp_path: Path) -> None:
    write(tmp_path, {"external.yaml": external("""
        match: {port: 80}
        endpoints:
          - {address: 192.0.2.1, port: 80, priority: 1}
          - {address: 192.0.2.2, port: 80}
          - {address: 192.0.2.3, port: 80, priority: 1}
        """)})
    localities = _egress_cluster(tmp_path, "weather")["load_assignment"]["endpoints"]  # type: ignore[index]
    assert [(loc["locality"], loc.get("priority", 0), [e["endpoint"]["address"]["socket_address"]["address"]
             for e in loc["lb_endpoints"]]) for loc in localities] == [
        ({"sub_zone": "priority-0"}, 0, ["192.0.2.2"]),
        ({"sub_zone": "priority-1"}, 1, ["192.0.2.1", "192.0.2.3"]),
    ]
    write(tmp_path, {"external.yaml": external(MINIMAL)})
    assert _egress_cluster(tmp_path, "weather")["load_assignment"]["endpoints"] == [  # type: ignore[index]
        {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "192.0.2.10", "port_value": 8080}}}}]}
    ]
