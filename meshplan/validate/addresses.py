"""The addresses a proxy may use, and how one is written in a URL: one rule for validate, the sandbox and apply.

A proxy's own address (its listeners and admin API), its inbound and outbound addresses, the address of the
application behind an inbound and an external service's IP endpoint must each name one host: not the unspecified
address (0.0.0.0 or ::, which means every address of the machine: Envoy would listen on all of them, two proxies on
one host would take the same ports, and nothing can be reached "at" it), not a multicast group (TCP cannot use one),
and not a scoped IPv6 address (`fe80::1%eth0`: meshplan does not carry the zone into Envoy or URLs).
"""

from __future__ import annotations

import ipaddress
import re

# An RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens, 253 characters at most.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")


def address_problem(address: str) -> str | None:
    """Why `address` cannot be a proxy's, an inbound's, an outbound's or an application's address; None if it can."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return f"must be an IP address, got {address!r}"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id is not None:
            return f"scoped IPv6 addresses (with a %zone) are not supported, got {address!r}"
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
    if ip.is_unspecified:
        return (f"{address} is the unspecified address, which stands for every address of the machine: "
                "give the one address this should use")
    if ip.is_multicast:
        return f"{address} is a multicast address: TCP cannot use it"
    return None


def endpoint_problem(address: str) -> str | None:
    """Why `address` cannot be an external service's endpoint (an IP address, as above, or a host name)."""
    try:
        ipaddress.ip_address(address)
    except ValueError:
        if len(address) <= 253 and _HOSTNAME.fullmatch(address):
            return None
        return f"must be an IP address or a host name, got {address!r}"
    return address_problem(address)


def http_url(address: str, port: int) -> str:
    """`http://host:port`, with an IPv6 address in brackets (`http://[::1]:9901`)."""
    try:
        bracketed = ipaddress.ip_address(address).version == 6
    except ValueError:
        bracketed = False  # a host name
    return f"http://[{address}]:{port}" if bracketed else f"http://{address}:{port}"
