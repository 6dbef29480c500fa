"""MeshCircuitBreaker: not implemented yet (its fields are not checked and it changes nothing)."""

from __future__ import annotations

from meshplan.check import FieldCheck
from meshplan.load import PathKey
from meshplan.model import Policy
from meshplan.policies.base import Json, ProxyBuild

KIND = "MeshCircuitBreaker"


def validate(default: Json, path: PathKey, check: FieldCheck, section: str) -> None:
    pass


def apply(build: ProxyBuild, policies: list[Policy]) -> None:
    pass
