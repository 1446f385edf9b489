"""Webhook URL safety: refuse URLs that would make our workers talk to internal services.

The check runs twice: when an endpoint is registered and again right before every send,
because DNS answers change. The addresses returned by `resolve_and_check` are the only
ones a delivery may connect to (see `worker.delivery`), so a name that re-resolves to an
internal address between the check and the connect cannot redirect the request.
"""

from __future__ import annotations

import ipaddress
import socket
import string
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import idna

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[IPAddress]]

ALLOW_CIDRS_SETTING = "WEBHOOK_ALLOW_CIDRS"
MAX_URL_LENGTH = 2048
_DEFAULT_PORTS = {"http": 80, "https": 443}
_HOST_LABEL_CHARS = frozenset(string.ascii_lowercase + string.digits + "-_")
_DECIMAL = frozenset(string.digits)
_OCTAL = frozenset("01234567")
_HEX = frozenset(string.hexdigits)


class UnsafeURLError(ValueError):
    """A webhook URL we will not send to; the message is meant for the API caller."""

    def __init__(self, message: str, *, code: str, address: IPAddress | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.address = address


class UnresolvableHostError(UnsafeURLError):
    """The host has no address right now (may be temporary at send time)."""


@dataclass(frozen=True)
class ParsedURL:
    scheme: str
    host: str
    """Lower-case ASCII (IDNA) host name, or the canonical text of an IP literal."""
    port: int
    path: str
    """Path plus query string; the fragment is dropped because it is never sent."""
    ip: IPAddress | None
    """Set when the URL names an IP address, in whatever spelling."""

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if isinstance(self.ip, ipaddress.IPv6Address) else self.host
        return host if self.port == _DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        """The normalised URL; this is what should be stored and requested."""
        return f"{self.scheme}://{self.netloc}{self.path}"


@dataclass(frozen=True)
class AllowRule:
    """One `WEBHOOK_ALLOW_CIDRS` entry: internal addresses it lets webhooks reach."""

    network: IPNetwork
    port: int | None = None
    """Only this port; None means any port (a plain CIDR entry)."""
    tenant_id: str | None = None
    """Only this tenant's endpoints (a tenant UUID); None means every tenant."""

    def admits(self, address: IPAddress, port: int, tenant_id: object | None) -> bool:
        if address.version != self.network.version or address not in self.network:
            return False
        if self.port is not None and port != self.port:
            return False
        return self.tenant_id is None or (tenant_id is not None and str(tenant_id) == self.tenant_id)

    def __str__(self) -> str:
        """The entry as `WEBHOOK_ALLOW_CIDRS` spells it (parses back to an equal rule)."""
        text = str(self.network)
        if self.port is not None:
            text = f"[{text}]:{self.port}" if self.network.version == 6 else f"{text}:{self.port}"
        return f"{self.tenant_id}@{text}" if self.tenant_id else text


AllowList = Iterable[AllowRule | IPNetwork]


def parse_allow_cidrs(value: str) -> list[AllowRule]:
    """Parse `WEBHOOK_ALLOW_CIDRS`, comma-separated entries of the form `[TENANT_ID@]NETWORK[:PORT]`.

    `10.0.0.0/8` (any port, any tenant, as before), `10.1.2.3:8443` (a bare address means
    /32 or /128), `[fd00::/8]:443` (IPv6 with a port needs brackets), and
    `3f2c…-…@10.1.2.0/24:443` (only that tenant's endpoints).
    """
    rules: list[AllowRule] = []
    for item in value.split(","):
        item = item.strip()
        if item:
            rules.append(_parse_allow_entry(item))
    return rules


def _parse_allow_entry(item: str) -> AllowRule:
    def invalid(why: str) -> ValueError:
        return ValueError(
            f"{ALLOW_CIDRS_SETTING} entry {item!r} {why}; write [TENANT_ID@]NETWORK[:PORT], for example "
            "10.20.0.0/16, 10.20.0.5:8443, [fd00::/8]:443"
        )

    tenant_id: str | None = None
    rest = item
    if "@" in item:
        tenant_text, _, rest = item.partition("@")
        try:
            tenant_id = str(uuid.UUID(tenant_text.strip()))
        except ValueError:
            raise invalid(f"names tenant {tenant_text.strip()!r}, which is not a tenant id (UUID)") from None
        rest = rest.strip()
    port_text: str | None = None
    if rest.startswith("["):
        network_text, bracket, after = rest[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise invalid("has an unbalanced '[' or text after ']'")
        port_text = after[1:] if after else None
    elif rest.count(":") == 1:
        network_text, _, port_text = rest.partition(":")
    else:
        network_text = rest
    try:
        network = ipaddress.ip_network(network_text, strict=True)
    except ValueError as exc:
        raise invalid(f"is not a network in CIDR form ({exc})") from None
    port: int | None = None
    if port_text is not None:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise invalid(f"has port {port_text!r}, not a number from 1 to 65535")
        port = int(port_text)
    return AllowRule(network, port, tenant_id)


def _rules(allow: AllowList) -> list[AllowRule]:
    return [rule if isinstance(rule, AllowRule) else AllowRule(rule) for rule in allow]


def check_url_syntax(url: str) -> ParsedURL:
    """Validate a webhook URL without touching the network and normalise its host.

    IP literals are read the way browsers and curl read them (`2130706433`, `0x7f.1`,
    `0177.0.0.1`, full-width digits ...), so later checks see the real address.
    """
    if not isinstance(url, str) or not url:
        raise UnsafeURLError("The webhook URL is empty.", code="syntax")
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeURLError(
            f"The webhook URL is longer than {MAX_URL_LENGTH} characters.", code="syntax"
        )
    if any(ch <= " " or ch == "\x7f" for ch in url):
        raise UnsafeURLError(
            "The webhook URL contains spaces or control characters; percent-encode them.",
            code="syntax",
        )
    # WHATWG parsers treat "\" like "/" in http URLs, urllib does not; refusing it keeps
    # every parser agreeing on where the host ends.
    if "\\" in url:
        raise UnsafeURLError("The webhook URL contains a backslash.", code="syntax")

    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise UnsafeURLError(f"The webhook URL cannot be parsed: {exc}.", code="syntax") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise UnsafeURLError(
            "The webhook URL must start with https:// or http://"
            + (f" (got {scheme}:)." if scheme else "."),
            code="scheme",
        )
    netloc = parts.netloc
    if not netloc:
        raise UnsafeURLError("The webhook URL has no host name.", code="host")
    if "@" in netloc:
        raise UnsafeURLError(
            "The webhook URL must not contain a user name or password; "
            "authenticate the receiver with the webhook signature instead.",
            code="userinfo",
        )

    host_text, port_text = _split_host_port(netloc)
    port = _parse_port(port_text, scheme)
    ip, host = _normalise_host(host_text)

    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return ParsedURL(scheme=scheme, host=host, port=port, path=path, ip=ip)


def resolve_host(host: str, port: int) -> list[IPAddress]:
    """Every address the system resolver gives for `host`, in its order, without repeats."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnresolvableHostError(
            f"The webhook host {host!r} could not be resolved ({exc}); check the spelling "
            "and that the name is published in public DNS.",
            code="unresolvable",
        ) from None
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _canonname, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


def resolve_and_check(
    url: str, allow_cidrs: AllowList, *, resolver: Resolver | None = None, tenant_id: object | None = None
) -> tuple[ParsedURL, list[IPAddress]]:
    """Validate `url`, resolve its host and refuse it if any address is not public.

    Returns the parsed URL and the addresses a delivery may connect to (IPv4-mapped IPv6
    addresses are returned as plain IPv4). Addresses admitted by an allow rule (network,
    and the rule's port and tenant when it names them) are accepted even when internal;
    cloud metadata addresses are refused even then.
    """
    parsed = check_url_syntax(url)
    allowed = _rules(allow_cidrs)
    if parsed.ip is not None:
        addresses = [parsed.ip]
    else:
        addresses = (resolver or resolve_host)(parsed.host, parsed.port)
        if not addresses:
            raise UnresolvableHostError(
                f"The webhook host {parsed.host!r} has no addresses.", code="unresolvable"
            )

    usable: list[IPAddress] = []
    for address in addresses:
        _refuse_if_unsafe(parsed, address, allowed, tenant_id)
        connect_to = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
        target = connect_to or address
        if target not in usable:
            usable.append(target)
    return parsed, usable


def address_problem(address: IPAddress) -> str | None:
    """Why `address` is not a public internet address (None when it is)."""
    if _is_metadata(address):
        return "a cloud metadata address"
    if isinstance(address, ipaddress.IPv4Address):
        return _ipv4_problem(address)
    return _ipv6_problem(address)


# Instance metadata and platform services. Link-local or private already, except the
# Azure WireServer, but they are listed so they stay refused even inside an allow list.
_METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle, Hetzner...
        "169.254.169.253",  # AWS VPC DNS
        "169.254.169.123",  # AWS time sync
        "169.254.170.2",  # AWS ECS task metadata
        "169.254.170.23",  # AWS EKS pod identity
        "169.254.0.23",  # Tencent Cloud
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure WireServer (a public-range address)
        "192.0.0.192",  # Oracle Cloud (legacy)
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "fd00:ec2::253",
        "fd00:ec2::123",
        "fd00:ec2::23",  # AWS EKS pod identity
        "fd20:ce::254",  # GCP metadata over IPv6
    )
)

_IPV4_SPECIAL: tuple[tuple[ipaddress.IPv4Network, str], ...] = tuple(
    (ipaddress.IPv4Network(net), why)
    for net, why in (
        ("0.0.0.0/32", "the unspecified address"),
        ("0.0.0.0/8", "a 'this network' address"),
        ("127.0.0.0/8", "a loopback address"),
        ("169.254.0.0/16", "a link-local address"),
        ("10.0.0.0/8", "a private address"),
        ("172.16.0.0/12", "a private address"),
        ("192.168.0.0/16", "a private address"),
        ("100.64.0.0/10", "a shared (carrier-grade NAT) address"),
        ("224.0.0.0/4", "a multicast address"),
        ("255.255.255.255/32", "the broadcast address"),
        ("240.0.0.0/4", "a reserved address"),
        ("192.0.0.0/24", "a reserved (IETF protocol) address"),
        ("192.0.2.0/24", "a documentation address"),
        ("198.51.100.0/24", "a documentation address"),
        ("203.0.113.0/24", "a documentation address"),
        ("198.18.0.0/15", "a benchmarking address"),
        ("192.88.99.0/24", "a reserved (6to4 relay) address"),
    )
)

_IPV6_SPECIAL: tuple[tuple[ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.IPv6Network(net), why)
    for net, why in (
        ("::/128", "the unspecified address"),
        ("::1/128", "a loopback address"),
        ("::/96", "an IPv4-compatible IPv6 address (deprecated, not routable)"),
        ("64:ff9b:1::/48", "a private (local-use NAT64) address"),
        ("100::/64", "a discard-only address"),
        ("ff00::/8", "a multicast address"),
        ("fe80::/10", "a link-local address"),
        ("fec0::/10", "a private (site-local) address"),
        ("fc00::/7", "a private (unique local) address"),
        ("2001:db8::/32", "a documentation address"),
        ("3fff::/20", "a documentation address"),
        ("2001::/23", "a reserved (IETF protocol, e.g. Teredo) address"),
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")


def _ipv4_problem(address: ipaddress.IPv4Address) -> str | None:
    for network, why in _IPV4_SPECIAL:
        if address in network:
            return why
    if not address.is_global:
        return "not a public address"
    return None


def _ipv6_problem(address: ipaddress.IPv6Address) -> str | None:
    mapped = address.ipv4_mapped
    if mapped is not None:
        problem = _ipv4_problem(mapped)
        return f"{problem} (written as IPv4-mapped IPv6)" if problem else None
    for network, why in _IPV6_SPECIAL:
        if address in network:
            return why
    # Translated or tunnelled IPv4 reaches whatever IPv4 address is embedded.
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        problem = _ipv4_problem(embedded)
        return f"{problem} (embedded in an IPv6 translation address)" if problem else None
    if address not in _GLOBAL_UNICAST:
        return "not a global unicast IPv6 address"
    return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64 or address in _IPV4_COMPATIBLE:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None


def _is_metadata(address: IPAddress) -> bool:
    if address in _METADATA_ADDRESSES:
        return True
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        return embedded is not None and embedded in _METADATA_ADDRESSES
    return False


def is_internal(address: IPAddress) -> bool:
    """Not a public internet address (reached only because an allow rule admits it)."""
    return address_problem(address) is not None


def _is_allowed(address: IPAddress, allow: list[AllowRule], port: int, tenant_id: object | None) -> bool:
    candidates: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        candidates.append(address.ipv4_mapped)
    return any(rule.admits(candidate, port, tenant_id) for candidate in candidates for rule in allow)


def _refuse_if_unsafe(
    parsed: ParsedURL, address: IPAddress, allow: list[AllowRule], tenant_id: object | None
) -> None:
    problem = address_problem(address)
    if problem is None:
        return
    metadata = _is_metadata(address)
    if not metadata and _is_allowed(address, allow, parsed.port, tenant_id):
        return
    # Say which address only when the caller typed it: echoing what an internal name
    # resolves to would turn endpoint registration into a DNS lookup service.
    subject = (
        f"The webhook URL points to {address}, which is"
        if parsed.ip is not None
        else f"The webhook host {parsed.host!r} resolves to"
    )
    advice = (
        "Metadata services are never reachable from webhooks."
        if metadata
        else "Webhook endpoints must be reachable on the public internet; an administrator "
        f"can allow an internal receiver's network (and port) with {ALLOW_CIDRS_SETTING}."
    )
    raise UnsafeURLError(f"{subject} {problem}. {advice}", code="address", address=address)


def _split_host_port(netloc: str) -> tuple[str, str | None]:
    if netloc.startswith("["):
        end = netloc.find("]")
        if end == -1:
            raise UnsafeURLError("The webhook URL has an unclosed '[' in its host.", code="host")
        host, rest = netloc[: end + 1], netloc[end + 1 :]
        if rest and not rest.startswith(":"):
            raise UnsafeURLError("The webhook URL has text after its IPv6 address.", code="host")
        return host, rest[1:] if rest else None
    host, colon, port = netloc.partition(":")
    return host, port if colon else None


def _parse_port(port_text: str | None, scheme: str) -> int:
    if port_text is None:
        return _DEFAULT_PORTS[scheme]
    if not port_text or len(port_text) > 5 or not set(port_text) <= _DECIMAL:
        raise UnsafeURLError(
            f"The webhook URL port {port_text!r} is not a number from 1 to 65535.", code="port"
        )
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise UnsafeURLError(
            f"The webhook URL port {port} is not a number from 1 to 65535.", code="port"
        )
    return port


def _normalise_host(host_text: str) -> tuple[IPAddress | None, str]:
    if host_text.startswith("["):
        literal = host_text[1:-1]
        if "%" in literal:
            raise UnsafeURLError(
                "The webhook URL uses an IPv6 zone (interface) identifier.", code="host"
            )
        try:
            ip6 = ipaddress.IPv6Address(literal)
        except ValueError:
            raise UnsafeURLError(
                f"The webhook URL host [{literal}] is not a valid IPv6 address.", code="host"
            ) from None
        return ip6, str(ip6)

    if not host_text:
        raise UnsafeURLError("The webhook URL has no host name.", code="host")
    if "%" in host_text:
        raise UnsafeURLError(
            "The webhook URL host is percent-encoded; write it out plainly.", code="host"
        )
    if host_text.isascii():
        host = host_text.lower()
    else:
        try:
            host = idna.encode(host_text, uts46=True).decode("ascii")
        except idna.IDNAError as exc:
            raise UnsafeURLError(
                f"The webhook URL host {host_text!r} is not a valid domain name ({exc}).",
                code="host",
            ) from None
    if host.endswith(".") and len(host) > 1:
        host = host[:-1]

    if _ends_in_number(host):
        ip4 = _parse_ipv4(host)
        return ip4, str(ip4)

    labels = host.split(".")
    if len(host) > 253 or any(
        not label or len(label) > 63 or not set(label) <= _HOST_LABEL_CHARS for label in labels
    ):
        raise UnsafeURLError(f"The webhook URL host {host!r} is not a valid host name.", code="host")
    return None, host


def _ends_in_number(host: str) -> bool:
    # WHATWG URL: a host whose last label is numeric is an IPv4 address or invalid.
    labels = host.split(".")
    last = labels[-1]
    if not last:
        return False
    if set(last) <= _DECIMAL:
        return True
    return last[:2] in ("0x", "0X") and set(last[2:]) <= _HEX


def _parse_ipv4(host: str) -> ipaddress.IPv4Address:
    invalid = UnsafeURLError(f"The webhook URL host {host!r} is not a valid IPv4 address.", code="host")
    labels = host.split(".")
    if len(labels) > 4:
        raise invalid
    numbers = [_parse_ipv4_number(label) for label in labels]
    if any(n is None for n in numbers):
        raise invalid
    values = [n for n in numbers if n is not None]
    if any(n > 255 for n in values[:-1]) or values[-1] >= 256 ** (5 - len(values)):
        raise invalid
    packed = values[-1]
    for index, value in enumerate(values[:-1]):
        packed += value * 256 ** (3 - index)
    return ipaddress.IPv4Address(packed)


def _parse_ipv4_number(label: str) -> int | None:
    if not label:
        return None
    if label[:2] in ("0x", "0X"):
        digits = label[2:]
        if not digits:
            return 0
        return int(digits, 16) if set(digits) <= _HEX else None
    if len(label) > 1 and label[0] == "0":
        digits = label[1:]
        return int(digits, 8) if set(digits) <= _OCTAL else None
    return int(label) if set(label) <= _DECIMAL else None
