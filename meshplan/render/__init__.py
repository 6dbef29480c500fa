"""Render: the desired mesh -> the Envoy resources every proxy should run (pure: certificates are SDS secrets,
named only). Each proxy is built in two steps: its base resources (sidecar.py, egress.py), then every policy module
in the registry's order (proxies.py), each changing only what is already there and recording which policy set
which field.
"""
