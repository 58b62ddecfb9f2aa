"""AudioSpecificConfig (ISO/IEC 14496-3 §1.6.2.1): what a mini-program's AAC declares.

The bytes reach us from every mini-program through the live server, in the
FLV AAC sequence header, and FFmpeg's decoder trusts them: a config (or a
raw frame's program_config_element) can declare dozens of channels. The
gateway takes only what a mini-program sends: AAC-LC, plain or with SBR
(HE-AAC) and PS (HE-AAC v2), at 8 to 48 kHz, mono or stereo, with its
channels given by ``channelConfiguration`` (never by a PCE). Anything else
is a :class:`~wxmgw.errors.ParseError`.

Both ways of signalling SBR/PS are read: explicit hierarchical (the config
starts with object type 5 or 29, §1.6.2.1) and backward compatible (a
``syncExtensionType`` 0x2b7 after the GASpecificConfig, §1.6.5.2). The
writer uses the hierarchical one.

Pure: bytes in, a frozen dataclass out, and back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from wxmgw.errors import ParseError

#: audioObjectType (§1.5.1.1, Table 1.3).
AAC_LC: Final = 2
SBR: Final = 5
PS: Final = 29
#: samplingFrequencyIndex (§1.6.3.4): 0x0 96 kHz ... 0xb 8 kHz, 0xc 7350 Hz.
_RATES: Final = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000,
                 11025, 8000, 7350)
#: What a mini-program may use: 48 kHz (index 3) down to 8 kHz (index 11).
_RATE_INDEXES: Final = range(3, 12)
_SYNC_SBR: Final = 0x2B7  # syncExtensionType of the SBR extension (§1.6.5.2)
_SYNC_PS: Final = 0x548  # syncExtensionType of the PS extension
#: The longest config above is 7 bytes (backward-compatible SBR and PS); room for padding.
_MAX_BYTES: Final = 64
_AAC_FRAME: Final = 1024
_AAC_FRAME_960: Final = 960  # frameLengthFlag set (GASpecificConfig, §4.4.1)


class _Bits:
    """An MSB-first bit reader over ``data`` that raises ParseError past the end."""

    __slots__ = ("_left", "_value")

    def __init__(self, data: bytes) -> None:
        self._value = int.from_bytes(data, "big")
        self._left = 8 * len(data)

    @property
    def left(self) -> int:
        return self._left

    def read(self, n: int) -> int:
        if n > self._left:
            raise ParseError("AudioSpecificConfig truncated")
        self._left -= n
        return (self._value >> self._left) & ((1 << n) - 1)

    def rest_is_zero(self) -> bool:
        return self._value & ((1 << self._left) - 1) == 0


class _BitWriter:
    __slots__ = ("_bits", "_value")

    def __init__(self) -> None:
        self._value = 0
        self._bits = 0

    def put(self, value: int, n: int) -> None:
        self._value = (self._value << n) | value
        self._bits += n

    def __bytes__(self) -> bytes:
        pad = -self._bits % 8
        return (self._value << pad).to_bytes((self._bits + pad) // 8, "big")


@dataclass(frozen=True, slots=True)
class AudioSpecificConfig:
    """An AAC stream as a mini-program may declare it.

    ``sample_rate`` is the AAC core's; ``sbr_rate`` is the rate SBR outputs
    when the config signals SBR (0 when it does not: SBR may still be found
    in the frames, implicit signalling, and doubles the rate); ``ps`` says PS
    is signalled (mono core, stereo out). ``frame_length`` is the core's
    samples per frame.
    """

    sample_rate: int
    channels: int
    frame_length: int = _AAC_FRAME
    sbr_rate: int = 0
    ps: bool = False

    @classmethod
    def parse(cls, data: bytes) -> AudioSpecificConfig:
        """Read a config; ParseError for one the gateway does not take (see the module)."""
        if len(data) > _MAX_BYTES:
            raise ParseError(f"AudioSpecificConfig of {len(data)} bytes")
        bits = _Bits(data)
        object_type = _object_type(bits)
        rate = _rate(bits, "samplingFrequencyIndex")
        channels = bits.read(4)
        if channels not in (1, 2):
            raise ParseError(f"AudioSpecificConfig with channelConfiguration {channels}")
        sbr_rate, ps = 0, False
        if object_type in (SBR, PS):
            sbr_rate, ps = _rate(bits, "extensionSamplingFrequencyIndex"), object_type == PS
            object_type = _object_type(bits)
        if object_type != AAC_LC:
            raise ParseError(f"AudioSpecificConfig of audioObjectType {object_type}")
        frame_length = _AAC_FRAME_960 if bits.read(1) else _AAC_FRAME
        if bits.read(1) or bits.read(1):
            raise ParseError("AudioSpecificConfig with dependsOnCoreCoder or extensionFlag")
        if not sbr_rate and not bits.rest_is_zero():
            _sync_extension(bits, _SYNC_SBR, SBR)
            if bits.read(1):  # sbrPresentFlag
                sbr_rate = _rate(bits, "extensionSamplingFrequencyIndex")
                if not bits.rest_is_zero():
                    _sync_extension(bits, _SYNC_PS)
                    ps = bool(bits.read(1))
        if not bits.rest_is_zero():
            raise ParseError("AudioSpecificConfig with trailing data")
        if sbr_rate not in (0, rate, 2 * rate) or (ps and channels != 1):
            raise ParseError(f"AudioSpecificConfig with SBR at {sbr_rate} Hz, PS {ps}")
        return cls(rate, channels, frame_length, sbr_rate, ps)

    def __bytes__(self) -> bytes:
        out = _BitWriter()
        if self.sbr_rate:
            out.put(PS if self.ps else SBR, 5)
        else:
            out.put(AAC_LC, 5)
        out.put(_RATES.index(self.sample_rate), 4)
        out.put(self.channels, 4)
        if self.sbr_rate:
            out.put(_RATES.index(self.sbr_rate), 4)
            out.put(AAC_LC, 5)
        out.put(int(self.frame_length == _AAC_FRAME_960), 1)
        out.put(0, 2)  # dependsOnCoreCoder, extensionFlag
        return bytes(out)

    @property
    def rates(self) -> tuple[int, ...]:
        """The rates the decoder may output: the core's, or SBR's (signalled or implicit)."""
        if self.sbr_rate:
            return (self.sbr_rate,)
        return tuple(r for r in (self.sample_rate, 2 * self.sample_rate) if r <= _RATES[3])

    @property
    def out_channels(self) -> tuple[int, ...]:
        """Channel counts the decoder may output: PS, implicit or signalled, makes mono stereo."""
        return (self.channels,) if self.channels == 2 else (1, 2)

    @property
    def frame_samples(self) -> tuple[int, ...]:
        """Samples in one decoded frame: the core's frame, doubled by SBR."""
        return (self.frame_length, 2 * self.frame_length)


def _object_type(bits: _Bits) -> int:
    """GetAudioObjectType() (§1.6.2.1): 5 bits, 31 escapes to 32 + 6 more."""
    object_type = bits.read(5)
    return 32 + bits.read(6) if object_type == 31 else object_type


def _sync_extension(bits: _Bits, sync: int, object_type: int | None = None) -> None:
    """A syncExtensionType ``sync`` (11 bits), then ``object_type`` if given (§1.6.2.1)."""
    if bits.left < 12 or bits.read(11) != sync:
        raise ParseError("AudioSpecificConfig with trailing data")
    if object_type is not None and _object_type(bits) != object_type:
        raise ParseError("AudioSpecificConfig with an unknown sync extension")


def _rate(bits: _Bits, field: str) -> int:
    index = bits.read(4)
    if index not in _RATE_INDEXES:
        raise ParseError(f"AudioSpecificConfig with {field} {index}: not 8-48 kHz")
    return _RATES[index]
