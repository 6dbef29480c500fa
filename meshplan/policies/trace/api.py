"""MeshTrace's conf: one top-level `default`, parsed once (policies/conf.py) for validation and for render.

    default:
      backends: [<one backend>]          required; [] turns tracing off; more than one is Kuma's error
        - type: Zipkin | Datadog | OpenTelemetry    (may be left out when exactly one block is written)
          zipkin: {url, traceId128bit, apiVersion: httpJson | httpProto, sharedSpanContext}
          datadog: {url (http://host:port, nothing else), splitService}
          openTelemetry: {endpoint (host:port)}
      sampling: {overall, client, random}   percentages 0..100 (a number or a decimal string)
      tags: [{name, literal} | {name, header: {name, default}}]

Kuma's validator (pkg/plugins/policies/meshtrace/api/v1alpha1/validator.go) is followed; where meshplan is stricter
it is because Kuma would render a config Envoy rejects or silently change the value (docs/policies.md, MeshTrace).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from urllib.parse import SplitResult, urlsplit

from meshplan.policies.conf import ConfReader, Setting

BACKEND_TYPES = {"Zipkin": "zipkin", "Datadog": "datadog", "OpenTelemetry": "openTelemetry"}
API_VERSIONS = {"httpJson": "HTTP_JSON", "httpProto": "HTTP_PROTO"}
DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Collector:
    """Where spans go: a host (a name or an IP) and a port, over TLS or not."""

    host: str
    port: int
    tls: bool = False


@dataclass(frozen=True)
class Zipkin:
    collector: Collector
    path: str  # the collector endpoint, e.g. /api/v2/spans
    authority: str  # the Host header Envoy sends (the URL's host[:port])
    trace_id_128bit: bool
    api_version: str  # Envoy's enum: HTTP_JSON | HTTP_PROTO
    shared_span_context: bool


@dataclass(frozen=True)
class Datadog:
    collector: Collector
    split_service: bool


@dataclass(frozen=True)
class OpenTelemetry:
    collector: Collector


Backend = Zipkin | Datadog | OpenTelemetry


@dataclass(frozen=True)
class Tag:
    name: str
    literal: str | None  # a literal tag, or
    header: str | None  # a request header's value,
    header_default: str | None  # with this value when the header is missing (None: the tag is left out)


@dataclass(frozen=True)
class Conf:
    backend: Setting[Backend | None]  # None: `backends: []`, tracing off
    overall: Setting[Decimal] | None
    client: Setting[Decimal] | None
    random: Setting[Decimal] | None
    tags: Setting[tuple[Tag, ...]] | None


def parse(conf: ConfReader) -> Conf | None:
    """A `default` (or what several merged to); None when it has no (valid) `backends`."""
    conf.unknown(("backends", "sampling", "tags"))
    sampling = conf.section("sampling", _parse_sampling)
    tags = conf.entries("tags", _parse_tag, not_a_mapping="must be a mapping with `name` and `literal` or `header`")
    if not conf.required("backends"):
        return None
    raw = conf.raw["backends"]
    if isinstance(raw, list) and len(raw) > 1:
        conf.fail(f"must have zero or one backend defined, got {len(raw)} (Envoy has one tracer per connection "
                  "manager)", "backends")  # fmt: skip
        return None
    backends: Setting[tuple[Backend, ...]] | None = conf.entries("backends", _parse_backend,
                            not_a_mapping="must be a mapping with one of `zipkin`, `datadog` or `openTelemetry`")
    if backends is None or (isinstance(raw, list) and len(backends.value) != len(raw)):
        return None
    overall, client, random = sampling if sampling is not None else (None, None, None)
    backend: Backend | None = backends.value[0] if backends.value else None
    return Conf(Setting(backend, backends.origins), overall, client, random, tags)


Sampling = tuple[Setting[Decimal] | None, Setting[Decimal] | None, Setting[Decimal] | None]


def _parse_sampling(sampling: ConfReader) -> Sampling:
    sampling.unknown(("overall", "client", "random"))
    return sampling.percentage("overall"), sampling.percentage("client"), sampling.percentage("random")


def _parse_tag(tag: ConfReader) -> Tag | None:
    tag.unknown(("name", "literal", "header"))
    name = tag.text("name", required=True)
    if name is not None and not name.value:
        tag.fail("must not be empty", "name")
        name = None
    literal = tag.text("literal")
    if tag.has("header") == tag.has("literal"):
        tag.fail("must have only one type defined: `header` or `literal`")
        return None
    header = tag.section("header", _parse_header)
    if name is None or (tag.has("header") and header is None):
        return None
    if header is not None:
        return Tag(name.value, None, header[0], header[1])
    return None if literal is None else Tag(name.value, literal.value, None, None)


def _parse_header(header: ConfReader) -> tuple[str, str | None] | None:
    header.unknown(("name", "default"))
    name = header.text("name", required=True)
    default = header.text("default")
    if name is not None and not name.value:
        header.fail("must not be empty", "name")
        return None
    return None if name is None else (name.value, None if default is None else default.value)


def _parse_backend(backend: ConfReader) -> Backend | None:
    block = backend.typed_block(BACKEND_TYPES, "backend")
    if block is None:
        return None
    if block == "zipkin":
        return backend.section("zipkin", _parse_zipkin)
    if block == "datadog":
        return backend.section("datadog", _parse_datadog)
    return backend.section("openTelemetry", _parse_open_telemetry)


def _url(at: ConfReader, key: str) -> SplitResult | None:
    text = at.text(key, required=True)
    if text is None:
        return None
    if not text.value:
        at.fail("must not be empty", key)
        return None
    try:
        url = urlsplit(text.value)
        url.port  # noqa: B018 - raises on a port that is not a number or out of range
    except ValueError:
        at.fail(f"must be a valid url, got {text.value!r}", key)
        return None
    if url.scheme not in DEFAULT_PORTS or not url.hostname:
        at.fail(f"must be a valid url (http:// or https://, with a host), got {text.value!r}", key)
        return None
    return url


def _parse_zipkin(zipkin: ConfReader) -> Zipkin | None:
    zipkin.unknown(("url", "traceId128bit", "apiVersion", "sharedSpanContext"))
    url = _url(zipkin, "url")
    trace_id = zipkin.boolean("traceId128bit")
    version = zipkin.choice("apiVersion", tuple(API_VERSIONS))
    shared = zipkin.boolean("sharedSpanContext")
    if url is not None and url.path in ("", "/"):
        zipkin.fail(f"must name the collector's endpoint path (e.g. http://zipkin:9411/api/v2/spans), got "
                    f"{url.geturl()!r}: Envoy posts spans to that path", "url")  # fmt: skip
        return None
    if url is not None and (url.query or url.fragment):
        zipkin.fail("must not have a query or a fragment: Envoy posts spans to the URL's path only", "url")
        return None
    if url is None or (zipkin.has("apiVersion") and version is None):
        return None
    assert url.hostname is not None
    collector = Collector(url.hostname, url.port or DEFAULT_PORTS[url.scheme], url.scheme == "https")
    return Zipkin(collector, url.path, url.netloc.rpartition("@")[2], bool(trace_id and trace_id.value),
                  API_VERSIONS[version.value] if version else "HTTP_JSON", bool(shared and shared.value))


def _parse_datadog(datadog: ConfReader) -> Datadog | None:
    datadog.unknown(("url", "splitService"))
    url = _url(datadog, "url")
    split = datadog.boolean("splitService")
    if url is None:
        return None
    wrong = []
    if url.scheme != "http":
        wrong.append("scheme must be http")
    if url.port is None:
        wrong.append("port must be defined")
    wrong += [f"{what} must not be defined" for what, value in
              (("user", url.username), ("path", url.path), ("query", url.query), ("fragment", url.fragment)) if value]
    for problem in wrong:
        datadog.fail(problem, "url")
    if wrong:
        return None
    assert url.hostname is not None and url.port is not None
    return Datadog(Collector(url.hostname, url.port), bool(split and split.value))


def _parse_open_telemetry(otel: ConfReader) -> OpenTelemetry | None:
    otel.unknown(("endpoint", "backendRef"))
    if otel.has("backendRef"):
        otel.fail("a MeshOpenTelemetryBackend reference is not supported: meshplan has no such resource (and Kuma "
                  "sends through kuma-dp for it); write the collector's `endpoint` instead", "backendRef")
        return None
    endpoint = otel.text("endpoint", required=True)
    if endpoint is None:
        return None
    host, sep, port = endpoint.value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535 or "/" in endpoint.value:
        otel.fail(f"must be host:port (the collector's OTLP gRPC address), got {endpoint.value!r}", "endpoint")
        return None
    return OpenTelemetry(Collector(host, int(port)))
