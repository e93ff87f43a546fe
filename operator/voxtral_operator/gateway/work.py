"""How much work a request brings, from the first bytes of its body: pure, no I/O.

The unit is seconds of audio-equivalent work. Audio seconds come from the container header when
the format records them (WAV: data bytes / byte rate; FLAC: STREAMINFO total samples / sample
rate; MP3: the Xing/Info or VBRI frame count, else the first frame's CBR bitrate), otherwise from
the size and a per-type bytes-per-second guess. Expected output adds `max_tokens` (or
`max_completion_tokens`) from a JSON body, else a default.

A request's KV cache tokens (what the deferrable lane's KV bound counts, `lanes.py`) are its whole
sequence's: the audio at the encoder's token rate, the text prompt around it, and the expected output.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass

from voxtral_operator.api.catalog import AUDIO_TOKENS_PER_SECOND

PREFIX_BYTES = 64 * 1024  # what the gateway reads of a body before dispatching it
DEFAULT_OUTPUT_TOKENS = 256
SECONDS_PER_OUTPUT_TOKEN = 0.02  # decoding 50 tokens costs about as much as a second of audio
BASE_SECONDS = 0.5  # every request's fixed cost (prefill, scheduling)
TEXT_PROMPT_TOKENS = 64  # the instruction or transcription prompt around the audio
# Bounds on what a request may claim: the estimate stays a finite float whatever a body says.
MAX_TOKENS = 10_000_000
MAX_AUDIO_SECONDS = 1e7

# Bytes per second of audio when the header does not say: typical speech encodings.
BYTES_PER_SECOND = {
    "wav": 32_000,  # 16 kHz, 16-bit mono PCM
    "flac": 20_000,
    "mp3": 16_000,  # 128 kbit/s
    "ogg": 4_000,  # Opus at 32 kbit/s
    "opus": 4_000,
    "webm": 4_000,
    "m4a": 8_000,
    "mp4": 8_000,
    "aac": 8_000,
}
FALLBACK_BYTES_PER_SECOND = 16_000
_MEDIA_TYPES = {
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "audio/wave": "wav",
    "audio/flac": "flac",
    "audio/x-flac": "flac",
    "audio/mpeg": "mp3",
    "audio/mp3": "mp3",
    "audio/ogg": "ogg",
    "audio/opus": "opus",
    "audio/webm": "webm",
    "audio/mp4": "m4a",
    "audio/m4a": "m4a",
    "audio/x-m4a": "m4a",
    "audio/aac": "aac",
}


@dataclass(frozen=True)
class Work:
    audio_seconds: float
    output_tokens: int

    def __post_init__(self) -> None:
        # Clamped here so no estimate, however it was reached, can overflow the dispatcher's sums.
        seconds = self.audio_seconds
        seconds = min(max(seconds, 0.0), MAX_AUDIO_SECONDS) if math.isfinite(seconds) else MAX_AUDIO_SECONDS
        object.__setattr__(self, "audio_seconds", float(seconds))
        object.__setattr__(self, "output_tokens", min(max(int(self.output_tokens), 0), MAX_TOKENS))

    @property
    def cost(self) -> float:
        """What dispatch balances: the request's share of a replica's time, in audio-seconds."""
        return BASE_SECONDS + self.audio_seconds + self.output_tokens * SECONDS_PER_OUTPUT_TOKEN

    @property
    def kv_tokens(self) -> int:
        """The KV cache the whole sequence takes on a replica: prompt (audio and text) plus expected output."""
        return math.ceil(self.audio_seconds * AUDIO_TOKENS_PER_SECOND) + TEXT_PROMPT_TOKENS + self.output_tokens


# --- container headers ------------------------------------------------------------------------


def wav_seconds(head: bytes, total_size: int | None = None) -> float | None:
    """RIFF/WAVE: the data chunk's size over the fmt chunk's byte rate."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    offset, byte_rate = 12, 0
    while offset + 8 <= len(head):
        chunk, size = head[offset : offset + 4], struct.unpack_from("<I", head, offset + 4)[0]
        if chunk == b"fmt " and offset + 16 <= len(head):
            byte_rate = struct.unpack_from("<I", head, offset + 16)[0]
        elif chunk == b"data":
            if byte_rate <= 0:
                return None
            if size in (0, 0xFFFFFFFF) and total_size is not None:  # a streamed WAV: size unknown
                size = max(0, total_size - offset - 8)
            return float(size / byte_rate)
        offset += 8 + size + (size & 1)
    if byte_rate > 0 and total_size is not None:  # the data chunk starts beyond what was read
        return float(max(0, total_size - offset) / byte_rate)
    return None


