"""What every server of wxmgw and of the callroute front does at accept.

A connection from outside the allow-list is closed before a byte of it is
read, with one log line naming the peer; an admitted one gets a timeout on
every read, so a silent peer holds its greenlet and socket for seconds, not
for ever.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from gevent.pywsgi import WSGIHandler, WSGIServer

from wxmgw.access import AllowList
from wxmgw.logs import event

logger = logging.getLogger(__name__)


def peer_name(address: Any) -> str:
    """``host:port`` (``[v6]:port``) of an ``accept()`` address."""
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return str(address)


def admit(sock: socket.socket, address: Any, allow: AllowList, server: str) -> bool:
    """Whether the peer may talk to ``server``; if not, its socket is closed and logged."""
    host = address[0] if isinstance(address, tuple) and address else ""
    if allow.allows(str(host)):
        return True
    event(logger, "connection_refused", logging.WARNING, server=server, peer=peer_name(address))
    sock.close()
    return False


class _Handler(WSGIHandler):
    def _handle_client_error(self, ex: BaseException) -> Any:
        """pywsgi's hook for bad client input: a request still unfinished after the idle
        timeout is closed unanswered with one log line, not a traceback on stderr."""
        if isinstance(ex, TimeoutError):
            event(logger, "http_request_timeout", server=self.server.name,
                  peer=peer_name(self.client_address))
            return None
        return super()._handle_client_error(ex)


class GuardedWSGIServer(WSGIServer):
    """gevent's pywsgi behind :func:`admit`, every read bounded by ``idle_timeout`` seconds."""

    handler_class = _Handler

    def __init__(
        self, listener: tuple[str, int], application: Any, *, name: str, allow: AllowList,
        idle_timeout: float, **kwargs: Any,
    ) -> None:
        super().__init__(listener, application, **kwargs)
        self.name = name
        self.allow = allow
        self.idle_timeout = idle_timeout

    def handle(self, sock: socket.socket, address: Any) -> None:
        if admit(sock, address, self.allow, self.name):
            sock.settimeout(self.idle_timeout)
            super().handle(sock, address)
