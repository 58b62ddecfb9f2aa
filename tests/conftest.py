"""The whole suite runs monkey-patched, as `wxmgw serve` does: patch first, before any import."""

from gevent import monkey

monkey.patch_all()

import os  # noqa: E402

from hypothesis import HealthCheck, settings  # noqa: E402

# The fuzz properties: a short run in `make test` (about a minute in all), a
# long one in `make fuzz` (HYPOTHESIS_PROFILE=fuzz).
settings.register_profile(
    "default", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "fuzz", max_examples=20000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

import socket  # noqa: E402
from collections.abc import Iterator  # noqa: E402

import pytest  # noqa: E402

from wxmgw.ports import PortAllocator  # noqa: E402
from wxmgw.redisd import RedisServer  # noqa: E402


@pytest.fixture
def ports() -> Iterator[PortAllocator]:
    """Eight RTP port pairs on loopback, every pair still held released afterwards."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        lo = s.getsockname()[1] & ~1
    allocator = PortAllocator(lo, lo + 15, "127.0.0.1")
    yield allocator
    for port in list(allocator.in_use):
        allocator.release(allocator._in_use[port])


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server for the session (append-only, so ``restart()`` keeps the data)."""
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The session's Redis, emptied before each test."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url
