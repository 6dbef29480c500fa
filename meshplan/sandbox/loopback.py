"""What a local sandbox will listen on, and whether this machine lets it: loopback only, one owner per socket, free.

Checked before anything starts, and every problem reported at once: a half-started sandbox that fails on its third
Envoy teaches less than a list of the three addresses to change.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from meshplan.envoy.types import listener_addresses
from meshplan.errors import SandboxError
from meshplan.model import Desired, ProxyConfig
from meshplan.validate.addresses import address_problem, endpoint_problem

APP = "app"
EXTERNAL = "external"

LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


@dataclass(frozen=True)
class LocalApp:
    """A demo app (behind an inbound) or an external-service stand-in that the sandbox runs."""

    role: str  # app | external
    service: str
    instance: str
    address: str  # always a loopback IP, even when the desired state names `localhost`
    port: int
    owner: str  # what asked for it, for messages

    @property
    def name(self) -> str:
        return f"{self.service}/{self.instance}"


def is_loopback_ip(host: str) -> bool:
    try:
        return ipaddress.ip_address(host) in LOOPBACK
    except ValueError:
        return False


def _loopback_ip(host: str) -> str | None:
    """The loopback IPv4 address to listen on for `host`, or None if it is (or resolves to) anything else."""
    if is_loopback_ip(host):
        return host
    try:
        ipaddress.ip_address(host)
        return None  # an IP, not loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, family=socket.AF_INET, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return None
    ips = sorted({str(info[4][0]) for info in infos})
    return ips[0] if ips and all(is_loopback_ip(ip) for ip in ips) else None


def _local_apps(desired: Desired, problems: list[str]) -> list[LocalApp]:
    apps: dict[tuple[str, int], LocalApp] = {}

    def want(role: str, service: str, instance: str, host: str, port: int, owner: str) -> None:
        problem = endpoint_problem(host)
        if problem is not None:
            problems.append(f"{owner}: {problem}")
            return
        ip = _loopback_ip(host)
        if ip is None:
            problems.append(f"{owner}: {host}:{port} is not a loopback address (127.0.0.0/8)")
            return
        app = LocalApp(role, service, instance, ip, port, owner)
        other = apps.setdefault((ip, port), app)
        # Two inbounds on one address:port share the app they both declare; two services cannot.
        if other.service != app.service:
            problems.append(f"{app.owner} and {other.owner} both need an app on {ip}:{port}")

    for dp in desired.dataplanes:
        for inbound in dp.inbounds:
            owner = f"dataplane {dp.name} inbound {inbound.port} ({inbound.service})"
            want(APP, inbound.service, dp.name, inbound.service_address, inbound.service_port, owner)
    for mes in desired.external_services:
        for endpoint in mes.endpoints:
            instance = f"{endpoint.address}:{endpoint.port}"
            owner = f"external service {mes.name} endpoint {instance}"
            want(EXTERNAL, mes.name, instance, endpoint.address, endpoint.port, owner)
    return list(apps.values())


def _check_sockets(proxies: list[ProxyConfig], apps: list[LocalApp], problems: list[str]) -> None:
    owners: dict[tuple[str, int], str] = {}

    def claim(address: str, port: int, owner: str) -> None:
        problem = address_problem(address)  # the rule validate applies too: the same answer for 0.0.0.0 everywhere
        if problem is not None:
            problems.append(f"{owner}: {problem}")
            return
        if not is_loopback_ip(address):
            problems.append(f"{owner}: {address}:{port} is not a loopback address (127.0.0.0/8)")
            return
        if port == 0:
            return
        # Envoy listeners set SO_REUSEPORT, so a second Envoy on the same address would share it without an error.
        if (address, port) in owners:
            problems.append(f"{owner} and {owners[(address, port)]} both use {address}:{port}")
            return
        owners[(address, port)] = owner

    names = [p.name for p in proxies]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"proxy name {name} is used more than once")
    for proxy in proxies:
        claim(proxy.address, proxy.admin_port, f"admin of proxy {proxy.name}")
        for listener in proxy.listeners:
            for address, port in listener_addresses(listener):
                claim(address, port, f"listener {listener.get('name')} of proxy {proxy.name}")
    for app in apps:
        claim(app.address, app.port, app.owner)
    if problems:
        return  # a taken port is worth reporting only once the plan itself is sound
    for (address, port), owner in owners.items():
        if not _port_free(address, port):
            problems.append(f"{owner}: {address}:{port} is already in use on this machine")


def _port_free(address: str, port: int) -> bool:
    # SO_REUSEADDR as Envoy and the demo app use it: a TIME_WAIT left by an earlier sandbox is no obstacle,
    # a listening socket is.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError:
            return False
    return True


def free_port(address: str) -> int:
    """A port nothing listens on at `address` now (the caller binds it soon after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((address, 0))
        return int(probe.getsockname()[1])


def preflight(desired: Desired, proxies: list[ProxyConfig]) -> list[LocalApp]:
    """The apps a sandbox of these proxies needs, once every socket it will open is known to be possible."""
    problems: list[str] = []
    apps = _local_apps(desired, problems)
    _check_sockets(proxies, apps, problems)
    if problems:
        raise SandboxError("cannot start the sandbox:\n" + "\n".join(f"  {p}" for p in problems))
    return apps
