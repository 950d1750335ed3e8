"""Camera frame codecs for the wire: raw, zlib (stdlib), png and jpeg (Pillow, imported only when used).

A codec turns uint8 frames [k, H, W, C] into one blob per frame and back. Frames are coded one by one so
that a batch's obs and next frames share blobs exactly (a slice of a batch re-uses them, never re-codes a
lossy frame). "raw" sends the array itself; the others are chosen per camera by configuration:

    raw        the pixels as they are (the default: the cheapest for a runner's CPU)
    zlib[:L]   lossless, stdlib deflate at level L (default 1)
    png[:L]    lossless, PNG at compress level L (default 1; needs Pillow: the `camera` extra)
    jpeg[:Q]   lossy, JPEG at quality Q (default 90; needs Pillow: the `camera` extra)

Decoding trusts nothing: it never produces more than the declared frame's bytes (zlib with max_length; an
image's size and mode are read from its header and checked before the pixels are decoded), and a bad blob
of any kind is one `FrameError` with a reason code, which the protocol reports as a ProtocolError.
"""

from __future__ import annotations

import difflib
import io
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

CODECS = ("raw", "zlib", "png", "jpeg")
DEFAULT_LEVEL = {"raw": 0, "zlib": 1, "png": 1, "jpeg": 90}
LEVELS = {"raw": (0, 0), "zlib": (0, 9), "png": (0, 9), "jpeg": (1, 100)}
PILLOW_FORMAT = {"png": "PNG", "jpeg": "JPEG"}
PILLOW_MODE = {1: "L", 3: "RGB"}
CAMERA_EXTRA = "pip install 'robot-wsrl[camera]'"


class FrameError(ValueError):
    """A codec cannot be used or a blob is not the frame it should be; `reason` is "codec" or "image"."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Codec:
    """One camera stream's coding: `name` in CODECS and its `level` (zlib/png effort, jpeg quality)."""

    name: str = "raw"
    level: int | None = None  # None: the codec's default

    def __post_init__(self) -> None:
        if self.name not in CODECS:
            close = difflib.get_close_matches(str(self.name), CODECS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise FrameError("codec", f"unknown frame codec {self.name!r}{hint}; codecs are {list(CODECS)}")
        lo, hi = LEVELS[self.name]
        level = self.level
        if level is not None and not (
            isinstance(level, int) and not isinstance(level, bool) and lo <= level <= hi
        ):
            raise FrameError(
                "codec", f"codec {self.name!r}: level must be an int in {lo}..{hi}, got {level!r}"
            )

    @classmethod
    def parse(cls, text: str | Codec) -> Codec:
        """A codec from configuration text: "raw", "zlib", "png:3", "jpeg:85" ..."""
        if isinstance(text, Codec):
            return text
        name, _, level = str(text).strip().partition(":")
        if level and not level.strip().isdigit():
            raise FrameError("codec", f"codec {text!r}: the level after ':' must be an integer")
        return cls(name.strip(), int(level) if level else None)

    @property
    def effective_level(self) -> int:
        return DEFAULT_LEVEL[self.name] if self.level is None else self.level

    @property
    def lossless(self) -> bool:
        return self.name != "jpeg"

    def __str__(self) -> str:
        return self.name if self.level is None else f"{self.name}:{self.level}"

    def check_available(self) -> None:
        """Raise FrameError("codec") now, at configuration time, if this codec's library is missing."""
        if self.name in PILLOW_FORMAT:
            _pillow(self.name)

    # ----- coding -----

    def encode(self, frames: np.ndarray) -> list[bytes]:
        """One blob per frame of uint8 `frames` [k, H, W, C] (not for "raw", which sends the array)."""
        level = self.effective_level
        if self.name == "zlib":
            return [zlib.compress(frame.tobytes(), level) for frame in frames]
        image = _pillow(self.name)
        options: dict[str, Any] = {"compress_level": level} if self.name == "png" else {"quality": level}
        blobs = []
        for frame in frames:
            out = io.BytesIO()
            pixels = frame[:, :, 0] if frame.shape[2] == 1 else frame
            image.fromarray(np.ascontiguousarray(pixels)).save(
                out, format=PILLOW_FORMAT[self.name], **options
            )
            blobs.append(out.getvalue())
        return blobs

    def decode(self, blob: bytes | memoryview, shape: tuple[int, int, int]) -> np.ndarray:
        """The uint8 frame of `shape` that `blob` codes, or FrameError; nothing else escapes."""
        if self.name == "zlib":
            return _inflate(blob, shape)
        if self.name not in PILLOW_FORMAT:
            raise FrameError("codec", f"codec {self.name!r} sends arrays, not blobs")
        image = _pillow(self.name)
        try:
            return _decode_image(image, blob, PILLOW_FORMAT[self.name], shape)
        except FrameError:
            raise
        except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, EOFError, zlib.error ...
            raise FrameError(
                "image", f"not a valid {self.name} frame ({type(exc).__name__}: {exc})"
            ) from None


def _pillow(codec: str) -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise FrameError(
            "codec", f"the {codec} frame codec needs Pillow, which is not installed: {CAMERA_EXTRA}"
        ) from None
    return Image


def _inflate(blob: bytes | memoryview, shape: tuple[int, int, int]) -> np.ndarray:
    """Inflate at most the frame's bytes: a blob that would give more (a zip bomb) is refused unread."""
    size = int(np.prod(shape))
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(blob, size)
        more = inflater.decompress(inflater.unconsumed_tail, 1) if not inflater.eof else b""
    except zlib.error as exc:
        raise FrameError("image", f"not a valid zlib frame ({exc})") from None
    if more or (len(out) == size and not inflater.eof):
        raise FrameError("image", f"zlib frame inflates beyond its {size} bytes {list(shape)}")
    if len(out) != size or not inflater.eof or inflater.unused_data:
        raise FrameError("image", f"zlib frame inflates to {len(out)} bytes, {list(shape)} needs {size}")
    return np.frombuffer(out, np.uint8).reshape(shape)


def _decode_image(image: Any, blob: bytes | memoryview, fmt: str, shape: tuple[int, int, int]) -> np.ndarray:
    """Read the header first (size, mode) and decode the pixels only when they are the declared frame."""
    height, width, channels = shape
    with image.open(io.BytesIO(blob), formats=[fmt]) as img:
        if img.size != (width, height) or img.mode != PILLOW_MODE[channels]:
            raise FrameError(
                "image",
                f"{fmt} frame is {img.mode} {img.size[0]}x{img.size[1]} (w x h), "
                f"{PILLOW_MODE[channels]} {width}x{height} expected",
            )
        img.load()
        pixels = np.asarray(img, dtype=np.uint8)
    if pixels.size != height * width * channels:
        raise FrameError("image", f"{fmt} frame decoded to {pixels.shape}, {list(shape)} expected")
    return pixels.reshape(shape)