def flac_seconds(head: bytes) -> float | None:
    """fLaC + STREAMINFO (the first metadata block): total samples / sample rate."""
    if len(head) < 4 + 4 + 18 or head[:4] != b"fLaC" or head[4] & 0x7F != 0:
        return None
    info = head[8 : 8 + 34]
    packed = int.from_bytes(info[10:18], "big")
    sample_rate = packed >> 44
    total_samples = packed & ((1 << 36) - 1)
    if sample_rate == 0 or total_samples == 0:
        return None
    return float(total_samples / sample_rate)


_MP3_BITRATES = {  # kbit/s by (MPEG-1?, layer)
    (True, 1): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 3): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MP3_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}  # by version bits


def _id3_size(head: bytes) -> int:
    if len(head) >= 10 and head[:3] == b"ID3":
        size = (head[6] & 0x7F) << 21 | (head[7] & 0x7F) << 14 | (head[8] & 0x7F) << 7 | (head[9] & 0x7F)
        return 10 + size + (10 if head[5] & 0x10 else 0)
    return 0


def mp3_seconds(head: bytes, total_size: int | None = None) -> float | None:
    """MPEG audio: frames from a Xing/Info or VBRI header, else the first frame's CBR bitrate over the size."""
    start = _id3_size(head)
    # The first frame header: 11 sync bits, then a valid version, layer, bitrate and rate.
    for offset in range(start, min(len(head) - 4, start + 4096)):
        if head[offset] != 0xFF or head[offset + 1] & 0xE0 != 0xE0:
            continue
        b1, b2, b3 = head[offset + 1], head[offset + 2], head[offset + 3]
        version, layer_bits = (b1 >> 3) & 3, (b1 >> 1) & 3
        bitrate_index, rate_index = b2 >> 4, (b2 >> 2) & 3
        if version == 1 or layer_bits == 0 or bitrate_index in (0, 15) or rate_index == 3:
            continue
        layer = 4 - layer_bits
        mpeg1 = version == 3
        bitrate = _MP3_BITRATES[(mpeg1, layer)][bitrate_index] * 1000
        sample_rate = _MP3_RATES[version][rate_index]
        samples_per_frame = 384 if layer == 1 else 1152 if (layer == 2 or mpeg1) else 576
        mono = (b3 >> 6) == 3
        side = (17 if mono else 32) if mpeg1 else (9 if mono else 17)
        xing = offset + 4 + side
        if head[xing : xing + 4] in (b"Xing", b"Info") and len(head) >= xing + 12:
            flags = struct.unpack_from(">I", head, xing + 4)[0]
            if flags & 1:
                frames = struct.unpack_from(">I", head, xing + 8)[0]
                return float(frames * samples_per_frame / sample_rate)
        vbri = offset + 4 + 32
        if head[vbri : vbri + 4] == b"VBRI" and len(head) >= vbri + 18:
            frames = struct.unpack_from(">I", head, vbri + 14)[0]
            return float(frames * samples_per_frame / sample_rate)
        if total_size is None:
            return None
        return float(max(0, total_size - offset) * 8 / bitrate)
    return None


def audio_format(head: bytes, media_type: str = "", filename: str = "") -> str | None:
    """The container's short name, from its magic bytes first, then the media type, then the file name."""
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:3] == b"ID3" or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "mp3"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "webm"
    if head[4:8] == b"ftyp":
        return "m4a"
    media = media_type.split(";")[0].strip().lower()
    if media in _MEDIA_TYPES:
        return _MEDIA_TYPES[media]
    suffix = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    return suffix if suffix in BYTES_PER_SECOND else None


