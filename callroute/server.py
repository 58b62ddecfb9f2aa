"""The callroute front's HTTP server (gevent pywsgi).

- ``POST /``: one JSON message of callroutegw; the reply is the body (HTTP 200,
  errors in-band as the seed's error reply).
- ``POST /rtmp/on_publish``, ``POST /rtmp/on_play``: nginx-rtmp ``notify``
  hooks (form fields ``app``, ``name``, ``addr``, ...; a query string works
  too, for ``notify_method get``). 2xx allows, 403 denies (nginx-rtmp treats
  any non-2xx/3xx as a refusal). Publishing is allowed only on a stream name
  the front issued (a member's camera, a mix or a member video) in the app of
  ``--rtmp-push-base``; playing only on such a name in the app of the push or
  the play base.
- ``GET /monitor/state``: the front's own state for operators; ``GET /metrics``
  its Prometheus metrics (:mod:`callroute.metrics`).

HTTP-level failures also answer in the error format, with a fitting status:
405 (120) for a wrong HTTP method, 413 (119) for a body over the limit, 404
(121) for an unknown path. Nothing answers with a traceback: an unexpected
exception is logged and answered 123.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import gevent
from gevent.event import Event
from gevent.pool import Pool
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from callroute.front import Front
from callroute.gateways import Gateways
from callroute.metrics import FrontMetrics
from callroute.protocol import (
    BodyTooLarge,
    CallrouteError,
    ErrorCode,
    Header,
    HttpMethodNotAllowed,
    InvalidFormat,
    NotFound,
    StoreUnavailable,
    decode,
    encode,
    error_reply,
    parse_request,
    reply,
)
from callroute.reconcile import Reconciler
from callroute.rooms import Stream
from wxmgw.access import AllowList, redact_token
from wxmgw.guard import GuardedWSGIServer
from wxmgw.logs import event
from wxmgw.supervise import Worker

logger = logging.getLogger(__name__)

DEFAULT_BODY_LIMIT = 64 * 1024
RESULT_OK = 10000

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
Environ = dict[str, Any]

_STATUS = {
    ErrorCode.BODY_TOO_LARGE: "413 Payload Too Large",
    ErrorCode.HTTP_METHOD: "405 Method Not Allowed",
    ErrorCode.NOT_FOUND: "404 Not Found",
}


def rtmp_app(base: str) -> str:
    """The nginx-rtmp application of an ``rtmp://host[:port]/app`` base URL."""
    return urlsplit(base).path.strip("/")


