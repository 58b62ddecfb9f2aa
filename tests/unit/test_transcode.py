"""Audio codecs, checked against an independent decoder and encoder: the ffmpeg CLI.

Our payloads are written in a form the ffmpeg CLI (Debian's build, not the
FFmpeg that PyAV bundles) reads and decoded by it; files it makes are decoded
by ``AudioDecoder``. Either way the tone's frequency must come back.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from av.audio.resampler import AudioResampler

from wxmgw.errors import InvalidArgument, MediaError, ParseError
from wxmgw.media._ffmpeg import ffmpeg_libraries
from wxmgw.media.frames import AUDIO_FRAME_SAMPLES, AUDIO_RATE, Pcm
from wxmgw.media.transcode import (
    AAC_NARROW_RATE,
    AUDIO_CODECS,
    AudioDecoder,
    AudioEncoder,
    CodecInfo,
    DroppedFrame,
    aac_rate,
    audio_codec,
    opus_samples,
)

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg CLI")

RTP_CODECS = ["PCMA", "PCMU", "G722", "OPUS"]
SECOND_FRAMES = AUDIO_RATE // AUDIO_FRAME_SAMPLES


def sine(hz: float, seconds: float = 1.0) -> Pcm:
    t = np.arange(int(AUDIO_RATE * seconds)) / AUDIO_RATE
    return (np.sin(2 * np.pi * hz * t) * 12000).astype(np.int16)


def dominant_hz(pcm: Pcm, rate: int = AUDIO_RATE) -> float:
    """The strongest frequency, edges (codec delay, priming) left out."""
    x = pcm.astype(np.float64)[len(pcm) // 10 : len(pcm) - len(pcm) // 10]
    assert np.sqrt(np.mean(x**2)) > 1000, "no tone, only silence"
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum[1:]) + 1) * rate / len(x)


def ffmpeg(*args: str, stdin: bytes = b"") -> bytes:
    done = subprocess.run(
        ["ffmpeg", "-nostdin", "-hide_banner", "-v", "error", *args],
        input=stdin,
        capture_output=True,
        timeout=30,
        check=True,
    )
    return done.stdout


def sine_input(hz: int, rate: int = AUDIO_RATE) -> list[str]:
    """A one-second tone from ffmpeg's lavfi source."""
    return ["-f", "lavfi", "-i", f"sine=frequency={hz}:sample_rate={rate}", "-t", "1"]


def ffmpeg_to_pcm(*input_args: str, stdin: bytes = b"") -> Pcm:
    raw = ffmpeg(*input_args, "-f", "s16le", "-ac", "1", "-ar", str(AUDIO_RATE), "-", stdin=stdin)
    return np.frombuffer(raw, np.int16)


def encode_all(codec: str, pcm: Pcm, aac: int = AUDIO_RATE) -> tuple[AudioEncoder, list[bytes]]:
    encoder = AudioEncoder(codec, aac)
    payloads: list[bytes] = []
    for i in range(0, len(pcm), AUDIO_FRAME_SAMPLES):
        payloads += encoder.encode(pcm[i : i + AUDIO_FRAME_SAMPLES])
    return encoder, payloads


def write_ogg(path: Path, payloads: list[bytes]) -> None:
    """Mux Opus packets into Ogg with PyAV's muxer: ffmpeg does not read bare Opus."""
    with av.open(str(path), "w", format="ogg") as out:
        stream = out.add_stream("libopus", rate=48000, layout="mono")
        for i, payload in enumerate(payloads):
            packet = av.Packet(payload)
            packet.stream = stream
            packet.pts = packet.dts = i * 960
            packet.duration = 960
            packet.time_base = Fraction(1, 48000)
            out.mux(packet)


