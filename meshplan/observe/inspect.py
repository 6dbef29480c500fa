"""What one proxy runs now, for `meshplan inspect` (as `istioctl proxy-config` shows it): its `/config_dump` read
through the admin API, bounded as plan's fetch is (live.py), and cut into plain rows per section.

The rows hold only what a table shows, as text; the raw resources stay for `-o json|yaml`. Nothing secret leaves
this module: Envoy redacts private keys in its dump, and `redacted` blanks every field that can hold key material
again, whatever the Envoy (or something posing as one) sent; certificates are shown by their dates and names only.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from meshplan.envoy.config_dump import NotAConfigDump, dynamic_secrets
from meshplan.envoy.types import HCM, NETWORK_FILTER_PREFIX
from meshplan.errors import FetchError
from meshplan.observe import live

SECTIONS = ("clusters", "listeners", "routes", "secrets")
REDACTED = "[redacted]"
# Every field of a Secret (or a TLS context) that can hold key material: TlsCertificate's private key, PKCS#12 bundle
# (key inside), key password and key provider; session ticket keys; a generic secret's value.
_SECRET_FIELDS = frozenset({"private_key", "pkcs12", "password", "private_key_provider", "session_ticket_keys",
                            "generic_secret"})
_TLS_CONTEXT = "UpstreamTlsContext"


@dataclass(frozen=True)
class ClusterRow:
    name: str
    type: str  # STATIC, STRICT_DNS, EDS, ... or a custom cluster type's name
    connect_timeout: str
    endpoints: str  # how many, or where they come from (EDS)
    circuit_breakers: bool
    outlier_detection: bool
    tls: str  # "-", "TLS", "mTLS", with the SNI if one is set


@dataclass(frozen=True)
class ListenerRow:
    name: str
    address: str
    filter_chains: int
    filters: tuple[str, ...]  # the network filters, in order, each once


@dataclass(frozen=True)
class RouteRow:
    listener: str
    route_config: str
    virtual_host: str
    domains: tuple[str, ...]
    match: str
    action: str
    timeout: str
    retry: str


@dataclass(frozen=True)
class SecretRow:
    name: str
    type: str  # tls certificate, trusted CA, session ticket keys, generic secret
    not_before: str
    not_after: str
    subject: str
    sans: tuple[str, ...]


@dataclass(frozen=True)
class Inspection:
    """One proxy's running dynamic resources, redacted, as read from its admin API."""

    proxy: str
    admin_url: str
    clusters: tuple[dict[str, Any], ...]
    listeners: tuple[dict[str, Any], ...]
    secrets: tuple[dict[str, Any], ...]
    warming: tuple[str, ...] = ()  # "cluster x", "listener y": received, not yet serving

    def raw(self, section: str) -> list[dict[str, Any]]:
        """The resources of one section as Envoy reports them (redacted): what `-o json|yaml` prints."""
        if section == "clusters":
            return list(self.clusters)
        if section == "listeners":
            return list(self.listeners)
        if section == "routes":
            return [{"listener": listener, **config} for listener, config in route_configs(self.listeners)]
        if section == "secrets":
            return list(self.secrets)
        raise ValueError(f"no section {section!r} (sections: {', '.join(SECTIONS)})")


def inspect_proxy(name: str, admin_url: str, *, timeout: float = live.DEFAULT_TIMEOUT,
                  max_response_bytes: int = live.DEFAULT_MAX_RESPONSE_BYTES) -> Inspection:
    """Read what the proxy `name` runs now from its admin API. FetchError if it cannot be read, or another proxy
    answers: a table of nothing would read as a proxy that runs nothing."""

    async def run() -> live.LiveResult:
        async with live.new_client(1) as client:
            return await live.fetch_proxy(client, name, admin_url, timeout=timeout,
                                          max_response_bytes=max_response_bytes, with_secrets=True)

    result = asyncio.run(run())
    if not result.ok or result.resources is None or result.config_dump is None:
        cause = result.outcome.value + (f": {result.detail}" if result.detail else "")
        raise FetchError(name, admin_url, f"cannot be inspected: {cause}")
    try:
        secrets = dynamic_secrets(result.config_dump)
    except NotAConfigDump as exc:
        raise FetchError(name, admin_url, f"cannot be inspected: bad response: {exc}") from None
    running = result.resources
    return Inspection(
        proxy=name,
        admin_url=admin_url,
        clusters=tuple(redacted(c) for c in running.clusters),
        listeners=tuple(redacted(listener) for listener in running.listeners),
        secrets=tuple(redacted(s) for s in secrets),
        warming=tuple([f"cluster {n}" for n in running.warming_clusters]
                      + [f"listener {n}" for n in running.warming_listeners]),
    )