class App:
    """The WSGI application of the front."""

    def __init__(
        self, front: Front, body_limit: int = DEFAULT_BODY_LIMIT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.front = front
        self.body_limit = body_limit
        self._clock = clock
        self.metrics = FrontMetrics(front)
        push_app = rtmp_app(front.config.push_base)
        self._publish_apps = {push_app}
        self._play_apps = {push_app, rtmp_app(front.config.play_base)}

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path, verb = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "")
        if path == "/rtmp/on_publish":
            return self._notify(environ, start_response, "publish", self._publish_apps)
        if path == "/rtmp/on_play":
            return self._notify(environ, start_response, "play", self._play_apps)
        if path == "/monitor/state" and verb == "GET":
            return _json(start_response, "200 OK", self.state())
        if path == "/metrics" and verb == "GET":
            data = generate_latest(self.metrics.registry)
            start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST),
                                      ("Content-Length", str(len(data)))])
            return [data]
        if path == "/":
            return self._message(environ, start_response)
        error = NotFound(f"no {path[:100]!r} here")
        return _json(start_response, _STATUS[error.code], error_reply(Header(), error))

    def state(self) -> dict[str, Any]:
        try:
            counts: dict[str, Any] = self.front.rooms.counts()
        except StoreUnavailable as exc:
            counts = {"storeError": str(exc)}
        return {"resultCode": RESULT_OK, **counts, "gateways": self.front.gateways.snapshot()}

    def _body(self, environ: Environ) -> bytes:
        stream = environ["wsgi.input"]
        length = environ.get("CONTENT_LENGTH") or ""
        if length:
            # RFC 9110 §8.6: ASCII digits; 19 of them hold any 63-bit length.
            if not (length.isascii() and length.isdecimal()) or len(length) > 19:
                raise InvalidFormat("bad Content-Length")
            if int(length) > self.body_limit:
                raise BodyTooLarge(f"body over {self.body_limit} bytes")
            data: bytes = stream.read(int(length))
            return data
        data = stream.read(self.body_limit + 1)
        if len(data) > self.body_limit:
            raise BodyTooLarge(f"body over {self.body_limit} bytes")
        return data

    def _message(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        started = self._clock()
        header, conf_id = Header(), None
        try:
            if environ.get("REQUEST_METHOD") != "POST":
                raise HttpMethodNotAllowed("only POST is served on /")
            message = decode(self._body(environ))
            header = Header.of(message)
            req = parse_request(message)
            conf_id = req.conf_id
            answer, code = reply(header, self.front.handle(req)), "0"
        except CallrouteError as exc:
            answer, code = error_reply(header, exc), exc.code.value
        except Exception as exc:
            event(logger, "internal_error", logging.ERROR, exc, confId=conf_id,
                  uuid=header.uuid or None, method=header.method.strip() or None)
            answer, code = error_reply(header, CallrouteError("internal error")), "123"
        seconds = self._clock() - started
        self.metrics.message(header.method.strip(), code, seconds)
        event(logger, "request", confId=conf_id, uuid=header.uuid or None,
              method=header.method.strip() or None, code=code,
              message=answer["result"].get("message") if code != "0" else None,
              duration_ms=round(seconds * 1000, 2))
        status = _STATUS.get(ErrorCode(code), "200 OK") if code != "0" else "200 OK"
        headers = [("Allow", "POST")] if code == ErrorCode.HTTP_METHOD else []
        return _json(start_response, status, answer, headers)

    def _notify(
        self, environ: Environ, start_response: StartResponse, call: str, apps: set[str],
    ) -> Iterable[bytes]:
        fields = dict(parse_qsl(environ.get("QUERY_STRING", "")))
        try:
            if environ.get("REQUEST_METHOD") == "POST":
                fields.update(parse_qsl(self._body(environ).decode("utf-8", "replace")))
        except CallrouteError:
            fields.clear()
        name, app = fields.get("name", ""), fields.get("app", "")
        try:
            stream: Stream | None = self.front.rooms.stream(name) if app in apps else None
        except StoreUnavailable as exc:  # refused: the publisher or player tries again
            event(logger, f"rtmp_{call}_unchecked", logging.ERROR, error=str(exc))
            stream = None
        event(logger, f"rtmp_{call}", confId=stream.conf_id if stream else None,
              uuid=stream.uuid if stream else None, kind=stream.kind.value if stream else None,
              app=app[:100], stream=redact_token(name[:100]), addr=fields.get("addr"),
              allowed=stream is not None)
        self.metrics.notify.labels(call, str(stream is not None).lower()).inc()
        status = "200 OK" if stream is not None else "403 Forbidden"
        start_response(status, [("Content-Type", "text/plain"), ("Content-Length", "0")])
        return [b""]


def _json(
    start_response: StartResponse, status: str, body: dict[str, Any],
    extra: list[tuple[str, str]] | None = None,
) -> Iterable[bytes]:
    data = encode(body)
    start_response(status, [
        ("Content-Type", "application/json; charset=utf-8"),
        ("Content-Length", str(len(data))),
        *(extra or []),
    ])
    return [data]


def _reconcile_crashed(error: BaseException, retry_in: float) -> None:
    event(logger, "reconcile_crashed", logging.ERROR, exc=error, retryIn=retry_in)


def _poll_forever(gateways: Gateways, interval: float) -> None:
    while True:
        gevent.sleep(interval)
        gateways.poll_once()


def run(
    app: App, host: str, port: int, *, allow: AllowList, idle_timeout: float = 30.0,
    poll_interval: float = 2.0, reconciler: Reconciler | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT, then drain the requests in flight (5 s at most)."""
    server = GuardedWSGIServer(
        (host, port), app, name="callroute", allow=allow, idle_timeout=idle_timeout,
        log=None, error_log=logging.getLogger("callroute.http"), spawn=Pool(1000),
    )
    app.front.gateways.poll_once()
    poller = gevent.spawn(_poll_forever, app.front.gateways, poll_interval)
    reconciling = None if reconciler is None else Worker(reconciler.run_forever, _reconcile_crashed)
    stop = Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, stop.set)
    server.start()
    event(logger, "listening", host=host, port=server.server_port,
          gateways=[g["gateway"] for g in app.front.gateways.snapshot()])
    stop.wait()
    event(logger, "stopping")
    server.stop(timeout=5)
    poller.kill()
    if reconciling is not None:
        reconciling.kill()
