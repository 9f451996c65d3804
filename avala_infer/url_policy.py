"""The callback URL policy: where agents' webhooks may be POSTed.

A callback URL must be ``http://`` or ``https://`` with a host. Its host must not be, or resolve to, a denied
address: by default the link-local networks and the cloud metadata services, which answer with the host's
credentials to whoever asks from inside it::

    169.254.0.0/16      IPv4 link-local (AWS, GCP, Azure, OpenStack metadata at 169.254.169.254)
    fe80::/10           IPv6 link-local
    fd00:ec2::254/128   AWS metadata over IPv6
    100.100.100.200/32  Alibaba Cloud metadata
    metadata.google.internal, metadata.goog, metadata   (host names of the GCP metadata server)

Private (10/8, 172.16/12, 192.168/16, fc00::/7) and loopback addresses are allowed, for receivers on the
premises. Two environment variables change the policy, each a comma-separated list of networks (CIDR), addresses
and host names (a name starting with a dot, ``.corp.example``, covers that domain and its subdomains; ``private``
and ``loopback`` name those networks):

- ``AVALA_INFER_CALLBACK_DENY`` denies more, on top of the defaults, e.g. ``private,loopback`` to allow only public
  receivers;
- ``AVALA_INFER_CALLBACK_ALLOW`` allows what it lists even where a deny entry covers it (and only that), e.g.
  ``169.254.10.0/24`` for a receiver on a link-local network, which keeps 169.254.169.254 denied.

The policy is applied twice: when an agent's URL is set (:func:`check_callback_url`: the scheme, an address
written in the URL, a denied host name) and at every delivery (:func:`resolve_callback_host`: the host name is
resolved and refused if any of its addresses is denied; the request then goes to the addresses that were
checked, so a DNS answer that changes in between cannot redirect it). A refusal is an
:class:`~avala_infer.errors.UnsafeURLError` that names the rule and the setting that would allow it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import socket
import urllib.parse
from collections.abc import Mapping

from avala_infer.errors import ConfigError, UnsafeURLError

DENY_ENV = "AVALA_INFER_CALLBACK_DENY"
ALLOW_ENV = "AVALA_INFER_CALLBACK_ALLOW"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_DENY_NETWORKS: tuple[tuple[str, str], ...] = (
    ("169.254.0.0/16", "link-local, cloud metadata at 169.254.169.254"),
    ("fe80::/10", "IPv6 link-local"),
    ("fd00:ec2::254/128", "AWS metadata over IPv6"),
    ("100.100.100.200/32", "Alibaba Cloud metadata"),
)
DEFAULT_DENY_NAMES = ("metadata.google.internal", "metadata.goog", "metadata")
ALIASES = {
    "loopback": ("127.0.0.0/8", "::1/128"),
    "private": ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"),
}
_LEGACY_IPV4 = re.compile(r"[0-9][0-9a-fA-FxX.]*")  # 2852039166, 0xa9.0xfe.0xa9.0xfe, 169.254.43518


@dataclasses.dataclass(frozen=True)
class Rule:
    """One deny or allow entry: a network or a host name (``.domain`` for a domain), and where it came from."""

    network: Network | None
    name: str | None
    source: str  # "the default callback URL policy (why)" or the environment variable

    def covers_name(self, host: str) -> bool:
        if self.name is None:
            return False
        if self.name.startswith("."):
            return host == self.name[1:] or host.endswith(self.name)
        return host == self.name

    def covers_address(self, address: Address) -> bool:
        return self.network is not None and address.version == self.network.version and address in self.network

    def __str__(self) -> str:
        return str(self.network) if self.network is not None else str(self.name)


@dataclasses.dataclass(frozen=True)
class CallbackURLPolicy:
    """Deny rules (defaults and ``AVALA_INFER_CALLBACK_DENY``) and allow rules (``AVALA_INFER_CALLBACK_ALLOW``)."""

    deny: tuple[Rule, ...]
    allow: tuple[Rule, ...] = ()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> CallbackURLPolicy:
        """The default rules plus those of the two environment variables (read now, at every check)."""
        environ = os.environ if environ is None else environ
        deny = [
            Rule(ipaddress.ip_network(net), None, f"the default callback URL policy ({why})")
            for net, why in DEFAULT_DENY_NETWORKS
        ]
        deny += [
            Rule(None, name, "the default callback URL policy (a cloud metadata host name)")
            for name in DEFAULT_DENY_NAMES
        ]
        deny += _parse(environ.get(DENY_ENV, ""), DENY_ENV)
        return cls(tuple(deny), tuple(_parse(environ.get(ALLOW_ENV, ""), ALLOW_ENV)))

    def refusal_for_name(self, host: str) -> Rule | None:
        host = _norm_host(host)
        if any(rule.covers_name(host) for rule in self.allow):
            return None
        return next((rule for rule in self.deny if rule.covers_name(host)), None)

    def refusal_for_address(self, address: Address) -> Rule | None:
        address = _unmapped(address)
        if any(rule.covers_address(address) for rule in self.allow):
            return None
        return next((rule for rule in self.deny if rule.covers_address(address)), None)


def _parse(value: str, variable: str) -> list[Rule]:
    rules = []
    for entry in (part.strip() for part in value.split(",")):
        if not entry:
            continue
        for item in ALIASES.get(entry.lower(), (entry,)):
            try:
                network = ipaddress.ip_network(item.strip("[]"), strict=False)
            except ValueError:
                if "/" in item or ":" in item or not re.fullmatch(r"\.?[A-Za-z0-9_.-]+", item):
                    raise ConfigError(
                        f"{variable} has {item!r}, which is neither a network (CIDR, e.g. 10.0.0.0/8), an address nor "
                        f"a host name; fix that entry of the comma-separated list"
                    ) from None
                rules.append(Rule(None, _norm_host(item), variable))
            else:
                rules.append(Rule(network, None, variable))
    return rules


def _norm_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def _unmapped(address: Address) -> Address:
    """``::ffff:169.254.169.254`` is 169.254.169.254."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def literal_address(host: str) -> Address | None:
    """The address a URL's host names by itself (IPv4 in any form a resolver accepts, IPv6), else None."""
    host = _norm_host(host)
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])  # fe80::1%eth0: the zone does not matter here
    except ValueError:
        pass
    if _LEGACY_IPV4.fullmatch(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _refused(url: str, what: str, rule: Rule, entry: str | None = None) -> UnsafeURLError:
    entry = entry or what
    if rule.network is not None:
        reason = f"{what} is in {rule.network}"
    else:
        reason = f"host {what}" + ("" if rule.name == what else f" matches {rule.name}")
    if rule.source == DENY_ENV:
        how = f"remove {rule} from {DENY_ENV}, or add {entry} to {ALLOW_ENV}"
    else:
        how = f"to allow it, add {entry} to {ALLOW_ENV} (comma-separated networks, addresses and host names)"
    return UnsafeURLError(f"callback URL {url!r} is refused: {reason}, which {rule.source} denies; {how}")


def split_callback_url(url: str) -> urllib.parse.SplitResult:
    """The URL's parts if it is ``http(s)://`` with a host; else :class:`UnsafeURLError`."""
    try:
        parts = urllib.parse.urlsplit(str(url))
        parts.port  # noqa: B018 (a bad port raises here)
    except ValueError as exc:
        raise UnsafeURLError(f"callback URL {url!r} cannot be read ({exc}); give an http:// or https:// URL") from None
    if parts.scheme not in ("http", "https"):
        raise UnsafeURLError(
            f"callback URL {url!r} has {f'scheme {parts.scheme!r}' if parts.scheme else 'no scheme'}: only http:// "
            "and https:// URLs are allowed (the receiver must be a web server)"
        )
    if not parts.hostname:
        raise UnsafeURLError(f"callback URL {url!r} has no host; give one, e.g. http://127.0.0.1:8000/hooks")
    return parts


def check_callback_url(url: str, policy: CallbackURLPolicy | None = None) -> str:
    """``url`` if the policy allows it as written: http(s), and a host that is neither a denied address nor a
    denied name. Host names are not resolved here (they are at every delivery). Raises UnsafeURLError."""
    policy = policy or CallbackURLPolicy.from_env()
    parts = split_callback_url(url)
    host = _norm_host(parts.hostname)
    address = literal_address(host)
    if address is not None:
        rule = policy.refusal_for_address(address)
        if rule is not None:
            raise _refused(url, str(_unmapped(address)), rule)
    else:
        rule = policy.refusal_for_name(host)
        if rule is not None:
            raise _refused(url, host, rule)
    return str(url)


def resolve_callback_host(url: str, policy: CallbackURLPolicy | None = None) -> list[tuple]:
    """Resolve the URL's host (``socket.getaddrinfo``) and check every address it gives: UnsafeURLError if any is
    denied (one bad answer is enough: a resolver may hand out either). Returns the ``getaddrinfo`` entries to
    connect to. ``socket.gaierror`` (the name does not resolve) passes through to the caller."""
    policy = policy or CallbackURLPolicy.from_env()
    check_callback_url(url, policy)
    parts = split_callback_url(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%", 1)[0])
        rule = policy.refusal_for_address(address)
        if rule is not None:
            raise _refused(url, f"{parts.hostname} (resolved to {_unmapped(address)})", rule, str(_unmapped(address)))
    return infos
