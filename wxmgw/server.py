"""gevent servers: the Thrift service and the status/metrics HTTP endpoint.

The Thrift processor is hosted in a gevent ``StreamServer``, one greenlet per
MCS connection, like gunicorn's gevent worker. Every connection passes the
allow-list at accept (:mod:`wxmgw.guard`). A request is read whole by
:mod:`wxmgw.thrift_reader` within ``max_message`` bytes before thriftpy2
decodes it from memory; a connection that declares more, or sends bytes the
protocol cannot read, is closed and logged, and the service goes on answering
the others. A connection silent for ``idle_timeout`` seconds is closed; with
``max_connections`` open, a new one closes the one that has been silent the
longest (never one whose call is running), so the MCS always gets in.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from gevent.pool import Pool
from gevent.server import StreamServer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from thriftpy2.protocol import TCyBinaryProtocolFactory
from thriftpy2.thrift import TProcessor
from thriftpy2.transport import (
    TCyBufferedTransportFactory,
    TCyFramedTransportFactory,
    TCyMemoryBuffer,
    TSocket,
    TTransportException,
)

from wxmgw.access import AllowList, redact
from wxmgw.errors import ParseError
from wxmgw.guard import GuardedWSGIServer, admit, peer_name
from wxmgw.hubloop import wake_on_input
from wxmgw.logs import event
from wxmgw.service import WxMgwHandler
from wxmgw.thrift import wxmgw_thrift
from wxmgw.thrift_reader import StreamReader, read_frame, read_message

logger = logging.getLogger(__name__)

TRANSPORTS = {"buffered": TCyBufferedTransportFactory, "framed": TCyFramedTransportFactory}
READERS = {"buffered": read_message, "framed": read_frame}


class ThriftServer:
    def __init__(
        self, handler: WxMgwHandler, host: str, port: int, transport: str = "buffered", *,
        allow: AllowList, max_connections: int = 1000, idle_timeout: float = 30.0,
        max_message: int = 64 << 10,
    ) -> None:
        self.processor = TProcessor(wxmgw_thrift.WxMgw, handler)
        self.transport_factory = TRANSPORTS[transport]()
        self.read_request = READERS[transport]
        self.protocol_factory = TCyBinaryProtocolFactory()
        self.allow = allow
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.max_message = max_message
        self.in_calls = 0
        self.waiting: OrderedDict[socket.socket, _Waiting] = OrderedDict()
        """Connections not in a call, the longest silent first."""
        self.server = StreamServer((host, port), self._serve, spawn=Pool())

    @property
    def port(self) -> int:
        return int(self.server.address[1])

    def start(self) -> None:
        self.server.start()
        wake_on_input(self.server.socket)  # a connection or a request is not media: at once

    def stop(self, timeout: float = 2.0) -> None:
        self.server.stop(timeout=timeout)

    def _serve(self, sock: socket.socket, address: tuple[str, int]) -> None:
        peer = peer_name(address)
        if not admit(sock, address, self.allow, "thrift") or not self._make_room(peer):
            return
        sock.settimeout(self.idle_timeout)
        wake_on_input(sock)
        self.waiting[sock] = _Waiting(peer, time.monotonic())
        reader = StreamReader(lambda n: self._recv(sock, n))
        trans = self.transport_factory.get_transport(TSocket(sock=sock))
        proto = self.protocol_factory.get_protocol(trans)
        try:
            while True:
                request = self.read_request(reader.read, self.max_message)
                if self.waiting.pop(sock, None) is None:
                    return  # closed to make room while its last bytes arrived
                self.in_calls += 1
                try:
                    self.processor.process(
                        self.protocol_factory.get_protocol(TCyMemoryBuffer(request)), proto
                    )
                finally:
                    self.in_calls -= 1
                    self.waiting[sock] = _Waiting(peer, time.monotonic())
        except EOFError:
            pass
        except ParseError as exc:
            event(logger, "thrift_bad_input", logging.WARNING, peer=peer, reason=str(exc))
        except TTransportException as exc:
            event(logger, "thrift_connection_closed", logging.INFO, peer=peer, reason=str(exc))
        except OSError as exc:
            event(logger, "thrift_connection_closed", logging.INFO, peer=peer,
                  reason=str(exc) or type(exc).__name__)
        except Exception as exc:  # a message thriftpy2 cannot decode: drop this connection only
            event(logger, "thrift_bad_input", logging.WARNING, peer=peer,
                  reason=f"{type(exc).__name__}: {exc}")
        finally:
            self.waiting.pop(sock, None)
            trans.close()

    def _recv(self, sock: socket.socket, size: int) -> bytes:
        data = sock.recv(size)
        waiting = self.waiting.get(sock)
        if waiting is not None:
            waiting.since = time.monotonic()
            self.waiting.move_to_end(sock)
        return data

    def _make_room(self, peer: str) -> bool:
        """With ``max_connections`` open, close the longest silent; False if all are in calls."""
        if len(self.waiting) + self.in_calls < self.max_connections:
            return True
        if not self.waiting:
            event(logger, "thrift_connection_refused", logging.WARNING, peer=peer,
                  reason=f"all {self.in_calls} connections are in calls")
            return False
        idlest, waiting = self.waiting.popitem(last=False)
        event(logger, "thrift_idle_connection_closed", peer=waiting.peer,
              silent_s=round(time.monotonic() - waiting.since, 3),
              reason=f"{self.max_connections} connections open, one more from {peer}")
        with contextlib.suppress(OSError):
            idlest.shutdown(socket.SHUT_RDWR)
        return True


@dataclass(slots=True)
class _Waiting:
    peer: str
    since: float


StartResponse = Callable[[str, list[tuple[str, str]]], Any]


#: The status page for people: static HTML whose script polls /monitor/state.
STATUS_PAGE: Final = (Path(__file__).parent / "status.html").read_bytes()


class StatusServer:
    """``GET /monitor/state`` (resultCode 10000 convention), ``GET /metrics`` and ``GET /``.

    The state and the metrics are shown with every stream URL's name cut
    (:func:`wxmgw.access.redact`); ``/`` is :data:`STATUS_PAGE`, which shows
    what the state says.
    """

    def __init__(
        self, host: str, port: int, state: Callable[[], dict[str, Any]],
        registry: CollectorRegistry, *, allow: AllowList, idle_timeout: float = 30.0,
    ) -> None:
        self.state = state
        self.registry = registry
        self.server = GuardedWSGIServer(
            (host, port), self._app, name="status", allow=allow, idle_timeout=idle_timeout,
            log=None, error_log=logger,
        )

    @property
    def port(self) -> int:
        return int(self.server.address[1])

    def start(self) -> None:
        self.server.start()
        wake_on_input(self.server.socket)  # a connection or a request is not media: at once

    def stop(self, timeout: float = 1.0) -> None:
        self.server.stop(timeout=timeout)

    def _app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "")
        if method != "GET":
            return _json(start_response, "405 Method Not Allowed",
                         {"resultCode": 10405, "message": "only GET"})
        if path == "/monitor/state":
            try:
                body = {"resultCode": 10000, "message": "ok", **self.state()}
            except Exception as exc:
                event(logger, "status_failed", logging.ERROR, exc)
                body = {"resultCode": 10500, "message": f"{type(exc).__name__}: {exc}"}
            return _json(start_response, "200 OK", body)
        if path == "/":
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                                      ("Content-Length", str(len(STATUS_PAGE))),
                                      ("Cache-Control", "no-cache")])
            return [STATUS_PAGE]
        if path == "/metrics":
            data = redact(generate_latest(self.registry).decode()).encode()
            start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
            return [data]
        return _json(start_response, "404 Not Found",
                     {"resultCode": 10404, "message": "no such path"})


def _json(start_response: StartResponse, status: str, body: dict[str, Any]) -> list[bytes]:
    data = redact(json.dumps(body, default=str)).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    start_response(status, headers)
    return [data]
