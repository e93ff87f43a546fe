"""The gateway's work estimate: audio seconds from container headers, sizes, and JSON bodies."""

from __future__ import annotations

import json
import struct

import pytest

from voxtral_operator.gateway import work
from voxtral_operator.gateway.work import (
    DEFAULT_OUTPUT_TOKENS,
    Work,
    audio_seconds,
    estimate,
    flac_seconds,
    form_boundary,
    mp3_seconds,
    multipart_boundary,
    multipart_file,
    wav_seconds,
)


def wav(seconds: float, rate: int = 16000, channels: int = 1, bits: int = 16, extra_chunk: bytes = b"") -> bytes:
    byte_rate = rate * channels * bits // 8
    data = int(seconds * byte_rate)
    fmt = b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, rate, byte_rate, channels * bits // 8, bits)
    return b"RIFF" + struct.pack("<I", 36 + data) + b"WAVE" + fmt + extra_chunk + b"data" + struct.pack("<I", data)


def flac(total_samples: int, rate: int = 44100) -> bytes:
    packed = rate << 44 | (2 - 1) << 41 | (16 - 1) << 36 | total_samples
    info = struct.pack(">HH", 4096, 4096) + b"\x00" * 6 + packed.to_bytes(8, "big") + b"\x00" * 16
    return b"fLaC" + bytes([0x80]) + len(info).to_bytes(3, "big") + info


MP3_HEADER_128K_44K_STEREO = bytes([0xFF, 0xFB, 0x90, 0x00])  # MPEG-1 layer III, 128 kbit/s, 44.1 kHz


def mp3_cbr(frames_bytes: int, id3: bool = False) -> bytes:
    tag = b"ID3\x04\x00\x00" + bytes([0, 0, 0, 10]) + b"\x00" * 10 if id3 else b""
    return tag + MP3_HEADER_128K_44K_STEREO + b"\x00" * (frames_bytes - 4)


def mp3_xing(frames: int) -> bytes:
    side = b"\x00" * 32  # MPEG-1 stereo side information
    return MP3_HEADER_128K_44K_STEREO + side + b"Xing" + struct.pack(">II", 1, frames) + b"\x00" * 100


def test_wav_duration_from_the_data_chunk() -> None:
    assert wav_seconds(wav(12.5)) == pytest.approx(12.5)
    assert wav_seconds(wav(3, rate=48000, channels=2)) == pytest.approx(3)
    # Chunks before the data chunk (LIST) are skipped.
    assert wav_seconds(wav(7, extra_chunk=b"LIST" + struct.pack("<I", 5) + b"abcde\x00")) == pytest.approx(7)


def test_streamed_wav_without_a_data_size_uses_the_file_size() -> None:
    head = wav(0)  # data size 0: unknown
    assert wav_seconds(head, total_size=len(head) + 64000) == pytest.approx(2.0)


def test_not_wav() -> None:
    assert wav_seconds(b"RIFF....AVI ") is None
    assert wav_seconds(b"") is None


def test_flac_duration_from_streaminfo() -> None:
    assert flac_seconds(flac(44100 * 90)) == pytest.approx(90)
    assert flac_seconds(flac(16000 * 5, rate=16000)) == pytest.approx(5)
    assert flac_seconds(b"fLaC") is None


def test_mp3_cbr_duration_from_the_bitrate_and_size() -> None:
    clip = mp3_cbr(16000 * 10)  # 128 kbit/s = 16000 bytes/s
    assert mp3_seconds(clip[:4096], total_size=len(clip)) == pytest.approx(10, rel=0.01)
    tagged = mp3_cbr(16000 * 4, id3=True)
    assert mp3_seconds(tagged[:4096], total_size=len(tagged)) == pytest.approx(4, rel=0.01)


def test_mp3_vbr_duration_from_the_xing_frame_count() -> None:
    # 1152 samples per frame at 44.1 kHz: 3828 frames are about 100 s.
    assert mp3_seconds(mp3_xing(3828)) == pytest.approx(3828 * 1152 / 44100)


def test_unknown_formats_fall_back_to_size_and_type() -> None:
    assert audio_seconds(b"OggS" + b"\x00" * 100, 40_000) == pytest.approx(40_000 / work.BYTES_PER_SECOND["ogg"])
    assert audio_seconds(b"\x00" * 10, 32_000, media_type="audio/wav") == pytest.approx(1.0)  # no header: by type
    assert audio_seconds(b"\x00" * 10, 16_000, filename="x.unknown") == pytest.approx(1.0)
    assert audio_seconds(b"\x00" * 10, 8_000, filename="talk.m4a") == pytest.approx(1.0)


