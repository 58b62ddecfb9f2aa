"""Settings of ``callroute serve``: defaults < TOML file < command-line flags.

Pure (standard library and :mod:`wxmgw.access`, no sockets), so the entry point can read its
settings before ``gevent.monkey.patch_all()`` would matter. TOML keys are
the flag names with ``_`` or ``-`` (``rtmp_push_base = "rtmp://..."``,
``wxmgw = ["10.0.0.5:9090@9091", "10.0.0.6:9090"]``).
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any
from urllib.parse import urlsplit

from wxmgw.access import DEFAULT_ALLOW_FROM, AllowList

DEFAULT_STATUS_PORT = 9091
DEFAULT_ALLOW = AllowList.parse(DEFAULT_ALLOW_FROM)


@dataclass(frozen=True, slots=True)
class GatewayAddress:
    """A wxmgw: its Thrift endpoint and the HTTP port of its ``/monitor/state``."""

    host: str
    port: int
    status_port: int = DEFAULT_STATUS_PORT

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class MasAddress:
    """The MAS's RTP endpoints that every mini-program's media is sent to."""

    audio_ip: str
    audio_port: int
    video_ip: str
    video_port: int


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "0.0.0.0"
    port: int = 8800
    wxmgw: tuple[GatewayAddress, ...] = (GatewayAddress("127.0.0.1", 9090),)
    rtmp_push_base: str = "rtmp://127.0.0.1:1935/live"
    rtmp_play_base: str = ""
    """Empty: the push base."""
    mas_audio: tuple[str, int] | None = None
    mas_video: tuple[str, int] | None = None
    log_file: str | None = None
    log_format: str = "json"
    gateway_timeout: float = 3.0
    """Seconds for one Thrift call to a gateway (connecting: a third of it, at most 1 s)."""
    poll_interval: float = 2.0
    """Seconds between two polls of every gateway's ``/monitor/state``."""
    body_limit: int = 64 * 1024
    allow_from: AllowList = DEFAULT_ALLOW
    """Networks whose connections are accepted; others are closed at accept and logged."""
    idle_timeout: float = 30.0
    """Seconds a connection may stay silent before it is closed."""
    redis: str | None = None
    """``redis://HOST:PORT/DB``: conferences in Redis, gateways from its registry; None:
    conferences in this process, gateways from ``wxmgw``."""
    lease_ttl: float = 5.0
    """Seconds a front's lease on a conference lasts unless renewed (a killed front's
    conferences wait this long at most)."""
    lease_wait: float = 15.0
    """Seconds a request waits for a conference another front is changing (then 117)."""
    reconcile_interval: float = 1.0
    """Seconds between two reconciliations of every gateway (0: none)."""
    move_after: float = 5.0
    """Seconds a gateway may stay silent before its conferences move to another."""
    stop_orphans: bool = True
    """Whether reconciliation stops legs no conference needs (no: a gateway also driven
    by something else, such as an MCS)."""

    @property
    def play_base(self) -> str:
        return self.rtmp_play_base or self.rtmp_push_base

    @property
    def mas(self) -> MasAddress | None:
        """The MAS, or None for rooms that wxmgw mixes itself."""
        if self.mas_audio is None or self.mas_video is None:
            return None
        return MasAddress(*self.mas_audio, *self.mas_video)


def parse_gateway(text: str) -> GatewayAddress:
    """``HOST:PORT[@STATUSPORT]``."""
    thrift, _, status = text.strip().partition("@")
    host, sep, port = thrift.rpartition(":")
    if not sep or not host:
        raise ValueError(f"gateway {text!r} is not HOST:PORT[@STATUSPORT]")
    return GatewayAddress(
        host.strip("[]"), _port(port), _port(status) if status else DEFAULT_STATUS_PORT
    )


def _port(value: Any) -> int:
    port = int(value)
    if not 0 <= port < 65536:
        raise ValueError(f"port {value!r} out of range")
    return port


def _gateways(value: Any) -> tuple[GatewayAddress, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    gateways = tuple(parse_gateway(str(item)) for item in items if str(item).strip())
    if not gateways:
        raise ValueError("at least one wxmgw is needed")
    return gateways


def _endpoint(value: Any) -> tuple[str, int]:
    host, sep, port = str(value).rpartition(":")
    if not sep or not host:
        raise ValueError(f"{value!r} is not IP:PORT")
    number = _port(port)
    if not number:
        raise ValueError(f"{value!r}: a MAS port cannot be 0")
    return host.strip("[]"), number


def _rtmp_base(value: Any) -> str:
    """``rtmp://host[:port]/app``: nginx-rtmp's app is exactly one path segment."""
    text = str(value).rstrip("/")
    parts = urlsplit(text)
    if not text:
        return ""
    if parts.scheme not in ("rtmp", "rtmps") or not parts.hostname:
        raise ValueError(f"{value!r} is not an rtmp://host/app URL")
    if len([s for s in parts.path.split("/") if s]) != 1 or parts.query:
        raise ValueError(f"{value!r} must end with exactly one app path segment")
    return text


def _redis_url(value: Any) -> str:
    text = str(value)
    if urlsplit(text).scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"{value!r} is not a redis://HOST:PORT/DB URL")
    return text


def _log_format(value: Any) -> str:
    if value not in ("json", "text"):
        raise ValueError(f"log format {value!r} is not json or text")
    return str(value)


def _yes_no(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("yes", "true", "1"):
        return True
    if str(value).lower() in ("no", "false", "0"):
        return False
    raise ValueError(f"{value!r} is not yes or no")


def _not_negative(value: Any) -> float:
    number = float(value)
    if number < 0:
        raise ValueError(f"{value!r} must not be negative")
    return number


def _positive(kind: Callable[[Any], float]) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        number = kind(value)
        if number <= 0:
            raise ValueError(f"{value!r} must be positive")
        return number

    return check


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "host": str,
    "port": _port,
    "wxmgw": _gateways,
    "rtmp_push_base": _rtmp_base,
    "rtmp_play_base": _rtmp_base,
    "mas_audio": _endpoint,
    "mas_video": _endpoint,
    "log_file": str,
    "log_format": _log_format,
    "gateway_timeout": _positive(float),
    "poll_interval": _positive(float),
    "body_limit": _positive(int),
    "allow_from": AllowList.parse,
    "idle_timeout": _positive(float),
    "redis": _redis_url,
    "lease_ttl": _positive(float),
    "lease_wait": _positive(float),
    "reconcile_interval": _not_negative,
    "move_after": _positive(float),
    "stop_orphans": _yes_no,
}
assert set(_PARSERS) == {f.name for f in fields(Settings)}


def read_toml(path: str) -> dict[str, Any]:
    with open(path, "rb") as f:
        return tomllib.load(f)


def settings(*layers: Mapping[str, Any]) -> Settings:
    """Defaults overridden by each layer in turn; ValueError names the bad key."""
    result = Settings()
    for layer in layers:
        values = {}
        for key, raw in layer.items():
            name = key.replace("-", "_")
            if name not in _PARSERS:
                raise ValueError(f"unknown setting {key!r}")
            try:
                values[name] = _PARSERS[name](raw)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{key}: {exc}") from None
        result = replace(result, **values)
    if not result.rtmp_push_base:
        raise ValueError("rtmp_push_base is required")
    if (result.mas_audio is None) != (result.mas_video is None):
        raise ValueError("mas_audio and mas_video go together (both absent: rooms without MAS)")
    return result