def redacted(value: Any) -> Any:
    """`value` with every field that can hold key material replaced by "[redacted]", at any depth."""
    if isinstance(value, dict):
        return {k: REDACTED if k in _SECRET_FIELDS else redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redacted(v) for v in value]
    return value


# --- clusters -------------------------------------------------------------------------------------------------


def cluster_rows(inspection: Inspection) -> list[ClusterRow]:
    return [_cluster_row(c) for c in inspection.clusters]


def _cluster_row(cluster: Mapping[str, Any]) -> ClusterRow:
    custom = _dict(cluster.get("cluster_type"))
    kind = str(custom.get("name") or cluster.get("type") or "STATIC")  # proto-JSON leaves the default (STATIC) out
    if kind == "EDS":
        endpoints = "EDS"
    else:
        groups = _list(_dict(cluster.get("load_assignment")).get("endpoints"))
        endpoints = str(sum(len(_list(_dict(g).get("lb_endpoints"))) for g in groups))
    thresholds = _list(_dict(cluster.get("circuit_breakers")).get("thresholds"))
    return ClusterRow(
        name=str(cluster.get("name", "")),
        type=kind,
        connect_timeout=str(cluster.get("connect_timeout", "5s")),  # Envoy's default
        endpoints=endpoints,
        circuit_breakers=bool(thresholds),
        outlier_detection="outlier_detection" in cluster,
        tls=_upstream_tls(cluster),
    )


def _upstream_tls(cluster: Mapping[str, Any]) -> str:
    context = _dict(_dict(cluster.get("transport_socket")).get("typed_config"))
    if not str(context.get("@type", "")).endswith(_TLS_CONTEXT):
        return "TLS (by match)" if cluster.get("transport_socket_matches") else "-"
    common = _dict(context.get("common_tls_context"))
    mutual = bool(common.get("tls_certificates") or common.get("tls_certificate_sds_secret_configs"))
    sni = context.get("sni")
    return ("mTLS" if mutual else "TLS") + (f" sni={sni}" if sni else "")


# --- listeners ------------------------------------------------------------------------------------------------


def listener_rows(inspection: Inspection) -> list[ListenerRow]:
    return [_listener_row(listener) for listener in inspection.listeners]


def _listener_row(listener: Mapping[str, Any]) -> ListenerRow:
    chains = _filter_chains(listener)
    filters: dict[str, None] = {}  # in order, each once
    for chain in chains:
        for f in _list(chain.get("filters")):
            name = str(_dict(f).get("name", "?"))
            filters[name.removeprefix(NETWORK_FILTER_PREFIX)] = None
    return ListenerRow(str(listener.get("name", "")), _address(_dict(listener.get("address"))), len(chains),
                       tuple(filters))


def _filter_chains(listener: Mapping[str, Any]) -> list[dict[str, Any]]:
    chains = [_dict(c) for c in _list(listener.get("filter_chains"))]
    default = listener.get("default_filter_chain")
    return chains + ([_dict(default)] if default else [])


def _address(address: Mapping[str, Any]) -> str:
    socket = _dict(address.get("socket_address"))
    if socket:
        host = str(socket.get("address", ""))
        host = f"[{host}]" if ":" in host else host
        return f"{host}:{socket.get('port_value', socket.get('named_port', 0))}"
    pipe = _dict(address.get("pipe"))
    return f"unix:{pipe.get('path', '')}" if pipe else "-"


# --- routes ---------------------------------------------------------------------------------------------------


