"""Type stub of the compiled ``_ffmpeg.pyx``."""

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

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
    def decode(
        self, payload: bytes, samples_allowed: tuple[int, ...]
    ) -> list[tuple[npt.NDArray[np.float32] | Pcm, int]]: ...
