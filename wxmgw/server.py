"""gevent servers: the Thrift service and the status/metrics HTTP endpoint.

The Thrift processor is hosted in a gevent ``StreamServer`` with a bounded
pool (one greenlet per MCS connection), like gunicorn's gevent worker. A
connection that sends bytes the protocol cannot read is closed and logged;
the service goes on answering the others.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable, Iterable
from typing import Any

from gevent.pool import Pool
from gevent.pywsgi import WSGIServer
from gevent.server import StreamServer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from thriftpy2.protocol import TCyBinaryProtocolFactory
from thriftpy2.thrift import TProcessor
from thriftpy2.transport import (
    TCyBufferedTransportFactory,
    TCyFramedTransportFactory,
    TSocket,
    TTransportException,
)

from wxmgw.logs import event
from wxmgw.service import WxMgwHandler
from wxmgw.thrift import wxmgw_thrift

logger = logging.getLogger(__name__)

TRANSPORTS = {"buffered": TCyBufferedTransportFactory, "framed": TCyFramedTransportFactory}


class ThriftServer:
    def __init__(
        self, handler: WxMgwHandler, host: str, port: int, transport: str = "buffered",
        max_connections: int = 1000, idle_timeout: float = 300.0,
    ) -> None:
        self.processor = TProcessor(wxmgw_thrift.WxMgw, handler)
        self.transport_factory = TRANSPORTS[transport]()
        self.protocol_factory = TCyBinaryProtocolFactory()
        self.idle_timeout = idle_timeout
        self.server = StreamServer((host, port), self._serve, spawn=Pool(max_connections))

    @property
    def port(self) -> int:
        return int(self.server.address[1])

    def start(self) -> None:
        self.server.start()

    def stop(self, timeout: float = 2.0) -> None:
        self.server.stop(timeout=timeout)

    def _serve(self, sock: socket.socket, address: tuple[str, int]) -> None:
        sock.settimeout(self.idle_timeout)
        tsocket = TSocket(sock=sock)
        trans = self.transport_factory.get_transport(tsocket)
        proto = self.protocol_factory.get_protocol(trans)
        peer = f"{address[0]}:{address[1]}"
        try:
            while True:
                self.processor.process(proto, proto)
        except TTransportException as exc:
            if exc.type != TTransportException.END_OF_FILE:
                event(logger, "thrift_connection_closed", logging.INFO, peer=peer, reason=str(exc))
        except (OSError, EOFError) as exc:
            event(logger, "thrift_connection_closed", logging.INFO, peer=peer, reason=str(exc))
        except Exception as exc:  # bytes the protocol cannot read: drop this connection only
            event(logger, "thrift_bad_input", logging.WARNING, peer=peer,
                  reason=f"{type(exc).__name__}: {exc}")
        finally:
            trans.close()


StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class StatusServer:
    """``GET /monitor/state`` (resultCode 10000 convention) and ``GET /metrics``."""

    def __init__(
        self, host: str, port: int, state: Callable[[], dict[str, Any]],
        registry: CollectorRegistry,
    ) -> None:
        self.state = state
        self.registry = registry
        self.server = WSGIServer((host, port), self._app, log=None, error_log=logger)

    @property
    def port(self) -> int:
        return int(self.server.address[1])

    def start(self) -> None:
        self.server.start()

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
        if path == "/metrics":
            data = generate_latest(self.registry)
            start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
            return [data]
        return _json(start_response, "404 Not Found",
                     {"resultCode": 10404, "message": "no such path"})


def _json(start_response: StartResponse, status: str, body: dict[str, Any]) -> list[bytes]:
    data = json.dumps(body, default=str).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    start_response(status, headers)
    return [data]
