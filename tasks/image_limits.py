"""The limits an image input is held to, and the error of a refused one (a leaf: the image loader and the URL fetch
both use them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.errors import PermanentError

if TYPE_CHECKING:
    from core.settings import Settings


class ImageInputError(PermanentError):
    """An image task's input is refused or is not a decodable image."""

    kind = "invalid_image"


@dataclass(frozen=True)
class ImageLimits:
    """The security limits of :func:`load_image` (built from the worker settings)."""

    allowed_roots: tuple[str, ...] = ()
    allow_urls: bool = False
    allow_private_urls: bool = False
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    url_timeout: float = 10.0

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageLimits:
        return cls(
            allowed_roots=tuple(settings.images_allowed_roots),
            allow_urls=settings.images_allow_urls,
            allow_private_urls=settings.images_allow_private_urls,
            max_bytes=settings.images_max_bytes,
            max_pixels=settings.images_max_pixels,
            url_timeout=settings.images_url_timeout,
        )
