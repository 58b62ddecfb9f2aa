"""Type stub of the compiled ``_ffmpeg.pyx``."""

from collections.abc import Iterable

from wxmgw.media._dsp import ToRate
from wxmgw.media.frames import Pcm

SAMPLE_FORMATS: dict[str, int]

def ffmpeg_libraries(maps: Iterable[str]) -> dict[str, str]: ...

class Undecodable(ValueError): ...
class Dropped(ValueError): ...

class Decoder:
    def __init__(
        self,
        ffmpeg_name: str,
        extradata: bytes,
        rate: int,
        channels: int,
        sample_format: str,
        channels_allowed: tuple[int, ...],
        rates: tuple[int, ...],
    ) -> None: ...
    def decode(self, payload: bytes, samples_allowed: tuple[int, ...], to_rate: ToRate) -> Pcm: ...
