"""Which callback URLs may be called: http(s) only, and never an internal address unless config allows it.

The host is resolved once; the sender then connects to exactly the address that was checked (no second lookup,
so a DNS answer cannot change between the check and the connection).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from sdapi.config import CallbacksConfig
from sdapi.errors import InvalidParameter

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]

# Ranges `allow_private_networks` opens: private networks users run receivers on. Loopback, link-local
# (169.254.169.254, the cloud metadata address, among them), multicast and unspecified stay closed.
_PRIVATE_NETWORKS = [
    ipaddress.ip_network(cidr)
    for cidr in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
]
# What libc's inet_aton accepts as an IPv4 address: 2130706433, 0x7f000001, 0177.0.0.1, 127.1 ...
_NUMERIC_HOST = re.compile(r"^[0-9a-fA-FxX.]+$")


class CallbackRefused(InvalidParameter):
    """The callback URL is not allowed; a 400 at submit time."""

    def __init__(self, message: str) -> None:
        super().__init__("callback_url", message)


@dataclass(frozen=True)
class CallbackTarget:
    """A checked callback URL's parts and the one address to connect to."""

    scheme: str
    host: str
    port: int
    address: str


@dataclass(frozen=True)
class CallbackPolicy:
    allow_private_networks: bool
    allowed_hosts: Sequence[str]

    @classmethod
    def from_config(cls, config: CallbacksConfig) -> CallbackPolicy:
        return cls(config.allow_private_networks, tuple(config.allowed_hosts))

    def _explicitly_allowed(self, host: str, address: IPAddress) -> bool:
        for entry in self.allowed_hosts:
            if entry.lower() == host.lower():
                return True
            try:
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                continue
        return False

    def check_address(self, host: str, address: IPAddress) -> None:
        """Raise CallbackRefused when `address` (what `host` resolved to) is internal and not allowed."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if self._explicitly_allowed(host, address):
            return
        if address.is_global and not address.is_multicast:
            return
        if self.allow_private_networks and any(address in network for network in _PRIVATE_NETWORKS):
            return
        raise CallbackRefused(
            f"callback_url 不允许：{host} 指向内部地址 {address}（回环、链路本地、私有、组播或未指定地址）。"
            "如需允许，请配置 callbacks.allowed_hosts 或 callbacks.allow_private_networks"
        )


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address a host string names literally, in any form libc accepts, or None for a name."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    if _NUMERIC_HOST.match(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def split_url(url: str) -> tuple[str, str, int]:
    """Scheme, host and port of a callback URL; raise CallbackRefused for anything but http(s)://host."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise CallbackRefused("callback_url 格式错误：不是有效的 URL") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise CallbackRefused(f"callback_url 只支持 http 或 https，收到：{parts.scheme or '(无)'}")
    if not parts.hostname:
        raise CallbackRefused("callback_url 缺少主机名")
    if parts.username or parts.password:
        raise CallbackRefused("callback_url 不能包含用户名或密码")
    return scheme, parts.hostname, port or (443 if scheme == "https" else 80)


async def system_resolver(host: str, port: int) -> list[str]:
    """Addresses of `host` from the system resolver."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def resolve_target(url: str, policy: CallbackPolicy, resolver: Resolver, timeout: float) -> CallbackTarget:
    """Check `url` and pick the address to connect to; raise CallbackRefused. Every address must pass."""
    scheme, host, port = split_url(url)
    literal = parse_ip_literal(host)
    if literal is not None:
        addresses: list[IPAddress] = [literal]
    else:
        try:
            resolved = await asyncio.wait_for(resolver(host, port), timeout=timeout)
        except (OSError, TimeoutError):
            raise CallbackRefused(f"callback_url 主机无法解析：{host}") from None
        addresses = [ipaddress.ip_address(address.split("%", 1)[0]) for address in resolved]
        if not addresses:
            raise CallbackRefused(f"callback_url 主机无法解析：{host}")
    # A name with one internal address among several is refused: the connection could land on any of them.
    for address in addresses:
        policy.check_address(host, address)
    return CallbackTarget(scheme=scheme, host=host, port=port, address=str(addresses[0]))
