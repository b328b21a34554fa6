"""Decoding: bytes, a path or a binary stream → mono float32 in [-1, 1] at the analysis rate.

libsndfile (through ``soundfile``) decodes WAV, FLAC, OGG/Vorbis, Opus and MP3 at any sample rate,
channel count and sample format; ``soxr`` resamples. The header is read first, so audio longer than
the configured maximum (or with more native samples than the decoding budget) is refused before a
single sample is decoded, decoding stops as soon as a lying header is exceeded, and blocks are
resampled as they are decoded, so memory follows the analysis-rate signal, never the native one.
Every failure is a typed :class:`~app.core.errors.ServiceError`.
"""

from __future__ import annotations

import io
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf
import soxr

from app.core.contract import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE
from app.core.errors import (
    AudioTooLargeError,
    AudioTooLongError,
    AudioTooShortError,
    CorruptAudioError,
    EmptyAudioError,
    InvalidRequestError,
    UnsupportedAudioError,
)
from app.core.types import FloatArray

Source = bytes | bytearray | memoryview | str | os.PathLike[str] | BinaryIO

_BLOCK_FRAMES = 1 << 16
# MP3 headers without an exact frame count (no Xing/Info tag) give an estimate; tolerate that much.
_MP3_FRAME_TOLERANCE = 0.02


@dataclass(frozen=True)
class AudioInfo:
    """What the header says about a file, read without decoding samples.

    Attributes:
        sample_rate: Native sample rate in Hz.
        channels: Channel count.
        frames: Declared number of sample frames (an estimate for some MP3s).
        format: libsndfile container name (``WAV``, ``FLAC``, ``OGG``, ``MP3``, ...).
        subtype: libsndfile sample format (``PCM_16``, ``FLOAT``, ``VORBIS``, ...).
    """

    sample_rate: int
    channels: int
    frames: int
    format: str
    subtype: str

    @property
    def duration_s(self) -> float:
        """Declared duration in seconds."""
        return self.frames / self.sample_rate


def probe(source: Source) -> AudioInfo:
    """Read only the header of ``source``.

    Raises:
        UnsupportedAudioError: if the data is not a recognised audio format or its rate is out of
            range.
    """
    with _open(source) as f:
        return _info(f)


