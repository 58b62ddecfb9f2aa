"""Type stub of the compiled ``flvframes.pyx``."""

from collections.abc import Callable
from typing import Final, Protocol

from wxmgw.media.clock import LiveTimeline
from wxmgw.media.endpoint import LatencyWindow, RtmpStats
from wxmgw.media.frames import AudioFrame, VideoFrame
from wxmgw.rtmp.chunk import Message

AUDIO_GAP: Final[float]
MAX_LAG: Final[float]

class FrameOwner(Protocol):
    """What :meth:`FlvToFrames.deliver` uses of the session's owner.

    Per audio or video message: ``stats.packets`` and ``stats.bytes``, one
    ``latency[kind]`` sample (from the message's conversion to its frames'
    callbacks' return) and ``last_media[kind]`` (``time.perf_counter()``).
    Per frame: ``stats.frames``, then ``on_video`` or ``on_audio``. Per
    message of a codec other than H.264 or AAC: ``unsupported``, and the
    message is skipped. A message whose conversion raises ``ParseError`` or
    ``MediaError`` is skipped and given to ``skipped``. ``caught_up`` comes
    when audio flows again after backlog was dropped.
    """

    stats: RtmpStats
    latency: dict[str, LatencyWindow]
    last_media: dict[str, float]
    on_video: Callable[[VideoFrame], None]
    on_audio: Callable[[AudioFrame], None]
    def unsupported(self, kind: str, codec: str) -> None: ...
    def skipped(self, kind: str, error: Exception) -> None: ...
    def caught_up(self, flv: FlvToFrames) -> None: ...

class FlvToFrames:
    @property
    def timeline(self) -> LiveTimeline: ...
    @property
    def audio_dropped(self) -> float: ...
    def __init__(self, audio_rate: int, max_backlog: float) -> None: ...
    def deliver(
        self, owner: FrameOwner, messages: list[Message], arrival: float
    ) -> list[Message]: ...
    def video(self, dts_ms: int, body: bytes, arrival: float) -> VideoFrame | None: ...
    def audio(self, ms: int, body: bytes, arrival: float) -> list[AudioFrame]: ...
