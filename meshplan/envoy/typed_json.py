"""An Envoy resource written as JSON or YAML (a MeshProxyPatch `value`), read as its proto type: checked with the
xds-protos types and given back in proto JSON with proto field names, the form meshplan renders its own resources in.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format, message_factory

from meshplan.compare.canonical import CanonicalError, message_descriptor

Json = dict[str, Any]

# The Envoy type of each resource a MeshProxyPatch modification names.
TYPE_URLS = {
    "cluster": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    "listener": "type.googleapis.com/envoy.config.listener.v3.Listener",
    "networkFilter": "type.googleapis.com/envoy.config.listener.v3.Filter",
    "httpFilter": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter",
    "virtualHost": "type.googleapis.com/envoy.config.route.v3.VirtualHost",
}


def envoy_form(resource: Json, type_url: str) -> Json:
    """`resource` parsed as the Envoy type (every `@type` inside it known), back in proto JSON with proto field
    names; ValueError saying what does not parse."""
    _know_types(resource)
    try:
        message = message_factory.GetMessageClass(message_descriptor(type_url))()
        json_format.ParseDict(resource, message)
    except (json_format.ParseError, CanonicalError) as exc:
        raise ValueError(str(exc).replace("\n", " ")) from None
    out: Json = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return out


def _know_types(node: Any) -> None:
    """Load the message type of every `@type` in `node` (an Any's type outside the usual set)."""
    if isinstance(node, dict):
        url = node.get("@type")
        if isinstance(url, str):
            try:
                message_descriptor(url)
            except CanonicalError as exc:
                raise ValueError(str(exc)) from None
        for value in node.values():
            _know_types(value)
    elif isinstance(node, list):
        for value in node:
            _know_types(value)