def decode(
    source: Source,
    sample_rate: int,
    *,
    max_duration_s: float | None = None,
    min_duration_s: float = 0.0,
    offset_s: float = 0.0,
    duration_s: float | None = None,
    max_decoded_samples: int | None = None,
) -> FloatArray:
    """Decode audio to mono float32 in [-1, 1] at ``sample_rate``.

    The file is decoded block by block: each block is mixed to mono and fed to a streaming resampler,
    so memory holds the analysis-rate signal and one native block, never the native-rate signal (a
    15-minute 192 kHz file costs what 15 minutes at 16 kHz cost). Only the requested time range is
    decoded: the file is seeked to ``offset_s`` and reading stops after ``duration_s``.

    Args:
        source: Encoded bytes, a file path, or a seekable binary stream.
        sample_rate: Target (analysis) sample rate in Hz.
        max_duration_s: Refuse audio (or the requested range) longer than this, from the header.
        min_duration_s: Refuse decoded audio shorter than this (e.g. one analysis frame).
        offset_s: Start of the range to decode, in seconds.
        duration_s: Length of the range to decode, in seconds (``None``: to the end).
        max_decoded_samples: Refuse a range whose native samples (frames x channels, from the header)
            exceed this: the decoding work a small compressed file can demand.

    Returns:
        1-D float32 array at ``sample_rate``.

    Raises:
        UnsupportedAudioError: unrecognised format, or a native rate outside 8–192 kHz.
        CorruptAudioError: damaged or truncated data, or non-finite samples.
        EmptyAudioError: no samples at all.
        AudioTooShortError: fewer than ``min_duration_s`` seconds.
        AudioTooLongError: more than ``max_duration_s`` seconds.
        AudioTooLargeError: more than ``max_decoded_samples`` native samples.
        InvalidRequestError: a negative offset/duration, or an offset past the end.

    Example:
        >>> x = decode(Path("song.mp3").read_bytes(), 16_000, max_duration_s=900)
        >>> x.dtype, x.ndim
        (dtype('float32'), 1)
    """
    if not (math.isfinite(offset_s) and offset_s >= 0) or (
        duration_s is not None and not (math.isfinite(duration_s) and duration_s > 0)
    ):
        raise InvalidRequestError("offset_s must be a finite number >= 0 and duration_s a finite number > 0")
    with _open(source) as f:
        info = _info(f)
        if info.format == "WAV":
            _check_riff_complete(source)
        # Compared in seconds first: offset_s * rate of a huge (finite) offset overflows to inf.
        start = round(offset_s * info.sample_rate) if offset_s < info.duration_s else info.frames
        if start and start >= info.frames:
            raise InvalidRequestError(
                f"offset_s {offset_s} is past the end of the audio ({info.duration_s:.2f} s)"
            )
        wanted = info.frames - start
        if duration_s is not None:
            wanted = min(wanted, round(min(duration_s, info.duration_s) * info.sample_rate))
        limit = None if max_duration_s is None else round(max_duration_s * info.sample_rate)
        if limit is not None and wanted > limit:
            raise AudioTooLongError(
                f"audio lasts {wanted / info.sample_rate:.1f} s; the limit is {max_duration_s:g} s"
            )
        if max_decoded_samples is not None and wanted * info.channels > max_decoded_samples:
            raise AudioTooLargeError(
                f"{wanted / info.sample_rate:.1f} s of {info.channels}-channel audio at "
                f"{info.sample_rate} Hz is {wanted * info.channels} samples to decode; the limit is "
                f"{max_decoded_samples}"
            )
        mono, read = _read_resampled(
            f, info, start, wanted if duration_s is not None else None, limit, sample_rate
        )
    if read == 0:
        raise EmptyAudioError("the audio holds no samples")
    expected = wanted if duration_s is not None else info.frames - start
    if read < expected * (1 - (_MP3_FRAME_TOLERANCE if info.format == "MP3" else 0)):
        raise CorruptAudioError(f"audio is truncated: header declares {expected} frames, only {read} decode")
    # Float formats may exceed full scale, and resampling can overshoot it slightly.
    np.clip(mono, -1.0, 1.0, out=mono)
    if mono.size < min_duration_s * sample_rate:
        raise AudioTooShortError(
            f"audio lasts {mono.size / sample_rate:.3f} s; at least {min_duration_s:g} s is needed"
        )
    return mono


def _open(source: Source) -> sf.SoundFile:
    fileobj: str | BinaryIO
    if isinstance(source, bytes | bytearray | memoryview):
        fileobj = io.BytesIO(bytes(source))
    elif isinstance(source, str | os.PathLike):
        fileobj = os.fspath(source)
    else:
        fileobj = source
        fileobj.seek(0)
    try:
        return sf.SoundFile(fileobj)
    except sf.LibsndfileError as exc:
        text = str(exc)
        if "malformed" in text or "lost sync" in text:
            raise CorruptAudioError(f"audio data is damaged: {_reason(exc)}") from exc
        raise UnsupportedAudioError(
            "unsupported or unrecognised audio format (WAV, FLAC, OGG/Vorbis, Opus and MP3 are "
            f"supported): {_reason(exc)}"
        ) from exc
    except (OSError, RuntimeError) as exc:
        raise UnsupportedAudioError(f"cannot read audio: {exc}") from exc


def _info(f: sf.SoundFile) -> AudioInfo:
    info = AudioInfo(
        sample_rate=int(f.samplerate),
        channels=int(f.channels),
        frames=int(f.frames),
        format=str(f.format),
        subtype=str(f.subtype),
    )
    if not MIN_SAMPLE_RATE <= info.sample_rate <= MAX_SAMPLE_RATE:
        raise UnsupportedAudioError(
            f"sample rate {info.sample_rate} Hz is outside {MIN_SAMPLE_RATE}–{MAX_SAMPLE_RATE} Hz"
        )
    if info.channels < 1:
        raise CorruptAudioError("audio declares no channels")
    return info