def multipart(file_bytes: bytes, boundary: str = "XyZ", before: bytes = b"") -> bytes:
    b = boundary.encode()
    return (
        before
        + b"--"
        + b
        + b'\r\nContent-Disposition: form-data; name="model"\r\n\r\nvoxtral\r\n--'
        + b
        + b'\r\nContent-Disposition: form-data; name="file"; filename="call.wav"\r\nContent-Type: audio/wav\r\n\r\n'
        + file_bytes
        + b"\r\n--"
        + b
        + b"--\r\n"
    )


def test_multipart_file_part_found_among_fields() -> None:
    body = multipart(wav(1) + b"\x00" * 100)
    part = multipart_file(body, "XyZ")
    assert part is not None
    assert part.filename == "call.wav"
    assert part.media_type == "audio/wav"
    assert part.head.startswith(b"RIFF")
    assert body[part.offset : part.offset + 4] == b"RIFF"
    assert multipart_file(body, "other") is None


def test_estimate_of_a_multipart_upload_reads_the_wav_header() -> None:
    body = multipart(wav(300) + b"\x00" * 1000)
    estimated = estimate("multipart/form-data; boundary=XyZ", body[: work.PREFIX_BYTES], len(body) + 9_600_000)
    assert estimated.audio_seconds == pytest.approx(300)
    assert estimated.output_tokens == 1200


def test_estimate_of_a_multipart_mp3_uses_the_size_beyond_the_prefix() -> None:
    clip = mp3_cbr(16000 * 60)
    body = multipart(clip).replace(b"audio/wav", b"audio/mpeg")
    estimated = estimate('multipart/form-data; boundary="XyZ"', body[: work.PREFIX_BYTES], len(body))
    assert estimated.audio_seconds == pytest.approx(60, rel=0.02)


def test_json_body_output_from_max_tokens() -> None:
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}).encode()
    assert estimate("application/json", body, len(body)) == Work(audio_seconds=0.0, output_tokens=100)
    body = json.dumps({"messages": [], "max_completion_tokens": 7}).encode()
    assert estimate("application/json", body, len(body)).output_tokens == 7
    body = b'{"messages": []}'
    assert estimate("application/json", body, len(body)).output_tokens == DEFAULT_OUTPUT_TOKENS


def test_big_json_with_base64_audio_is_estimated_from_its_size_unparsed() -> None:
    audio_b64_bytes = 4 * 32000 * 60 // 3  # a minute of 16 kHz WAV, base64
    head = b'{"max_tokens": 50, "messages": [{"role": "user", "content": [{"type": "input_audio", '
    head += b'"input_audio": {"format": "wav", "data": "' + b"A" * (work.PREFIX_BYTES - len(head) - 10)
    estimated = estimate("application/json", head[: work.PREFIX_BYTES], audio_b64_bytes)
    assert estimated.output_tokens == 50
    assert estimated.audio_seconds == pytest.approx(60)


def test_cost_grows_with_audio_and_output() -> None:
    assert Work(10, 0).cost > Work(1, 0).cost
    assert Work(1, 1000).cost > Work(1, 10).cost
    assert Work(0, 0).cost > 0  # every request costs something


def test_empty_body() -> None:
    assert estimate("", b"", None) == Work(0.0, 0)


@pytest.mark.parametrize(
    ("content_type", "read"),
    [
        ("multipart/form-data; boundary=XyZ", (True, "XyZ")),
        ('Multipart/Form-Data; BOUNDARY="a b:c"', (True, "a b:c")),
        ("multipart/form-data; charset=utf-8; Boundary=q", (True, "q")),
        ("application/json", (False, None)),
        ("multipart/form-data", (True, None)),  # missing
        ("multipart/form-data; boundary=a; boundary=b", (True, None)),  # which one?
        ("multipart/form-data; boundary=\udcff\udcfeabc", (True, None)),  # bytes 0xff 0xfe, as aiohttp decodes them
        ("multipart/form-data; boundary=café", (True, None)),
        ("multipart/form-data; boundary=" + "a" * 71, (True, None)),
        ('multipart/form-data; boundary="ends in a space "', (True, None)),
        ("multipart/form-data; boundary=a;b", (True, None)),
    ],
)
def test_a_multipart_boundary_is_read_only_when_unambiguous(content_type: str, read: tuple[bool, str | None]) -> None:
    assert form_boundary(content_type) == read
    assert multipart_boundary(content_type) == read[1]
    estimate(content_type, b"--\xff\xfeabc\r\n\r\n", 100)  # never raises, whatever the boundary
