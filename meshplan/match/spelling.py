"""The one spelling a policy kind is merged in, when its seed allows two.

MeshCircuitBreaker (its module's docstring): `connectionLimits` -> `connectionPool`;
`detectors.totalFailures: {consecutive: N}` -> `consecutiveTotalFailures: N`, and likewise `gatewayFailures`,
`localOriginFailures`. `match.result` merges the normalised policies, so render and `explain` see one conf; the
module's validation reads the aliases from here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from meshplan.model import Policy

Json = dict[str, Any]

POOL = "connectionPool"
POOL_ALIAS = "connectionLimits"
# nested spelling (`totalFailures: {consecutive: N}`) -> the seed's flat one (`consecutiveTotalFailures: N`)
DETECTOR_ALIASES = {
    "totalFailures": "consecutiveTotalFailures",
    "gatewayFailures": "consecutiveGatewayFailures",
    "localOriginFailures": "consecutiveLocalOriginFailures",
}


def normalise(policy: Policy) -> Policy:
    """The policy with each `to` item's `default` in the seed's spelling, and its lines under both spellings."""
    items = tuple(replace(item, default=normalise_conf(item.default)) for item in policy.to)
    lines = dict(policy.lines)
    prefix = f"{policy.spec_path}." if policy.spec_path else ""
    for item in policy.to:
        base = f"{prefix}to[{item.index}].default."
        # Nested `consecutive` lines go last, so they win over their parent's line for the flat field.
        written = sorted((path for path in policy.lines if path.startswith(base)),
                         key=lambda path: path.endswith(".consecutive"))
        for path in written:
            respelled = _respell(path[len(base):].split("."))
            if respelled is not None:
                lines[base + ".".join(respelled)] = policy.lines[path]
    return replace(policy, to=items, lines=lines)


def normalise_conf(default: Json) -> Json:
    out = dict(default)
    if POOL_ALIAS in out:
        out[POOL] = out.pop(POOL_ALIAS)  # validation makes sure the item did not write both
    outlier = out.get("outlierDetection")
    if isinstance(outlier, dict) and isinstance(outlier.get("detectors"), dict):
        detectors = dict(outlier["detectors"])
        for nested, flat in DETECTOR_ALIASES.items():
            if nested in detectors:
                value = detectors.pop(nested)
                # A null (RFC 7396: delete) stays a null under the flat name.
                detectors[flat] = value.get("consecutive") if isinstance(value, dict) else value
        out["outlierDetection"] = {**outlier, "detectors": detectors}
    return out


def _respell(parts: list[str]) -> list[str] | None:
    if parts[0] == POOL_ALIAS:
        return [POOL, *parts[1:]]
    if parts[:2] == ["outlierDetection", "detectors"] and len(parts) >= 3 and parts[2] in DETECTOR_ALIASES:
        return ["outlierDetection", "detectors", DETECTOR_ALIASES[parts[2]]]
    return None


# Per kind, what turns a policy into the spelling its merge uses.
NORMALISERS: dict[str, Callable[[Policy], Policy]] = {"MeshCircuitBreaker": normalise}
