"""Kubernetes namespaces, as Kuma v2.14.3 reads them: a resource's `metadata.namespace`, and a policy's role.

- A Kubernetes-form Dataplane may live in any namespace: Kuma labels it (and tags its inbounds) with
  `k8s.kuma.io/namespace`, and so does meshplan (`dataplane_namespace`). The universal form has no namespaces.
- A policy in the system namespace (`kuma-system`), or with none, is a `system` policy and applies mesh-wide. In any
  other namespace its role (Kuma's `kuma.io/policy-role`, `pkg/core/resources/labels/compute.go` ComputePolicyRole) is
  `workload-owner` with `from` or top-level `rules` or a single `default`, `producer` when every `to` item names a
  MeshService of its own namespace, `consumer` when none does (`policy_role`). Consumer and workload-owner policies
  configure only the dataplanes of their namespace; producer policies every client of the service; roles order the
  merge (system, producer, consumer, workload-owner: the later wins). That is `match/matcher.py`'s.
- Mesh is cluster-scoped in Kuma, and the ZoneEgress and MeshExternalServices of meshplan are mesh-wide: a namespace
  other than the system namespace is refused for them rather than ignored.
"""

from __future__ import annotations

import re
from typing import Any

from meshplan.errors import Source, Violation
from meshplan.load.resources import RawResource
from meshplan.model import (
    CONSUMER_ROLE,
    NAMESPACE_TAG,
    PRODUCER_ROLE,
    SYSTEM_NAMESPACE,
    SYSTEM_ROLE,
    WORKLOAD_OWNER_ROLE,
)
from meshplan.policies import FROM, TO

# A Kubernetes namespace name: an RFC 1123 DNS label.
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
ROLE_LABEL = "kuma.io/policy-role"  # Kuma computes it on every policy
# targetRef kinds whose `name` and `namespace` make a `to` item a producer item (Kuma's isProducerItem).
PRODUCER_KINDS = ("MeshService", "MeshHTTPRoute")


def _at(res: RawResource) -> Source:
    return Source(res.source.file, res.lines.get(("metadata", "namespace"), res.source.line))


def written_namespace(out: list[Violation], res: RawResource) -> str | None:
    """`metadata.namespace` as a checked namespace name; None when absent or wrong (then reported)."""
    if res.namespace is None:
        return None
    if not isinstance(res.namespace, str):
        out.append(Violation(_at(res), "metadata.namespace", "must be a string"))
        return None
    if not DNS_LABEL.fullmatch(res.namespace):
        out.append(Violation(_at(res), "metadata.namespace", f"{res.namespace!r} is not a Kubernetes namespace name "
                             "(at most 63 lower-case letters, digits and '-', starting and ending with a letter or digit)"))
        return None
    return res.namespace


def mesh_wide_namespace(out: list[Violation], res: RawResource) -> None:
    """Mesh (cluster-scoped in Kuma), ZoneEgress and MeshExternalService (mesh-wide in meshplan): the system namespace
    or none; any other namespace would be ignored, so it is refused."""
    namespace = written_namespace(out, res)
    if res.kind == "Mesh" and res.namespace is not None:
        out.append(Violation(_at(res), "metadata.namespace", "must not be set: a Mesh is cluster-scoped in Kuma (it "
                             "has no namespace)"))
    elif namespace is not None and namespace != SYSTEM_NAMESPACE:
        why = ("serves every mesh from the system namespace" if res.kind == "ZoneEgress" else
               "lives only in the system namespace in Kuma (its resource type is allowed there only)")
        out.append(Violation(_at(res), "metadata.namespace", f"not supported by meshplan (it would be ignored): a "
                             f"{res.kind} {why}; put it in {SYSTEM_NAMESPACE} or omit the namespace"))


def dataplane_namespace(out: list[Violation], res: RawResource, labels: dict[str, str]) -> str | None:
    """A Dataplane's namespace (Kubernetes form), and its `k8s.kuma.io/namespace` label, which Kuma computes from it:
    written by hand, the label must agree (universal form: it is refused, there are no namespaces to agree with)."""
    namespace = written_namespace(out, res) if res.form == "kubernetes" else None
    written = labels.get(NAMESPACE_TAG)
    if written is not None and written != namespace:
        field = ("metadata", "labels", NAMESPACE_TAG) if res.form == "kubernetes" else ("labels", NAMESPACE_TAG)
        line = res.lines.get(field, res.source.line)
        where = (f"metadata.namespace is {namespace!r}" if namespace is not None else
                 "this dataplane has no namespace (universal form has none; Kubernetes form: set metadata.namespace)")
        out.append(Violation(Source(res.source.file, line), ".".join(field[:-1]) + f".{NAMESPACE_TAG}",
                             f"Kuma computes this label from the dataplane's namespace, and {where}: remove it"))
    if namespace is not None:
        labels[NAMESPACE_TAG] = namespace
    return namespace


def policy_namespace(out: list[Violation], res: RawResource) -> str | None:
    """A policy's namespace when it is not the system one (None: system, none, or universal form)."""
    namespace = written_namespace(out, res)
    return None if namespace == SYSTEM_NAMESPACE else namespace


def policy_role(body: dict[str, Any], namespace: str | None, sections: frozenset[str]) -> tuple[str, str | None]:
    """Kuma's role for a policy in `namespace` (None: system), and why the spec has none (Kuma refuses it then)."""
    if namespace is None:
        return SYSTEM_ROLE, None
    to = body.get(TO) if TO in sections else None
    from_ = body.get(FROM) if FROM in sections else None
    to_items = to if isinstance(to, list) else []
    if to_items and isinstance(from_, list) and from_:
        return WORKLOAD_OWNER_ROLE, "it's not allowed to mix 'to' and 'from' arrays in the same policy (a policy " \
                                    f"outside {SYSTEM_NAMESPACE} has one role: Kuma's kuma.io/policy-role)"
    if not to_items:  # `from`, top-level `rules`, or a single `default`
        return WORKLOAD_OWNER_ROLE, None
    producers = sum(1 for item in to_items if _producer_item(item, namespace))
    if producers == len(to_items):
        return PRODUCER_ROLE, None
    if producers == 0:
        return CONSUMER_ROLE, None
    return CONSUMER_ROLE, ("it's not allowed to mix producer and consumer items in the same policy (a `to` item "
                           "naming a MeshService of the policy's own namespace makes a producer policy; any other "
                           "a consumer one)")


def _producer_item(item: Any, namespace: str) -> bool:
    ref = item.get("targetRef") if isinstance(item, dict) else None
    if not isinstance(ref, dict) or ref.get("kind") not in PRODUCER_KINDS or not ref.get("name"):
        return False
    return ref.get("namespace") in (None, "", namespace)


def check_policy_labels(out: list[Violation], res: RawResource, namespace: str | None, role: str) -> None:
    """The labels Kuma computes on a policy, written by hand in `metadata.labels`: they must say what Kuma computes
    (the role from the namespace and spec, the namespace from `metadata.namespace`), or they would be ignored."""
    for key, computed, what in ((ROLE_LABEL, role, "the policy's role, from its namespace and spec"),
                                (NAMESPACE_TAG, namespace, "the policy's namespace, from metadata.namespace")):
        written = res.labels.get(key)
        if written is None or written == computed:
            continue
        line = res.lines.get(("metadata", "labels", key), res.source.line)
        says = f"{computed!r}" if computed is not None else "unset (a system policy)"
        out.append(Violation(Source(res.source.file, line), f"metadata.labels.{key}",
                             f"Kuma computes this label as {what}, which is {says}, not {written!r}: remove it"))
