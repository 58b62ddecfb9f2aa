"""Who may call the gateway and the callroute front, and what they are shown.

Pure (standard library only), shared by ``wxmgw`` and ``callroute``:

- :class:`AllowList`: the networks whose connections the Thrift, status and
  callroute HTTP ports accept (``--allow-from``); the servers close every
  other connection at accept, with one log line.
- :func:`redact`: a stream name is the only secret a live server asks for
  (nginx-rtmp's ``on_publish`` accepts the names the front issued), so every
  RTMP URL that leaves the process in ``/monitor/state``, ``/metrics`` or a
  log line keeps only a short prefix of its stream name, enough to correlate.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_ALLOW_FROM = "127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7"
"""Loopback and the private ranges (RFC 1918, RFC 4193)."""


@dataclass(frozen=True, slots=True)
class AllowList:
    networks: tuple[Network, ...]

    @classmethod
    def parse(cls, value: str | Iterable[str]) -> AllowList:
        """``"CIDR,CIDR"`` or a list of CIDRs; ValueError names the bad one."""
        items = value.split(",") if isinstance(value, str) else value
        networks = []
        for item in items:
            text = str(item).strip()
            if not text:
                continue
            try:
                networks.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                raise ValueError(f"{text!r} is not an IP network (CIDR)") from None
        if not networks:
            raise ValueError("the allow-list names no network")
        return cls(tuple(networks))

    def allows(self, host: str) -> bool:
        """Whether a peer address (as ``accept()`` gives it) is in one of the networks.

        An IPv4 peer on a dual-stack socket (``::ffff:a.b.c.d``) is matched as
        IPv4; anything that is not an IP address is refused.
        """
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.networks)

    def __str__(self) -> str:
        return ",".join(str(n) for n in self.networks)


TOKEN_PREFIX = 8
"""Characters of a stream name kept by :func:`redact_token`: 32 bits of a 128-bit token."""

ELLIPSIS = "…"

_RTMP_URL = re.compile(
    r"(?P<head>rtmps?://[^/\s\"'\\<>]+/[^/\s\"'\\<>?]+/)(?P<rest>[^\s\"'\\<>…]+)(?P<cut>…?)",
    re.IGNORECASE,
)


def redact_token(name: str) -> str:
    """A stream name (or whatever follows an RTMP URL's app) cut to a short prefix.

    At most :data:`TOKEN_PREFIX` characters and at most half the name are
    kept, so a short name is not shown whole either.
    """
    return name[: min(TOKEN_PREFIX, len(name) // 2)] + ELLIPSIS


def _redact_match(match: re.Match[str]) -> str:
    if match["cut"]:  # redacted already
        return match[0]
    return match["head"] + redact_token(match["rest"])


def redact(text: str) -> str:
    """``text`` with the stream name (and query) of every ``rtmp://host/app/...`` URL cut."""
    return _RTMP_URL.sub(_redact_match, text) if "://" in text else text