def route_configs(listeners: tuple[dict[str, Any], ...]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(listener name, route configuration) for every HTTP connection manager of every listener: its inline
    `route_config`, or `{"rds": ...}` for one it asks for by name (meshplan writes none; shown, not fetched)."""
    for listener in listeners:
        for chain in _filter_chains(listener):
            for f in _list(chain.get("filters")):
                manager = _dict(_dict(f).get("typed_config"))
                if manager.get("@type") != HCM:
                    continue
                if "route_config" in manager:
                    yield str(listener.get("name", "")), _dict(manager["route_config"])
                elif "rds" in manager:
                    yield str(listener.get("name", "")), {"rds": manager["rds"]}


def route_rows(inspection: Inspection) -> list[RouteRow]:
    rows = []
    for listener, config in route_configs(inspection.listeners):
        if "rds" in config:
            name = str(_dict(config["rds"]).get("route_config_name", "?"))
            rows.append(RouteRow(listener, name, "-", (), "-", "RDS (not read)", "-", "-"))
            continue
        for host in _list(config.get("virtual_hosts")):
            host = _dict(host)
            host_retry = _dict(host.get("retry_policy"))
            for route in _list(host.get("routes")):
                route = _dict(route)
                action = _dict(route.get("route"))
                rows.append(RouteRow(
                    listener=listener,
                    route_config=str(config.get("name", "")),
                    virtual_host=str(host.get("name", "")),
                    domains=tuple(str(d) for d in _list(host.get("domains"))),
                    match=_match(_dict(route.get("match"))),
                    action=_action(route),
                    timeout=str(action.get("timeout", "15s" if action else "-")),  # Envoy's default for a route
                    retry=_retry(_dict(action.get("retry_policy")) or host_retry),
                ))
    return rows


def _match(match: Mapping[str, Any]) -> str:
    if "prefix" in match:
        text = f"prefix {match['prefix']}"
    elif "path" in match:
        text = f"path {match['path']}"
    elif "safe_regex" in match:
        text = f"regex {_dict(match['safe_regex']).get('regex', '')}"
    elif "path_separated_prefix" in match:
        text = f"prefix {match['path_separated_prefix']} (segments)"
    elif "connect_matcher" in match:
        text = "CONNECT"
    else:
        text = "?"
    headers = [str(_dict(h).get("name", "?")) for h in _list(match.get("headers"))]
    return text + (f" + headers {', '.join(headers)}" if headers else "")


def _action(route: Mapping[str, Any]) -> str:
    action = _dict(route.get("route"))
    if "cluster" in action:
        return f"-> {action['cluster']}"
    if "weighted_clusters" in action:
        weights = [_dict(c) for c in _list(_dict(action["weighted_clusters"]).get("clusters"))]
        return "-> " + ", ".join(f"{c.get('name', '?')} ({c.get('weight', 0)})" for c in weights)
    if "cluster_header" in action:
        return f"-> cluster from header {action['cluster_header']}"
    if "redirect" in route:
        redirect = _dict(route["redirect"])
        target = redirect.get("host_redirect", "") + redirect.get("path_redirect", "")
        return f"redirect {target}".rstrip()
    if "direct_response" in route:
        return f"respond {_dict(route['direct_response']).get('status', '?')}"
    return "-"


def _retry(policy: Mapping[str, Any]) -> str:
    if not policy:
        return "-"
    tries = policy.get("num_retries", 1)  # Envoy's default
    per_try = f", {policy['per_try_timeout']} each" if "per_try_timeout" in policy else ""
    return f"{tries}x on {policy.get('retry_on', '?')}{per_try}"


# --- secrets --------------------------------------------------------------------------------------------------


def secret_rows(inspection: Inspection) -> list[SecretRow]:
    return [_secret_row(s) for s in inspection.secrets]


def _secret_row(secret: Mapping[str, Any]) -> SecretRow:
    name = str(secret.get("name", ""))
    if "tls_certificate" in secret:
        kind, source = "tls certificate", _dict(_dict(secret["tls_certificate"]).get("certificate_chain"))
    elif "validation_context" in secret:
        kind, source = "trusted CA", _dict(_dict(secret["validation_context"]).get("trusted_ca"))
    elif "session_ticket_keys" in secret:
        return SecretRow(name, "session ticket keys", "-", "-", "-", ())
    elif "generic_secret" in secret:
        return SecretRow(name, "generic secret", "-", "-", "-", ())
    else:
        return SecretRow(name, "?", "-", "-", "-", ())
    certificates, where = _certificates(source)
    if not certificates:
        return SecretRow(name, kind, "-", "-", where, ())
    first = certificates[0]  # the leaf of a chain; the first CA of a bundle
    more = f" (+{len(certificates) - 1} more)" if len(certificates) > 1 else ""
    return SecretRow(name, kind, _date(first.not_valid_before_utc), _date(first.not_valid_after_utc),
                     first.subject.rfc4514_string() + more, _sans(first))


def _certificates(source: Mapping[str, Any]) -> tuple[list[x509.Certificate], str]:
    """The certificates of an inline data source (PEM), and what to say when there are none to read."""
    if "filename" in source:
        return [], f"file {source['filename']} (on the proxy's host)"
    try:
        if "inline_bytes" in source:
            pem = base64.b64decode(str(source["inline_bytes"]), validate=True)
        elif "inline_string" in source:
            pem = str(source["inline_string"]).encode()
        else:
            return [], "-"
        return x509.load_pem_x509_certificates(pem), "-"
    except (ValueError, binascii.Error):
        return [], "not a PEM certificate"


def _sans(certificate: x509.Certificate) -> tuple[str, ...]:
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(f"{_SAN_KINDS.get(type(n), type(n).__name__)}:{n.value}" for n in names)


_SAN_KINDS: dict[type, str] = {x509.UniformResourceIdentifier: "URI", x509.DNSName: "DNS", x509.IPAddress: "IP",
                               x509.RFC822Name: "email"}


def _date(moment: Any) -> str:
    return str(moment.strftime("%Y-%m-%dT%H:%M:%SZ"))


# --- tolerant access: a dump is outside input ------------------------------------------------------------------


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