def audio_seconds(head: bytes, size: int | None, media_type: str = "", filename: str = "") -> float:
    """Seconds of audio in a file whose first bytes are `head` and whole size `size` (None: unknown)."""
    kind = audio_format(head, media_type, filename)
    exact = None
    if kind == "wav":
        exact = wav_seconds(head, size)
    elif kind == "flac":
        exact = flac_seconds(head)
    elif kind == "mp3":
        exact = mp3_seconds(head, size)
    if exact is not None:
        return exact
    known = size if size is not None else len(head)
    return known / BYTES_PER_SECOND.get(kind or "", FALLBACK_BYTES_PER_SECOND)


# --- request bodies ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FilePart:
    filename: str
    media_type: str
    head: bytes  # the file's first bytes that the prefix holds
    offset: int  # where the file's bytes start in the body


# RFC 2046's bchars: a boundary is 1-70 of these, not ending in a space.
_BCHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? ")


def _parameters(text: str) -> dict[str, str] | None:
    """`; name=value` parameters (names in lower case, values unquoted), or None when one is malformed, repeated,
    or in RFC 2231's extended form (`name*=`): what the gateway could read otherwise than the replica."""
    found: dict[str, str] = {}
    for item in text.split(";"):
        if not item.strip():
            continue
        name, equals, value = item.partition("=")
        name, value = name.strip().lower(), value.strip()
        if not equals or not name or name.endswith("*") or name in found:
            return None
        if value.startswith('"'):
            if len(value) < 2 or not value.endswith('"') or '"' in value[1:-1] or "\\" in value:
                return None
            value = value[1:-1]
        elif not value or any(c in value for c in ' "\\'):
            return None
        found[name] = value
    return found


def form_boundary(content_type: str) -> tuple[bool, str | None]:
    """(whether the body is multipart/form-data, its boundary: None when missing, repeated or not 1-70 of
    RFC 2046's characters, which the gateway refuses rather than guess at)."""
    media, _, params = content_type.partition(";")
    if media.strip().lower() != "multipart/form-data":
        return False, None
    found = _parameters(params)
    boundary = found.get("boundary") if found is not None else None
    if boundary is None or not 1 <= len(boundary) <= 70 or boundary.endswith(" "):
        return True, None
    if not set(boundary) <= _BCHARS:
        return True, None
    return True, boundary


def multipart_boundary(content_type: str) -> str | None:
    """The boundary of a multipart/form-data body, if it has one the gateway can read unambiguously."""
    return form_boundary(content_type)[1]


def part_fields(headers: bytes) -> dict[str, str] | None:
    """A multipart part's Content-Disposition parameters (`name`, `filename`: names in any case, values quoted
    or not), {} when it has none, or None when they are ambiguous (repeated, malformed, not ASCII)."""
    try:
        text = headers.decode("ascii")
    except UnicodeDecodeError:
        return None
    found: dict[str, str] | None = {}
    seen = False
    for line in text.split("\r\n"):
        name, colon, value = line.partition(":")
        if colon and name.strip().lower() == "content-disposition":
            if seen:
                return None
            seen = True
            kind, _, params = value.partition(";")
            found = _parameters(params) if kind.strip().lower() == "form-data" else None
    return found


@dataclass(frozen=True)
class FormPart:
    fields: dict[str, str] | None  # part_fields of its headers
    data_start: int  # where its data starts in the body
    data_end: int  # where its data ends (the next delimiter), -1: not within what was read


def form_parts(prefix: bytes, boundary: str) -> list[FormPart]:
    """The parts of a multipart body whose headers are within its first bytes `prefix`, in order."""
    delimiter = b"--" + boundary.encode("ascii")
    parts: list[FormPart] = []
    position = prefix.find(delimiter)
    while position >= 0:
        headers_start = position + len(delimiter) + 2
        if prefix[headers_start - 2 : headers_start] != b"\r\n":
            break  # the closing delimiter (`--`), or not read that far
        headers_end = prefix.find(b"\r\n\r\n", headers_start)
        if headers_end < 0:
            break
        data_start = headers_end + 4
        end = prefix.find(b"\r\n" + delimiter, data_start)
        parts.append(FormPart(part_fields(prefix[headers_start:headers_end]), data_start, end))
        position = end + 2 if end >= 0 else -1
    return parts


