"""The WxMgw Thrift handler: validate, dispatch, never raise.

Each method turns its request into a validated dataclass, hands it to the
conference registry and answers ``code``/``message``. A handler that raised
would make thriftpy2 drop the MCS's connection, so every error, expected or
not, becomes a reply; unexpected ones are logged with their traceback.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram

from wxmgw import requests as rq
from wxmgw.conference import Registry
from wxmgw.errors import Code, InvalidArgument, WxmgwError
from wxmgw.logs import event
from wxmgw.thrift import wxmgw_thrift as t

logger = logging.getLogger(__name__)

R = TypeVar("R")

_FIELDS = ("uuid", "confId", "reqUuid", "syncUuid", "weixin", "pullUrl", "pushUrl",
           "pushAudioUrl", "masIp", "audioPort", "videoPort", "audioCodec", "videoCodec",
           "VideoCodec", "ssrc")


class Metrics:
    """The service's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "wxmgw_requests", "Thrift requests by method and reply code", ["method", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "wxmgw_request_seconds", "Thrift request handling time", ["method"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
            registry=self.registry,
        )


class WxMgwHandler:
    def __init__(self, registry: Registry, metrics: Metrics) -> None:
        self.registry = registry
        self.metrics = metrics

    def StartPull(self, req: Any) -> Any:  # noqa: N802 (Thrift method name)
        code, message, _ = self._call("StartPull", req, lambda: self.registry.start_pull(
            rq.start_pull(req)))
        return t.StartPullResp(code=code, message=message)

    def StopPull(self, req: Any) -> Any:  # noqa: N802
        code, message, _ = self._call("StopPull", req, lambda: self.registry.stop_pull(
            rq.leg_ref(req)))
        return t.StopPullResp(code=code, message=message)

    def StartPush(self, req: Any) -> Any:  # noqa: N802
        code, message, ports = self._call("StartPush", req, lambda: self.registry.start_push(
            rq.start_push(req)))
        audio, video = ports or (0, 0)
        return t.StartPushResp(port=t.Port(audio=audio, video=video), code=code, message=message)

    def StopPush(self, req: Any) -> Any:  # noqa: N802
        code, message, _ = self._call("StopPush", req, lambda: self.registry.stop_push(
            rq.leg_ref(req)))
        return t.StopPushResp(code=code, message=message)

    def AvSync(self, req: Any) -> Any:  # noqa: N802
        code, message, _ = self._call("AvSync", req, lambda: self.registry.av_sync(
            rq.av_sync(req)))
        return t.AvSyncResp(code=code, message=message)

    def _call(self, method: str, req: Any, run: Callable[[], R]) -> tuple[int, str, R | None]:
        """Run ``run``, turning every outcome into (code, message, result) and one log line."""
        started = time.perf_counter()
        result: R | None = None
        level = logging.INFO
        error: Exception | None = None
        try:
            if req is None:
                raise InvalidArgument("request struct is missing")
            result = run()
            code, message = Code.OK, "ok"
        except WxmgwError as exc:
            code, message = exc.code, str(exc)
            level = logging.WARNING
        except Exception as exc:  # the handler never raises: see the module docstring
            code, message = Code.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"
            level, error = logging.ERROR, exc
        seconds = time.perf_counter() - started
        self.metrics.requests.labels(method, str(int(code))).inc()
        self.metrics.latency.labels(method).observe(seconds)
        fields = {f: getattr(req, f, None) for f in _FIELDS}
        fields = {k: v for k, v in fields.items() if v not in (None, "")}
        event(
            logger, "request", level, error,
            method=method, code=int(code), message=message, ms=round(seconds * 1000, 3),
            result=result,
            confId=fields.pop("confId", None), uuid=fields.pop("uuid", None),
            fields=fields,
        )
        return int(code), message, result
