"""The front's Thrift client to one wxmgw: it drives the gateway as the MCS would.

One TCP connection per call (binary protocol, buffered transport). A pooled
connection to a gateway that restarted fails only once a request has been
written, and a StartPull retried after an ambiguous failure could start a
leg twice; a fresh connection on the loopback or LAN costs well under a
millisecond, far less than the leg it starts. Under ``gevent.monkey`` the
socket is cooperative.

Transport failures (refused, reset, timeout, garbled reply) raise
:class:`GatewayUnavailable`; a reply with a non-zero ``code`` raises
:class:`GatewayError` carrying that code (wxmgw's table: 400 invalid argument,
404 unknown leg, 409 conflict, 424 no local source, 500 internal, 503 no free
port).
"""

from __future__ import annotations

from typing import Any, Protocol

from thriftpy2.protocol import TBinaryProtocolFactory
from thriftpy2.thrift import TClient, TException
from thriftpy2.transport import TBufferedTransportFactory, TSocket

from callroute.config import GatewayAddress
from callroute.protocol import GatewayError, GatewayUnavailable
from wxmgw.thrift import wxmgw_thrift as t

UNKNOWN_LEG = 404
"""wxmgw's code for a leg it does not have: a stop of it has nothing left to do."""

AUDIO_PAYLOAD_TYPE, AUDIO_CODEC = 8, "PCMA"
"""What the MAS receives and sends: G.711 A-law, static PT 8 (RFC 3551 section 6)."""
VIDEO_PAYLOAD_TYPE, VIDEO_CODEC = 96, "H264"
"""H.264 on the first dynamic payload type (RFC 6184 section 8.2.1)."""


class GatewayApi(Protocol):
    """The five WxMgw calls, as the front uses them."""

    def start_pull(
        self, *, uuid: str, conf_id: str, pull_url: str, ssrc: int, mas_ip: str,
        audio_port: int, video_port: int, push_audio_url: str,
    ) -> None: ...

    def stop_pull(self, *, uuid: str, conf_id: str) -> None: ...

    def start_push(
        self, *, uuid: str, conf_id: str, push_url: str, req_uuid: str, weixin: bool,
    ) -> tuple[int, int]: ...

    def stop_push(self, *, uuid: str, conf_id: str) -> None: ...

    def av_sync(self, *, uuid: str, conf_id: str, sync_uuid: str) -> None: ...


class Mcs:
    """A :class:`GatewayApi` over Thrift to ``address``.

    ``timeout`` bounds each socket operation of a call; connecting gets a third
    of it, at most a second (a gateway that does not accept is down).
    """

    def __init__(self, address: GatewayAddress, timeout: float = 3.0) -> None:
        self.address = address
        self._timeout_ms = max(1, int(timeout * 1000))
        self._connect_timeout_ms = max(1, min(1000, self._timeout_ms // 3))

    def _call(self, name: str, req: Any) -> Any:
        sock = TSocket(
            self.address.host, self.address.port,
            socket_timeout=self._timeout_ms, connect_timeout=self._connect_timeout_ms,
        )
        transport = TBufferedTransportFactory().get_transport(sock)
        try:
            transport.open()
            client = TClient(t.WxMgw, TBinaryProtocolFactory().get_protocol(transport))
            resp = getattr(client, name)(req)
        except (TException, OSError, EOFError) as exc:
            raise GatewayUnavailable(
                f"wxmgw {self.address.name} {name}: {type(exc).__name__}: {exc}"
            ) from None
        finally:
            transport.close()
        if resp is None or resp.code is None:
            raise GatewayUnavailable(f"wxmgw {self.address.name} {name}: reply without code")
        if resp.code != 0:
            raise GatewayError(name, resp.code, resp.message or "")
        return resp

    def _stop(self, name: str, req: Any) -> None:
        try:
            self._call(name, req)
        except GatewayError as exc:
            if exc.gateway_code != UNKNOWN_LEG:
                raise

    def start_pull(
        self, *, uuid: str, conf_id: str, pull_url: str, ssrc: int, mas_ip: str,
        audio_port: int, video_port: int, push_audio_url: str,
    ) -> None:
        self._call("StartPull", t.StartPullReq(
            uuid=uuid, pullUrl=pull_url, ssrc=ssrc, masIp=mas_ip, audioPort=audio_port,
            videoPort=video_port, audioPayloadType=AUDIO_PAYLOAD_TYPE, audioCodec=AUDIO_CODEC,
            videoPayloadType=VIDEO_PAYLOAD_TYPE, VideoCodec=VIDEO_CODEC,
            pushAudioUrl=push_audio_url, confId=conf_id,
        ))

    def stop_pull(self, *, uuid: str, conf_id: str) -> None:
        """Stop a mini-program's legs; one the gateway does not have counts as stopped."""
        self._stop("StopPull", t.StopPullReq(uuid=uuid, confId=conf_id))

    def start_push(
        self, *, uuid: str, conf_id: str, push_url: str, req_uuid: str, weixin: bool,
    ) -> tuple[int, int]:
        """Start member ``uuid``'s Rtp2rtmp; the RTP ports (audio, video) the MAS must send to."""
        resp = self._call("StartPush", t.StartPushReq(
            uuid=uuid, pushUrl=push_url, audioPayloadType=AUDIO_PAYLOAD_TYPE,
            audioCodec=AUDIO_CODEC, videoPayloadType=VIDEO_PAYLOAD_TYPE, videoCodec=VIDEO_CODEC,
            confId=conf_id, reqUuid=req_uuid, weixin="1" if weixin else "0",
        ))
        port = resp.port
        return (port.audio or 0, port.video or 0) if port is not None else (0, 0)

    def stop_push(self, *, uuid: str, conf_id: str) -> None:
        """Stop member ``uuid``'s push; one the gateway does not have counts as stopped."""
        self._stop("StopPush", t.StopPushReq(uuid=uuid, confId=conf_id))

    def av_sync(self, *, uuid: str, conf_id: str, sync_uuid: str) -> None:
        self._call("AvSync", t.AvSyncReq(uuid=uuid, confId=conf_id, syncUuid=sync_uuid))