def _read_resampled(
    f: sf.SoundFile, info: AudioInfo, start: int, wanted: int | None, limit: int | None, sample_rate: int
) -> tuple[FloatArray, int]:
    """Decode block by block into a streaming resampler; return the mono signal and native frames read.

    Each block is checked for non-finite samples before it is resampled. The output buffer is sized
    from the header and grows only if the header under-declared (MP3 estimates).
    """
    resampler = (
        None
        if info.sample_rate == sample_rate
        else soxr.ResampleStream(info.sample_rate, sample_rate, 1, dtype="float32", quality="HQ")
    )
    declared = (info.frames - start) if wanted is None else wanted
    out = np.empty(math.ceil(max(declared, 0) * sample_rate / info.sample_rate) + 64, dtype=np.float32)
    filled = total = 0

    def append(chunk: FloatArray) -> None:
        nonlocal out, filled
        if filled + chunk.size > out.size:
            out = np.concatenate([out[:filled], np.empty(max(chunk.size, out.size // 2), np.float32)])
        out[filled : filled + chunk.size] = chunk
        filled += chunk.size

    try:
        if start:
            f.seek(start)
        while wanted is None or total < wanted:
            n = _BLOCK_FRAMES if wanted is None else min(_BLOCK_FRAMES, wanted - total)
            block = f.read(n, dtype="float32", always_2d=True)
            if block.shape[0] == 0:
                break
            mono = block[:, 0].copy() if info.channels == 1 else block.mean(axis=1, dtype=np.float32)
            total += mono.size
            if limit is not None and total > limit:
                # The header under-declared the length; stop before memory follows the lie.
                raise AudioTooLongError(f"audio lasts more than {limit / info.sample_rate:g} s, the limit")
            if not np.all(np.isfinite(mono)):
                raise CorruptAudioError("audio holds NaN or infinite samples")
            append(mono if resampler is None else resampler.resample_chunk(mono, last=False))
    except sf.LibsndfileError as exc:
        raise CorruptAudioError(f"audio data is damaged: {_reason(exc)}") from exc
    if resampler is not None and total:
        append(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
    return out[:filled], total


def _check_riff_complete(source: Source) -> None:
    """Refuse a WAV whose data chunk is shorter than its header declares.

    libsndfile silently shortens such files to what is there; a truncated upload would then be
    analysed as if it were the whole clip.
    """
    head, size = _head_and_size(source, 1 << 16)
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
        return  # RF64/W64 and friends: trust libsndfile
    fmt = "<I" if head[:4] == b"RIFF" else ">I"
    pos = 12
    while pos + 8 <= len(head):
        chunk_id = head[pos : pos + 4]
        (chunk_size,) = struct.unpack(fmt, head[pos + 4 : pos + 8])
        if chunk_id == b"data":
            present = size - pos - 8
            if chunk_size == 0 and present > 0:
                # libsndfile would read zero frames and call the file empty; it is not.
                raise CorruptAudioError(
                    f"WAV data chunk declares 0 bytes but {present} bytes follow it (a header a streaming "
                    "writer never finished?); rewrite the header with the real length"
                )
            # 0xFFFFFFFF is the placeholder of streaming encoders; libsndfile reads to the end then.
            if chunk_size != 0xFFFFFFFF and pos + 8 + chunk_size > size:
                raise CorruptAudioError(
                    f"WAV is truncated: data chunk declares {chunk_size} bytes, {size - pos - 8} are present"
                )
            return
        pos += 8 + chunk_size + (chunk_size & 1)


def _head_and_size(source: Source, n: int) -> tuple[bytes, int]:
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        return data[:n], len(data)
    if isinstance(source, str | os.PathLike):
        path = Path(os.fspath(source))
        with path.open("rb") as fh:
            return fh.read(n), path.stat().st_size
    pos = source.tell()
    source.seek(0)
    head = source.read(n)
    size = source.seek(0, io.SEEK_END)
    source.seek(pos)
    return head, size


def _reason(exc: Exception) -> str:
    # libsndfile prefixes messages with "Error opening <_io.BytesIO object at 0x...>:"; drop that.
    text = str(exc).split(">: ", 1)[-1].strip()
    if "does not exist or is not a regular file" in text:
        # What libsndfile says of in-memory data in which it finds no stream it can open at all (e.g.
        # an MP3 cut off before its first complete frame); there is no file or pipe involved.
        return "no decodable audio stream found: the data is too short, damaged or not audio"
    return text