def adts(frame: bytes, asc: bytes) -> bytes:
    """ADTS-frame raw AAC with the object type, rate and channels of ``asc``.

    ISO 14496-3 §1.6.2.1 (AudioSpecificConfig) and §1.A.2.2 (adts_fixed_header).
    """
    object_type, rate_index = asc[0] >> 3, ((asc[0] & 7) << 1) | (asc[1] >> 7)
    channels = (asc[1] >> 3) & 0xF
    n = len(frame) + 7
    header = bytes(
        [
            0xFF,
            0xF1,
            ((object_type - 1) << 6) | (rate_index << 2) | (channels >> 2),
            ((channels & 3) << 6) | (n >> 11),
            (n >> 3) & 0xFF,
            ((n & 7) << 5) | 0x1F,
            0xFC,
        ]
    )
    return header + frame


def decode_all(decoder: AudioDecoder, payloads: list[bytes]) -> Pcm:
    return np.concatenate([decoder.decode(p) for p in payloads])


# --- codec table -------------------------------------------------------------


def test_codec_table_follows_rfc_3551_and_7587() -> None:
    assert AUDIO_CODECS["PCMA"] == CodecInfo("PCMA", "pcm_alaw", 8000, 8000, 160)
    assert AUDIO_CODECS["PCMU"] == CodecInfo("PCMU", "pcm_mulaw", 8000, 8000, 160)
    assert AUDIO_CODECS["G722"] == CodecInfo("G722", "g722", 8000, 16000, 160)
    assert AUDIO_CODECS["OPUS"] == CodecInfo("OPUS", "libopus", 48000, 48000, 960)
    assert AUDIO_CODECS["G722"].frame_samples == 320


def test_audio_codec_is_case_insensitive() -> None:
    assert audio_codec("pcma") is AUDIO_CODECS["PCMA"]
    assert audio_codec("opus") is AUDIO_CODECS["OPUS"]
    assert audio_codec("g722") is AUDIO_CODECS["G722"]


@pytest.mark.parametrize("name", ["speex", "", "AAC", "G729"])
def test_unknown_codec_is_invalid_argument(name: str) -> None:
    with pytest.raises(InvalidArgument):
        audio_codec(name)
    if name != "AAC":
        with pytest.raises(InvalidArgument):
            AudioEncoder(name)
        with pytest.raises(InvalidArgument):
            AudioDecoder(name)


# --- encoder: our payloads, ffmpeg's decoder --------------------------------


@pytest.mark.parametrize("codec", [*RTP_CODECS, "aac"])
def test_encoder_packet_sizes(codec: str) -> None:
    encoder, payloads = encode_all(codec, sine(1000, 0.2))
    if codec == "aac":
        assert encoder.frame_samples == 1024
        assert encoder.extradata[:2] == b"\x11\x88"  # AAC-LC, 48 kHz, mono
        assert 1 <= len(payloads) <= 9600 // 1024
        return
    assert encoder.frame_samples == AUDIO_FRAME_SAMPLES
    assert encoder.extradata == b""
    assert len(payloads) == 10
    if codec != "OPUS":
        assert [len(p) for p in payloads] == [160] * 10


@pytest.mark.parametrize("codec", RTP_CODECS)
def test_each_20ms_makes_one_packet_from_the_first(codec: str) -> None:
    encoder = AudioEncoder(codec)
    pcm = sine(440, 0.1)
    counts = [len(encoder.encode(pcm[i : i + 960])) for i in range(0, len(pcm), 960)]
    assert counts == [1] * 5


def test_encoder_buffers_odd_lengths() -> None:
    encoder = AudioEncoder("PCMA")
    pcm = sine(1000, 0.5)
    payloads: list[bytes] = []
    for piece in np.array_split(pcm, 37):
        payloads += encoder.encode(piece)
    assert encoder.encode(pcm[:0]) == []
    assert len(payloads) == len(pcm) // 960
    assert all(len(p) == 160 for p in payloads)


@pytest.mark.parametrize("hz", [1000, 440])
def test_narrow_aac_carries_the_tone(hz: int) -> None:
    """AAC at 16 kHz for G.711/G.722 sources: a third of the frames, the same tone."""
    encoder, payloads = encode_all("AAC", sine(hz), aac=AAC_NARROW_RATE)
    assert (encoder.rate, encoder.frame_samples) == (16000, 3 * 1024)
    assert encoder.extradata[:2] == b"\x14\x08"  # AAC-LC, 16 kHz, mono
    assert AUDIO_RATE // 3072 - 2 <= len(payloads) <= AUDIO_RATE // 3072  # less the priming
    stream = b"".join(adts(p, encoder.extradata) for p in payloads)
    pcm = ffmpeg_to_pcm("-f", "aac", "-i", "-", stdin=stream)
    assert len(pcm) == len(payloads) * 3072  # 1024 samples at 16 kHz each
    assert dominant_hz(pcm) == pytest.approx(hz, rel=0.02)


