"""A stand-in OpenTelemetry collector for tests: an OTLP/gRPC server on a loopback address that keeps every log
record and span Envoy exports to it (the LogsService and TraceService `Export` calls), decoded into plain Python.

grpcio's generic handlers serve the two services with the OpenTelemetry protobuf messages that come with xds-protos;
nothing else of a collector is there. `running_collector` starts it and stops it however the test ends; the waits
are bounded and return as soon as a matching record has arrived.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

LOGS_SERVICE = "opentelemetry.proto.collector.logs.v1.LogsService"
TRACE_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
MAX_KEPT = 10_000  # records (and spans) kept at most: a test sends a handful of requests


def plain(value: Any) -> Any:
    """An OTLP AnyValue as Python: a str, bool, int, float, bytes, list or dict (None when it is not set)."""
    which = value.WhichOneof("value")
    if which is None:
        return None
    inner = getattr(value, which)
    if which == "array_value":
        return [plain(v) for v in inner.values]
    if which == "kvlist_value":
        return {kv.key: plain(kv.value) for kv in inner.values}
    return inner


def attributes(key_values: Any) -> dict[str, Any]:
    return {kv.key: plain(kv.value) for kv in key_values}


@dataclass(frozen=True)
class LogRecord:
    resource: dict[str, Any]  # the resource's attributes (Envoy's and those the logger config adds)
    body: Any
    attributes: dict[str, Any]


@dataclass(frozen=True)
class Span:
    resource: dict[str, Any]
    name: str
    kind: int  # OTLP's SpanKind: 2 server, 3 client
    trace_id: str  # hex
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]


@dataclass
class Collector:
    """What the collector received so far (guarded by `_changed`), and where it listens."""

    address: str  # host:port, as a policy's `endpoint` writes it
    logs: list[LogRecord] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def wait_for_log(self, predicate: Callable[[LogRecord], bool], timeout: float = 15.0) -> list[LogRecord]:
        """The log records matching `predicate`, as soon as there is one (empty after `timeout` seconds)."""
        return self._wait(self.logs, predicate, timeout)

    def wait_for_span(self, predicate: Callable[[Span], bool], timeout: float = 15.0) -> list[Span]:
        """The spans matching `predicate`, as soon as there is one; Envoy's tracer flushes every 5 seconds (or after
        5 spans), so the default wait is long, but bounded."""
        return self._wait(self.spans, predicate, timeout)

    def _wait(self, items: list[Any], predicate: Callable[[Any], bool], timeout: float) -> list[Any]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [item for item in items if predicate(item)]
                left = deadline - time.monotonic()
                if found or left <= 0:
                    return found
                self._changed.wait(timeout=left)

    def _keep(self, items: list[Any], new: list[Any]) -> None:
        with self._changed:
            items.extend(new[: max(0, MAX_KEPT - len(items))])
            self._changed.notify_all()

    def export_logs(self, request: Any, context: Any) -> Any:
        records = [LogRecord(attributes(resource_logs.resource.attributes), plain(record.body),
                             attributes(record.attributes))
                   for resource_logs in request.resource_logs
                   for scope_logs in _scoped(resource_logs, "scope_logs", "instrumentation_library_logs")
                   for record in _scoped(scope_logs, "log_records", "logs")]  # fmt: skip
        self._keep(self.logs, records)
        return logs_service_pb2.ExportLogsServiceResponse()

    def export_traces(self, request: Any, context: Any) -> Any:
        spans = [Span(attributes(resource_spans.resource.attributes), span.name, span.kind, span.trace_id.hex(),
                      span.span_id.hex(), span.parent_span_id.hex(), attributes(span.attributes))
                 for resource_spans in request.resource_spans
                 for scope_spans in _scoped(resource_spans, "scope_spans", "instrumentation_library_spans")
                 for span in scope_spans.spans]  # fmt: skip
        self._keep(self.spans, spans)
        return trace_service_pb2.ExportTraceServiceResponse()


def _scoped(message: Any, name: str, older: str) -> Any:
    """A repeated field by its current OTLP name, or by the name the installed (older, wire-compatible) messages
    give the same field number (`instrumentation_library_logs` is today's `scope_logs`, field 2)."""
    return getattr(message, name) if name in message.DESCRIPTOR.fields_by_name else getattr(message, older)


@contextmanager
def running_collector(ip: str, port: int) -> Iterator[Collector]:
    """A collector serving OTLP/gRPC (plaintext, HTTP/2) on ip:port, stopped on the way out."""
    collector = Collector(f"{ip}:{port}")
    handlers = [
        grpc.method_handlers_generic_handler(LOGS_SERVICE, {"Export": grpc.unary_unary_rpc_method_handler(
            collector.export_logs, request_deserializer=logs_service_pb2.ExportLogsServiceRequest.FromString,
            response_serializer=logs_service_pb2.ExportLogsServiceResponse.SerializeToString)}),
        grpc.method_handlers_generic_handler(TRACE_SERVICE, {"Export": grpc.unary_unary_rpc_method_handler(
            collector.export_traces, request_deserializer=trace_service_pb2.ExportTraceServiceRequest.FromString,
            response_serializer=trace_service_pb2.ExportTraceServiceResponse.SerializeToString)}),
    ]  # fmt: skip
    with ThreadPoolExecutor(max_workers=4) as pool:
        server = grpc.server(pool, handlers=handlers, options=[("grpc.so_reuseport", 0)])
        if server.add_insecure_port(f"{ip}:{port}") != port:
            raise RuntimeError(f"the stand-in collector could not listen on {ip}:{port}")
        server.start()
        try:
            yield collector
        finally:
            server.stop(grace=1).wait(timeout=5)
