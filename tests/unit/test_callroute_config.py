"""Settings: defaults, TOML, flags over TOML, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from callroute.cli import build_parser, load
from callroute.config import GatewayAddress, MasAddress, Settings, parse_gateway, settings


def test_defaults() -> None:
    s = settings()
    assert s == Settings() and (s.host, s.port) == ("0.0.0.0", 8800)
    assert s.play_base == s.rtmp_push_base and s.mas is None


def test_parse_gateway() -> None:
    assert parse_gateway("10.0.0.1:9090@9191") == GatewayAddress("10.0.0.1", 9090, 9191)
    assert parse_gateway("gw:9090") == GatewayAddress("gw", 9090, 9091)
    assert parse_gateway("[::1]:9090").host == "::1"
    for bad in ("gw", ":9090", "gw:x", "gw:70000", "gw:1@x"):
        with pytest.raises(ValueError):
            parse_gateway(bad)


def test_toml_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "front.toml"
    path.write_text(
        'port = 9000\nwxmgw = ["a:1@2", "b:3"]\nrtmp-push-base = "rtmp://live:1935/live/"\n'
        'mas_audio = "192.168.1.123:12345"\nmas_video = "192.168.1.123:12346"\n'
        'log_format = "text"\n'
    )
    args = build_parser().parse_args(
        ["serve", "--config", str(path), "--port", "9100", "--wxmgw", "c:5@6,d:7"])
    s = load(args)
    assert s.port == 9100 and s.log_format == "text"
    assert s.wxmgw == (GatewayAddress("c", 5, 6), GatewayAddress("d", 7, 9091))
    assert s.rtmp_push_base == "rtmp://live:1935/live" == s.play_base
    assert s.mas == MasAddress("192.168.1.123", 12345, "192.168.1.123", 12346)


@pytest.mark.parametrize("layer", [
    {"nope": 1},
    {"port": "x"},
    {"port": 70000},
    {"wxmgw": ""},
    {"rtmp_push_base": "http://x/live"},
    {"rtmp_push_base": "rtmp://x/live/extra"},
    {"rtmp_push_base": "rtmp://x"},
    {"rtmp_push_base": ""},
    {"mas_audio": "1.2.3.4:5"},
    {"mas_audio": "1.2.3.4:0", "mas_video": "1.2.3.4:6"},
    {"log_format": "xml"},
    {"gateway_timeout": 0},
    {"body_limit": -1},
    {"allow_from": "10.0.0.0/33"},
    {"allow_from": ""},
    {"idle_timeout": 0},
])
def test_refusals(layer: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        settings(layer)


def test_allow_from_defaults_to_loopback_and_private_ranges() -> None:
    s = settings()
    assert s.allow_from.allows("127.0.0.1") and s.allow_from.allows("10.9.8.7")
    assert not s.allow_from.allows("203.0.113.5")
    args = build_parser().parse_args(["serve", "--allow-from", "203.0.113.0/24, 127.0.0.1"])
    narrowed = load(args).allow_from
    assert narrowed.allows("203.0.113.5") and not narrowed.allows("10.9.8.7")
    assert settings({"allow-from": ["192.0.2.0/24"]}).allow_from.allows("192.0.2.1")


def test_redis_settings() -> None:
    args = build_parser().parse_args(
        ["serve", "--redis", "redis://127.0.0.1:6379/0", "--lease-ttl", "2.5"])
    s = load(args)
    assert (s.redis, s.lease_ttl, s.lease_wait) == ("redis://127.0.0.1:6379/0", 2.5, 15.0)
    assert settings().redis is None
    for bad in ({"redis": "http://x"}, {"lease_ttl": 0}, {"lease_wait": -1}):
        with pytest.raises(ValueError):
            settings(bad)