def multipart_file(prefix: bytes, boundary: str) -> FilePart | None:
    """The `file` part of a multipart body, from the body's first bytes (its headers must be in them)."""
    delimiter = b"--" + boundary.encode()
    position = prefix.find(delimiter)
    while position >= 0:
        headers_start = position + len(delimiter) + 2
        headers_end = prefix.find(b"\r\n\r\n", headers_start)
        if headers_end < 0:
            return None
        headers = prefix[headers_start:headers_end]
        data_start = headers_end + 4
        fields = part_fields(headers) or {}
        if fields.get("name") == "file":
            media = re.search(rb"(?im)^content-type:\s*([^\r\n]+)", headers)
            end = prefix.find(b"\r\n" + delimiter, data_start)
            return FilePart(
                filename=fields.get("filename", ""),
                media_type=media.group(1).decode(errors="replace").strip() if media else "",
                head=prefix[data_start : end if end >= 0 else len(prefix)],
                offset=data_start,
            )
        position = prefix.find(b"\r\n" + delimiter, data_start)
        if position >= 0:
            position += 2
    return None


# At most one digit more than MAX_TOKENS has: a longer number is clamped, never converted whole.
_MAX_TOKENS = re.compile(rb'"max(?:_completion)?_tokens"\s*:\s*(\d{1,%d})' % (len(str(MAX_TOKENS)) + 1))
_AUDIO_FORMAT = re.compile(rb'"format"\s*:\s*"(\w+)"')
_AUDIO_DATA = re.compile(rb'"(?:input_audio|audio_url)"')


def json_body_work(prefix: bytes, size: int | None) -> Work:
    """A JSON body (chat, completions): output from max_tokens, audio from the size of base64 parts.

    Big bodies are not parsed: a regex over the prefix finds max_tokens when it comes early, and
    the audio is estimated from the body's size (base64 is 4/3 of the bytes).
    """
    output = DEFAULT_OUTPUT_TOKENS
    complete = size is not None and len(prefix) >= size
    if complete:
        try:
            body = json.loads(prefix)
        except (ValueError, RecursionError):  # Python's int-from-str limit is a ValueError
            body = None
        if isinstance(body, dict):
            value = body.get("max_completion_tokens", body.get("max_tokens"))
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                output = min(value, MAX_TOKENS)
    else:
        match = _MAX_TOKENS.search(prefix)
        if match:
            output = min(int(match.group(1)), MAX_TOKENS)
    seconds = 0.0
    if _AUDIO_DATA.search(prefix) or (not complete and size is not None and size > PREFIX_BYTES):
        fmt = _AUDIO_FORMAT.search(prefix)
        kind = fmt.group(1).decode() if fmt else ""
        audio_bytes = (size if size is not None else len(prefix)) * 3 / 4
        seconds = audio_bytes / BYTES_PER_SECOND.get(kind, FALLBACK_BYTES_PER_SECOND)
    return Work(audio_seconds=seconds, output_tokens=output)


def estimate(content_type: str, prefix: bytes, size: int | None) -> Work:
    """The work of a request from its Content-Type, its body's first bytes and its size (None: chunked)."""
    boundary = multipart_boundary(content_type)
    if boundary is not None:
        part = multipart_file(prefix, boundary)
        if part is None:
            return Work(audio_seconds=(size or len(prefix)) / FALLBACK_BYTES_PER_SECOND, output_tokens=0)
        file_size = None if size is None else max(0, size - part.offset - len(boundary) - 200)
        seconds = audio_seconds(part.head, file_size, part.media_type, part.filename)
        # A transcript is about 4 tokens per second of speech.
        return Work(audio_seconds=seconds, output_tokens=int(seconds * 4))
    if not prefix:
        return Work(audio_seconds=0.0, output_tokens=0)
    return json_body_work(prefix, size)