def test_aac_rate_keeps_the_source_band() -> None:
    assert [aac_rate(audio_codec(c).sample_rate) for c in RTP_CODECS] == [
        AAC_NARROW_RATE if c != "OPUS" else AUDIO_RATE for c in RTP_CODECS
    ]
    assert aac_rate(44100) == AUDIO_RATE
    with pytest.raises(ValueError, match="22050"):
        AudioEncoder("AAC", 22050)


RAW_INPUT = {
    "PCMA": ["-f", "alaw", "-ar", "8000", "-ac", "1"],
    "PCMU": ["-f", "mulaw", "-ar", "8000", "-ac", "1"],
    "G722": ["-f", "g722"],
}


@pytest.mark.parametrize("hz", [1000, 440])
@pytest.mark.parametrize("codec", [*RTP_CODECS, "AAC"])
def test_ffmpeg_decodes_our_tone(codec: str, hz: int, tmp_path: Path) -> None:
    encoder, payloads = encode_all(codec, sine(hz))
    if codec in RAW_INPUT:
        pcm = ffmpeg_to_pcm(*RAW_INPUT[codec], "-i", "-", stdin=b"".join(payloads))
    elif codec == "OPUS":
        write_ogg(tmp_path / "tone.ogg", payloads)
        pcm = ffmpeg_to_pcm("-i", str(tmp_path / "tone.ogg"))
    else:
        stream = b"".join(adts(p, encoder.extradata) for p in payloads)
        pcm = ffmpeg_to_pcm("-f", "aac", "-i", "-", stdin=stream)
    assert len(pcm) == pytest.approx(AUDIO_RATE, rel=0.05)
    assert dominant_hz(pcm) == pytest.approx(hz, rel=0.02)


# --- decoder: ffmpeg's payloads, our decoder --------------------------------


@pytest.mark.parametrize(
    ("codec", "args"),
    [
        ("PCMA", ["-ar", "8000", "-c:a", "pcm_alaw", "-f", "alaw"]),
        ("PCMU", ["-ar", "8000", "-c:a", "pcm_mulaw", "-f", "mulaw"]),
        ("G722", ["-ar", "16000", "-c:a", "g722", "-f", "g722"]),
    ],
)
def test_we_decode_ffmpeg_raw_tone(codec: str, args: list[str]) -> None:
    raw = ffmpeg(*sine_input(700), "-ac", "1", *args, "-")
    payloads = [raw[i : i + 160] for i in range(0, len(raw), 160)]
    pcm = decode_all(AudioDecoder(codec), payloads)
    assert len(pcm) == pytest.approx(AUDIO_RATE, rel=0.02)
    assert dominant_hz(pcm) == pytest.approx(700, rel=0.02)


def demux(path: Path) -> tuple[bytes, list[bytes]]:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        extradata = bytes(stream.codec_context.extradata or b"")
        return extradata, [bytes(p) for p in container.demux(stream) if p.size]


@pytest.mark.parametrize("channels", [1, 2])
def test_we_decode_ffmpeg_opus(channels: int, tmp_path: Path) -> None:
    path = tmp_path / "tone.ogg"
    ffmpeg(*sine_input(700), "-ac", str(channels), "-c:a", "libopus", str(path))
    _, payloads = demux(path)
    pcm = decode_all(AudioDecoder("opus", channels=channels), payloads)
    assert len(pcm) == pytest.approx(AUDIO_RATE, rel=0.05)
    assert dominant_hz(pcm) == pytest.approx(700, rel=0.02)


