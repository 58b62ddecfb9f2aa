"""Type stub of the compiled ``_dsp.pyx``."""

import numpy as np
import numpy.typing as npt

from wxmgw.media.frames import Pcm

TAPS_PER_PHASE: int
KAISER_BETA: float
PASSBAND: float

class RateConverter:
    rate_in: int
    rate_out: int
    def __init__(self, rate_in: int, rate_out: int) -> None: ...
    def __call__(
        self, samples: Pcm | npt.NDArray[np.float32], scale: float = 1.0
    ) -> Pcm: ...

def rate_converter(rate: int, out: int) -> RateConverter | None: ...

class ToRate:
    rate_out: int
    def __init__(self, rate_out: int) -> None: ...
    def __call__(self, samples: Pcm | npt.NDArray[np.float32], rate: int) -> Pcm: ...

class G711Tables:
    def __init__(self, encode: npt.NDArray[np.uint8], decode: Pcm) -> None: ...
    def encode(self, pcm: Pcm) -> bytes: ...
    def decode(self, payload: bytes) -> Pcm: ...
