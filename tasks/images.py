"""Image inputs: a local path, a ``data:`` URI or bare base64, or an http(s) URL -> RGB pixels.

Every way in is bounded before anything is decoded: local paths must resolve
(symlinks and ``..`` included) under ``images_allowed_roots``; URLs are off
unless ``images_allow_urls`` and never reach private, loopback, link-local or
reserved addresses unless ``images_allow_private_urls`` (see
:mod:`tasks.image_fetch`); bytes are capped by ``images_max_bytes`` and pixels
by ``images_max_pixels`` (read from the header, before the pixel data is
decoded). Every refusal is an :class:`ImageInputError` (a
:class:`~core.errors.PermanentError`) naming the task, the input and what to do.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import os
import re
import stat
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from PIL import Image, UnidentifiedImageError

from tasks.image_fetch import fetch_url
from tasks.image_limits import ImageInputError, ImageLimits

__all__ = ["ImageInputError", "ImageLimits", "LoadedImage", "load_image"]

if TYPE_CHECKING:
    pass

SourceKind = Literal["path", "url", "data"]
_BASE64 = re.compile(r"^[A-Za-z0-9+/_-]+={0,2}$")
#: Pillow decoders an image task may reach; the others (EPS runs Ghostscript, PSD, FITS, ...) stay off
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
#: decoded images are kept (until their batch is embedded) at most this many pixels on a side
MAX_KEPT_SIDE = 1024
_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,", re.I)
#: bare base64 is told from a path by its alphabet (no "."), a minimum length and, for strings that
#: look like paths ("/9j/..." is JPEG in base64), an image signature in the decoded bytes
_MIN_BARE_BASE64 = 64
_PATH_START = ("/", "./", "../", "~")
_SIGNATURES = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"RIFF", b"BM", b"II*\x00", b"MM\x00*", b"\x00\x00\x01\x00")


@dataclass
class LoadedImage:
    image: Image.Image | None = field(repr=False)  # RGB; None once released
    source: SourceKind
    ref: str  # the path or URL, or a short description of inline data
    nbytes: int
    size: tuple[int, int] = (0, 0)  # width, height

    def __post_init__(self) -> None:
        if self.image is not None:
            self.size = self.image.size

    def release(self) -> None:
        """Drop the pixels (the embedding is done); ``size`` and ``ref`` stay."""
        self.image = None


def classify(data: str) -> SourceKind:
    """Which of the three forms ``data`` is (the string is not touched otherwise)."""
    head = data[:16].lower()
    if head.startswith(("http://", "https://")):
        return "url"
    if head.startswith("data:"):
        return "data"
    compact = "".join(data.split())
    if len(compact) < _MIN_BARE_BASE64 or not _BASE64.match(compact):
        return "path"
    if not data.startswith(_PATH_START) or _image_signature(compact):
        return "data"
    return "path"


def _image_signature(compact: str) -> bool:
    try:
        head = base64.b64decode(compact[:64].replace("-", "+").replace("_", "/"))
    except (binascii.Error, ValueError):
        return False
    return head.startswith(_SIGNATURES) or head[4:8] == b"ftyp"


def describe(data: str) -> str:
    """How an input is named in messages: paths and URLs as sent (shortened), inline data by size."""
    kind = classify(data)
    if kind == "data":
        return f"inline image data ({len(data)} characters)"
    shown = data if len(data) <= 200 else data[:197] + "..."
    return f"{kind} {shown!r}"


async def load_image(data: str, limits: ImageLimits, *, task_id: str) -> LoadedImage:
    """Load and decode one image off the event loop (file reads, downloads and decoding block)."""
    return await asyncio.to_thread(load_image_sync, data, limits, task_id=task_id)


def load_image_sync(data: str, limits: ImageLimits, *, task_id: str) -> LoadedImage:
    """Blocking: fetch the bytes of ``data`` within ``limits``, check the header, decode to RGB.

    Raises :class:`ImageInputError` for every refusal and undecodable input.
    """
    kind = classify(data)
    where = f"Task {task_id}: image input {describe(data)}"
    if kind == "path":
        raw, ref = read_local(data, limits, where), os.path.realpath(data)
    elif kind == "url":
        raw, ref = fetch_url(data, limits, where), data
    else:
        raw, ref = decode_inline(data, limits, where), f"inline ({len(data)} characters)"
    return LoadedImage(image=decode_image(raw, limits, where), source=kind, ref=ref, nbytes=len(raw))


def read_local(path: str, limits: ImageLimits, where: str) -> bytes:
    """The bytes of a file under one of the allowed roots (after resolving every symlink and ``..``)."""
    if not limits.allowed_roots:
        raise ImageInputError(
            f"{where} refused: local image paths are off because no allowed root is configured; "
            "set images_allowed_roots (YAML images.allowed_roots, env VECTORIZE_WORKER_IMAGES_ALLOWED_ROOTS) "
            "to the folders images may be read from, or send the image as base64 or a data: URI."
        )
    real = os.path.realpath(path)
    roots = [os.path.realpath(root) for root in limits.allowed_roots]
    if not any(_within(real, root) for root in roots):
        raise ImageInputError(
            f"{where} refused: it resolves to {real!r}, outside the allowed roots ({', '.join(roots)}; "
            "images_allowed_roots); paths may not leave them through '..' or symbolic links. "
            "Copy the image under an allowed root or send it inline."
        )
    try:
        # O_NOFOLLOW: a symlink swapped in after the check above is not followed
        fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise ImageInputError(f"{where} cannot be read ({exc.strerror}); check that the file exists.") from None
    opened = _opened_path(fd)
    if opened is not None and not any(_within(opened, root) for root in roots):
        os.close(fd)  # a directory on the way was swapped for a symlink after the check above
        raise ImageInputError(
            f"{where} refused: the file opened is outside the allowed roots (images_allowed_roots); "
            "paths may not leave them through symbolic links."
        )
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise ImageInputError(f"{where} is not a regular file; send the path of an image file.")
    with os.fdopen(fd, "rb") as handle:
        if info.st_size > limits.max_bytes:
            raise _too_many_bytes(where, info.st_size, limits)
        raw = handle.read(limits.max_bytes + 1)
    if len(raw) > limits.max_bytes:  # the file grew after the check
        raise _too_many_bytes(where, len(raw), limits)
    return raw


def _opened_path(fd: int) -> str | None:
    """The path the kernel resolved for ``fd`` (Linux), None where the system cannot tell."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def decode_inline(data: str, limits: ImageLimits, where: str) -> bytes:
    """The bytes of a ``data:`` URI or bare base64 string (size checked before decoding)."""
    text = data
    match = _DATA_URI.match(data)
    if data[:5].lower() == "data:":
        if match is None or not match.group("b64"):
            raise ImageInputError(f"{where} is not a base64 data URI; send 'data:image/png;base64,<base64 bytes>'.")
        mime = (match.group("mime") or "").lower()
        if mime and not mime.startswith("image/"):
            raise ImageInputError(f"{where} declares the media type {mime!r}, not an image; send an image.")
        text = data[match.end() :]
    compact = "".join(text.split())
    if len(compact) * 3 // 4 > limits.max_bytes + 2:
        raise _too_many_bytes(where, len(compact) * 3 // 4, limits)
    try:
        if "-" in compact or "_" in compact:
            raw = base64.urlsafe_b64decode(compact + "=" * (-len(compact) % 4))
        else:
            raw = base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageInputError(f"{where} is not valid base64 ({exc}); send the image's bytes base64-encoded.") from None
    if len(raw) > limits.max_bytes:
        raise _too_many_bytes(where, len(raw), limits)
    return raw


def decode_image(raw: bytes, limits: ImageLimits, where: str) -> Image.Image:
    """Header first (format and size, pixel limit), then the pixels, converted to RGB."""
    if not raw:
        raise ImageInputError(f"{where} is empty (0 bytes); send an image file.")
    try:
        image = Image.open(io.BytesIO(raw), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise _too_many_pixels(where, None, limits, str(exc)) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageInputError(
            f"{where} is not an image in an accepted format ({len(raw)} bytes: {str(exc).split(' <')[0]}). "
            "Send a PNG, JPEG, WebP, GIF, BMP or TIFF file."
        ) from None
    width, height = image.size
    if width * height > limits.max_pixels:
        image.close()
        raise _too_many_pixels(where, (width, height), limits)
    try:
        image.load()
        rgb = image.convert("RGB")
        if max(rgb.size) > MAX_KEPT_SIDE:
            # the image models see a few hundred pixels; keeping full-size copies of a batch of large
            # photos (up to images_max_pixels each) until the model runs would cost gigabytes
            rgb.thumbnail((MAX_KEPT_SIDE, MAX_KEPT_SIDE), Image.Resampling.BICUBIC)
        return rgb
    except Image.DecompressionBombError as exc:
        raise _too_many_pixels(where, (width, height), limits, str(exc)) from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageInputError(
            f"{where} is a {image.format or 'image'} of {width}x{height} that cannot be decoded "
            f"(truncated or corrupt: {exc}); send the complete file."
        ) from None
    finally:
        image.close()


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _too_many_bytes(where: str, size: int, limits: ImageLimits) -> ImageInputError:
    return ImageInputError(
        f"{where} refused: {size} bytes, over images_max_bytes ({limits.max_bytes} bytes, "
        "VECTORIZE_WORKER_IMAGES_MAX_BYTES); send a smaller image or raise the limit."
    )


def _too_many_pixels(
    where: str, size: tuple[int, int] | None, limits: ImageLimits, detail: str = ""
) -> ImageInputError:
    dims = f"{size[0]}x{size[1]} = {size[0] * size[1]} pixels" if size else "its header claims too many pixels"
    extra = f" ({detail})" if detail else ""
    return ImageInputError(
        f"{where} refused as a possible decompression bomb: {dims}, over images_max_pixels "
        f"({limits.max_pixels}, VECTORIZE_WORKER_IMAGES_MAX_PIXELS){extra}; send a smaller image or raise the limit."
    )