@pytest.mark.parametrize("out_rate", [AUDIO_RATE, 16000, 8000])
@pytest.mark.parametrize(("rate", "channels"), [(44100, 2), (48000, 1)])
def test_we_decode_ffmpeg_flv_aac(rate: int, channels: int, out_rate: int,
                                  tmp_path: Path) -> None:
    """What a mini-program's live-pusher sends: AAC-LC 44.1 or 48 kHz, mono or stereo.

    Decoded to 48 kHz for channels, or straight to an RTP codec's rate.
    """
    path = tmp_path / "tone.flv"
    ffmpeg(*sine_input(700, rate), "-ac", str(channels), "-c:a", "aac", str(path))
    extradata, payloads = demux(path)
    pcm = decode_all(AudioDecoder("AAC", extradata=extradata, out_rate=out_rate), payloads)
    assert len(pcm) == pytest.approx(out_rate, rel=0.05)
    assert dominant_hz(pcm, out_rate) == pytest.approx(700, rel=0.02)


@pytest.mark.parametrize("out_rate", [AUDIO_RATE, 16000, 8000])
@pytest.mark.parametrize("channels", [1, 2])
def test_aac_rate_change_is_libswresample_s_within_a_tenth_of_a_db(
        channels: int, out_rate: int, tmp_path: Path) -> None:
    """44.1 kHz AAC through our converter: the tone FFmpeg's resampler gives, as loud, as long."""
    path = tmp_path / "tone.flv"
    ffmpeg(*sine_input(700, 44100), "-ac", str(channels), "-c:a", "aac", str(path))
    extradata, payloads = demux(path)
    ours = decode_all(AudioDecoder("AAC", extradata=extradata, out_rate=out_rate), payloads)
    ctx = av.CodecContext.create("aac", "r")
    assert isinstance(ctx, av.AudioCodecContext)
    ctx.extradata = extradata
    swr = AudioResampler("s16", "mono", out_rate)
    theirs = np.concatenate([out.to_ndarray()[0] for p in payloads
                             for f in ctx.decode(av.Packet(p)) for out in swr.resample(f)])
    assert abs(len(ours) - len(theirs)) <= out_rate // 100
    assert dominant_hz(ours, out_rate) == pytest.approx(dominant_hz(theirs, out_rate), abs=1)
    middle = slice(len(theirs) // 4, len(theirs) * 3 // 4)
    level = [np.sqrt(np.mean(x[middle].astype(np.float64) ** 2)) for x in (ours, theirs)]
    assert 20 * abs(np.log10(level[0] / level[1])) < 0.1


@pytest.mark.parametrize("codec", ["PCMA", "G722"])
def test_encoder_takes_its_codec_rate(codec: str) -> None:
    """A 20 ms frame at the codec's own rate makes one packet: no resampling on the way."""
    rate = audio_codec(codec).sample_rate
    encoder = AudioEncoder(codec, source_rate=rate)
    assert encoder.frame_samples == rate // 50
    pcm = sine(1000, 0.1)[:: AUDIO_RATE // rate]
    assert [len(encoder.encode(pcm[i : i + rate // 50])) for i in range(0, len(pcm), rate // 50)
            ] == [1] * 5
    with pytest.raises(ValueError, match="not a multiple"):
        AudioEncoder(codec, source_rate=44100)


# --- corrupt input ------------------------------------------------------------


@pytest.mark.parametrize("codec", [*RTP_CODECS, "AAC"])
def test_random_payloads_raise_only_media_error(codec: str) -> None:
    encoder, payloads = encode_all(codec, sine(1000, 0.2))
    decoder = AudioDecoder(codec, extradata=encoder.extradata)
    rng = random.Random(7)
    failures = 0
    for _ in range(300):
        payload = rng.randbytes(rng.randrange(1, 300))
        try:
            decoder.decode(payload)
        except MediaError:
            failures += 1
    if codec in ("OPUS", "AAC"):
        assert failures > 0
    assert len(decoder.decode(payloads[-1])) > 0  # still usable


def test_truncated_aac_raises_media_error() -> None:
    encoder, payloads = encode_all("AAC", sine(1000, 0.2))
    decoder = AudioDecoder("AAC", extradata=encoder.extradata)
    with pytest.raises(MediaError):
        decoder.decode(b"\x21\x00" * 20)
    assert len(decoder.decode(payloads[0])) == 1024


@pytest.mark.parametrize("asc", [
    b"", b"\xff\xff",
    bytes([0x10, 0x10]),  # AAC-LC at 96 kHz
    bytes([0x16, 0x08]),  # AAC-LC at 7350 Hz
    bytes([0x15, 0x98]),  # AAC-LC at 8 kHz, channelConfiguration 3
    bytes([0x15, 0x80]),  # channelConfiguration 0: channels from a program_config_element
    bytes([0x0D, 0x88]),  # AAC-Main
])
def test_aac_config_outside_what_a_mini_program_sends_is_refused(asc: bytes) -> None:
    with pytest.raises(ParseError):
        AudioDecoder("AAC", extradata=asc)


# --- decoded frames not as declared (issue #12, finding 1) ---------------------

DATA = Path(__file__).resolve().parents[1] / "data"
AAC_LC_8K_STEREO = bytes([0x15, 0x90])
#: A raw frame whose program_config_element makes 27 channels (tests/data/aac_README.md).
PCE_27CH = (DATA / "aac_pce_27ch.raw").read_bytes()


def test_frame_of_27_channels_from_a_pce_is_dropped_never_read(tmp_path: Path) -> None:
    """The frame that segfaulted in ``to_ndarray``: dropped, and the decoder recovers."""
    path = tmp_path / "tone.flv"
    ffmpeg(*sine_input(700, 8000), "-ac", "2", "-c:a", "aac", str(path))
    extradata, payloads = demux(path)
    assert extradata[:2] == AAC_LC_8K_STEREO
    decoder = AudioDecoder("AAC", extradata=extradata)
    for _ in range(3):
        with pytest.raises(DroppedFrame, match="27 channels"):
            decoder.decode(PCE_27CH)
    pcm = decode_all(decoder, payloads)  # FFmpeg kept the PCE's channels: it was reopened
    assert len(pcm) == len(payloads) * 1024 * AUDIO_RATE // 8000
    assert dominant_hz(pcm) == pytest.approx(700, rel=0.02)


def test_aac_decoder_takes_its_format_from_the_config() -> None:
    """Rate and channels come from the AudioSpecificConfig; HE-AAC may double and widen them."""
    encoder, payloads = encode_all("AAC", sine(1000, 0.2), AAC_NARROW_RATE)
    assert len(decode_all(AudioDecoder("AAC", extradata=encoder.extradata), payloads)) > 0
    AudioDecoder("AAC", extradata=bytes.fromhex("eb098800"))  # HE-AAC v2, 24 kHz core


@pytest.mark.parametrize(("codec", "channels"), [("PCMA", 1), ("PCMU", 2), ("G722", 1)])
def test_sample_codecs_decode_as_many_samples_as_the_payload_declares(
        codec: str, channels: int) -> None:
    """G.711 (the table, or FFmpeg for stereo) and G.722: the payload's size decides.

    A byte is one 8 kHz sample of one channel (G.711) or two 16 kHz samples
    (G.722): 6 samples at 48 kHz either way.
    """
    decoder = AudioDecoder(codec, channels=channels)
    for size in (2, 160, 162, 1400):
        assert len(decoder.decode(b"\x55" * size)) == size // channels * 6


@pytest.mark.parametrize("codec", ["PCMA", "PCMU"])
def test_stereo_is_the_mean_of_its_channels_at_their_level(codec: str) -> None:
    """Two equal int16 channels average to that channel, not to a float scaled again."""
    _, payloads = encode_all(codec, sine(700, 0.2))
    stereo = [bytes(b for sample in payload for b in (sample, sample)) for payload in payloads]
    mono = decode_all(AudioDecoder(codec), payloads)
    assert np.array_equal(decode_all(AudioDecoder(codec, channels=2), stereo), mono)


def test_stereo_opus_is_as_loud_as_its_channels(tmp_path: Path) -> None:
    """Equal channels (a mono tone made stereo) average to the level each has in the ffmpeg CLI."""
    path = tmp_path / "tone.ogg"
    ffmpeg(*sine_input(700), "-ac", "2", "-c:a", "libopus", str(path))
    ours = decode_all(AudioDecoder("OPUS", channels=2), demux(path)[1])
    theirs = np.frombuffer(ffmpeg("-i", str(path), "-f", "s16le", "-ac", "2", "-"), np.int16)

    def level(pcm: Pcm) -> float:
        return float(np.sqrt(np.mean(pcm[AUDIO_RATE // 10:].astype(np.float64) ** 2)))

    assert 20 * np.log10(level(ours) / level(theirs[0::2])) == pytest.approx(0, abs=0.5)


def test_ffmpeg_libraries_are_found_as_a_wheel_or_a_system_names_them() -> None:
    maps = [
        "7f32bb600000-7f32bb617000 r--p 00000000 fe:00 5333559    "
        "/venv/site-packages/av.libs/libavutil-5809ad29.so.60.26.102",
        "7f0000000000-7f0000001000 r-xp 00000000 fe:00 1    "
        "/usr/lib/x86_64-linux-gnu/libavcodec.so.59.37.100",
        "7f0000000000-7f0000001000 r-xp 00000000 fe:00 2    /usr/lib/libavcodecx.so.1",
        "7f0000000000-7f0000001000 r-xp 00000000 fe:00 3    /usr/lib/libswresample.so.4",
    ]
    assert ffmpeg_libraries(maps) == {
        "avutil": "/venv/site-packages/av.libs/libavutil-5809ad29.so.60.26.102",
        "avcodec": "/usr/lib/x86_64-linux-gnu/libavcodec.so.59.37.100",
    }


def test_decoders_run_in_pyav_s_ffmpeg_the_only_one_mapped() -> None:
    """``_ffmpeg`` calls the libavcodec ``import av`` mapped: no second FFmpeg in the process."""
    AudioDecoder("G722").decode(b"\x55" * 160)
    maps = Path("/proc/self/maps").read_text().split()
    codecs = {word for word in maps if "/libavcodec" in word}
    assert len(codecs) == 1, codecs
    assert Path(av.__file__).parent.parent.resolve() in Path(codecs.pop()).resolve().parents


@pytest.mark.parametrize(("toc", "samples"), [
    (b"\x00", 480),        # config 0, SILK NB 10 ms; code 0: one frame (RFC 6716 §3.1)
    (b"\x78", 960),        # config 15, Hybrid FB 20 ms
    (b"\xfc", 960),        # config 31, CELT FB 20 ms
    (b"\xfd", 1920),       # code 1: two frames
    (b"\xfb\x06", 5760),   # code 3: a count byte, 6 frames of 20 ms
    (b"\xfb\x07", 0),      # 140 ms: more than a packet may hold (§3.2.5)
    (b"\x03", 0),          # code 3 without its count byte
    (b"", 0),
])
def test_opus_samples_reads_the_toc(toc: bytes, samples: int) -> None:
    assert opus_samples(toc) == samples


def test_opus_decodes_what_its_toc_declares() -> None:
    _, payloads = encode_all("OPUS", sine(1000, 0.2))
    for channels in (1, 2):
        decoder = AudioDecoder("OPUS", channels=channels)
        for payload in payloads:
            assert len(decoder.decode(payload)) == opus_samples(payload) == 960


def test_empty_payload_decodes_to_nothing() -> None:
    decoder = AudioDecoder("PCMU")
    assert len(decoder.decode(b"")) == 0
    assert len(decoder.decode(b"\xff" * 160)) > 0


# --- threads ------------------------------------------------------------------


def test_instances_in_threads_match_one_thread() -> None:
    pcm = sine(440, 0.5)

    def round_trip(codec: str) -> bytes:
        _, payloads = encode_all(codec, pcm)
        return b"".join(payloads) + decode_all(AudioDecoder(codec), payloads).tobytes()

    codecs = RTP_CODECS * 2
    alone = [round_trip(c) for c in codecs]
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(round_trip, codecs)) == alone
