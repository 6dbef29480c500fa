"""Kuma's initial default policies: what every mesh gets when it is created (Kuma v2.14.3, pkg/defaults/mesh), unless
its `skipCreatingInitialPolicies` names the kind or says "*".

    mesh-timeout-all-<mesh>          MeshTimeout, sidecars: outbound connect 5s, idle 1h, request 15s, stream idle
                                     30m; inbound connect 10s, idle 2h, request 0s (off), stream idle 1h, max stream 0s
    mesh-retry-all-<mesh>            MeshRetry: TCP 5 connect attempts; HTTP and gRPC 5 retries, 16s per try,
                                     back-off 25ms to 250ms
    mesh-circuit-breaker-all-<mesh>  MeshCircuitBreaker: 1024 connections, pending and requests, 3 retries (written in
                                     the seed's spelling, `connectionPool`; the seed's default policy)

Kuma's fourth, `mesh-gateways-timeout-all-<mesh>` (MeshTimeout for gateways), is not created: meshplan has no
gateways. They are ordinary policies targeting the Mesh, parsed and validated like a user's, with `KUMA_DEFAULT` as
their source (no file holds them: they show as `MeshTimeout/mesh-timeout-all-default (default)`), and they merge
before every policy a user wrote (match.matcher). A user's policy of the same kind and name replaces the default, as
in Kuma, which never overwrites an existing resource with its default.
"""

from __future__ import annotations

import copy
from typing import Any

from meshplan.errors import KUMA_DEFAULT, Violation
from meshplan.load.resources import RawResource
from meshplan.model import Mesh, Policy
from meshplan.validate.check import FieldCheck
from meshplan.validate.policy_rules import parse_policy

_MESH: dict[str, Any] = {"kind": "Mesh"}

# (kind, name prefix, spec); the name is `<prefix>-<mesh>`, as Kuma names them.
INITIAL: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("MeshTimeout", "mesh-timeout-all", {
        "targetRef": {"kind": "Mesh", "proxyTypes": ["Sidecar"]},
        "from": [{"targetRef": _MESH, "default": {
            "connectionTimeout": "10s", "idleTimeout": "2h",
            "http": {"requestTimeout": "0s", "streamIdleTimeout": "1h", "maxStreamDuration": "0s"}}}],
        "to": [{"targetRef": _MESH, "default": {
            "connectionTimeout": "5s", "idleTimeout": "1h",
            "http": {"requestTimeout": "15s", "streamIdleTimeout": "30m"}}}],
    }),
    ("MeshRetry", "mesh-retry-all", {
        "targetRef": _MESH,
        "to": [{"targetRef": _MESH, "default": {
            "tcp": {"maxConnectAttempt": 5},
            "http": {"numRetries": 5, "perTryTimeout": "16s", "backOff": {"baseInterval": "25ms", "maxInterval": "250ms"}},
            "grpc": {"numRetries": 5, "perTryTimeout": "16s", "backOff": {"baseInterval": "25ms", "maxInterval": "250ms"}},
        }}],
    }),
    ("MeshCircuitBreaker", "mesh-circuit-breaker-all", {
        "targetRef": _MESH,
        "to": [{"targetRef": _MESH, "default": {
            "connectionPool": {"maxConnections": 1024, "maxPendingRequests": 1024, "maxRequests": 1024,
                               "maxRetries": 3}}}],
    }),
)


def name_of(prefix: str, mesh: str) -> str:
    return f"{prefix}-{mesh}"


def initial_policies(mesh: Mesh, taken: set[tuple[str, str, str]]) -> list[Policy]:
    """The mesh's initial default policies, but those its `skipCreatingInitialPolicies` skips and those whose
    (kind, mesh, name) a user's policy already has (`taken`)."""
    if "*" in mesh.skip_initial_policies:
        return []
    made: list[Policy] = []
    for kind, prefix, spec in INITIAL:
        name = name_of(prefix, mesh.name)
        if kind in mesh.skip_initial_policies or (kind, mesh.name, name) in taken:
            continue
        res = RawResource(kind, mesh.name, name, "universal", copy.deepcopy(spec), ("spec",), KUMA_DEFAULT, {})
        out: list[Violation] = []
        policy = parse_policy(FieldCheck(res, out), res, mesh.name)
        if out or policy is None:  # they are constants: a violation is a bug in this module
            raise AssertionError(f"Kuma's default {kind} {name!r} does not validate: {out}")
        made.append(policy)
    return made
