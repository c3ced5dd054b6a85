"""The image loader's security limits and input forms (tasks/images.py, tasks/image_fetch.py)."""

from __future__ import annotations

import base64
import gzip
import io
import os
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tasks.image_fetch
from tasks.images import ImageInputError, ImageLimits, classify, load_image, load_image_sync


def photo(width: int = 96, height: int = 64, seed: int = 0) -> Image.Image:
    """A photo-like RGB image: smooth gradients, a disc and sensor noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    r = 120 + 100 * np.sin(x / 13.0)
    g = 80 + 60 * np.cos(y / 9.0)
    b = 255 * ((x - width / 2) ** 2 + (y - height / 2) ** 2 < (height / 3) ** 2)
    pixels = np.stack([r, g, b], axis=-1) + rng.normal(0, 8, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` with almost no data: a decompression-bomb header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    return folder


@pytest.fixture
def limits(root: Path) -> ImageLimits:
    return ImageLimits(allowed_roots=(str(root),), max_bytes=256 * 1024, max_pixels=1_000_000, url_timeout=2.0)


def refused(data: str, limits: ImageLimits, task_id: str = "t-1") -> str:
    with pytest.raises(ImageInputError) as info:
        load_image_sync(data, limits, task_id=task_id)
    message = str(info.value)
    assert message.startswith(f"Task {task_id}: image input "), message
    return message


# -- local paths -------------------------------------------------------------------------
def test_path_under_an_allowed_root_loads_as_rgb(root: Path, limits: ImageLimits) -> None:
    Image.new("RGBA", (10, 7), (255, 0, 0, 128)).save(root / "a.png")
    loaded = load_image_sync(str(root / "a.png"), limits, task_id="t")
    assert loaded.image is not None and loaded.image.mode == "RGB" and loaded.size == (10, 7)
    assert (loaded.source, loaded.ref) == ("path", str(root / "a.png"))


def test_local_paths_are_refused_without_allowed_roots(root: Path) -> None:
    photo().save(root / "a.png")
    message = refused(str(root / "a.png"), ImageLimits())
    assert "local image paths are off" in message and "images_allowed_roots" in message
    assert "VECTORIZE_WORKER_IMAGES_ALLOWED_ROOTS" in message


def test_path_traversal_is_refused(root: Path, limits: ImageLimits) -> None:
    secret = root.parent / "secret.png"
    photo().save(secret)
    message = refused(f"{root}/../secret.png", limits)
    assert f"resolves to '{secret}', outside the allowed roots" in message


def test_symlink_escape_is_refused(root: Path, limits: ImageLimits) -> None:
    outside = root.parent / "outside"
    outside.mkdir()
    photo().save(outside / "x.png")
    (root / "link.png").symlink_to(outside / "x.png")
    (root / "dir").symlink_to(outside)
    assert "outside the allowed roots" in refused(str(root / "link.png"), limits)
    assert "outside the allowed roots" in refused(str(root / "dir" / "x.png"), limits)


def test_etc_passwd_is_refused(limits: ImageLimits) -> None:
    assert "resolves to '/etc/passwd', outside the allowed roots" in refused("/etc/passwd", limits)
    # even with / allowed it is not an image
    assert "is not an image" in refused("/etc/passwd", replace(limits, allowed_roots=("/",)))


def test_a_root_prefix_is_not_a_root(root: Path, limits: ImageLimits) -> None:
    sibling = Path(f"{root}-evil")
    sibling.mkdir()
    photo().save(sibling / "a.png")
    assert "outside the allowed roots" in refused(str(sibling / "a.png"), limits)


def test_missing_file_and_directory(root: Path, limits: ImageLimits) -> None:
    assert "cannot be read (No such file or directory)" in refused(str(root / "none.png"), limits)
    (root / "sub").mkdir()
    assert "is not a regular file" in refused(str(root / "sub"), limits)


# -- size and content --------------------------------------------------------------------
def test_oversized_file_and_base64_are_refused_before_decoding(root: Path, limits: ImageLimits) -> None:
    big = b"\x89PNG\r\n\x1a\n" + os.urandom(limits.max_bytes - 7)  # a PNG signature, so bare base64 is told from a path
    (root / "big.png").write_bytes(big)
    message = refused(str(root / "big.png"), limits)
    assert f"{limits.max_bytes + 1} bytes, over images_max_bytes ({limits.max_bytes} bytes" in message
    encoded = base64.b64encode(big).decode()
    assert "over images_max_bytes" in refused(encoded, limits)
    assert "over images_max_bytes" in refused("data:image/png;base64," + encoded, limits)


def test_decompression_bomb_header_is_refused(root: Path, limits: ImageLimits) -> None:
    (root / "bomb.png").write_bytes(png_header_only(100_000, 100_000))
    message = refused(str(root / "bomb.png"), limits)
    assert "decompression bomb" in message and "images_max_pixels (1000000" in message
    # a header just over our limit (under Pillow's own) is refused by the worker's check, with its size
    (root / "wide.png").write_bytes(png_header_only(2000, 501))
    assert "2000x501 = 1002000 pixels, over images_max_pixels" in refused(str(root / "wide.png"), limits)


def test_highly_compressible_huge_image_is_refused(root: Path, limits: ImageLimits) -> None:
    buf = io.BytesIO()
    Image.new("L", (4000, 3000)).save(buf, format="PNG", optimize=True)
    assert len(buf.getvalue()) < limits.max_bytes  # small on disk, 12 MP in memory
    (root / "flat.png").write_bytes(buf.getvalue())
    assert "4000x3000 = 12000000 pixels, over images_max_pixels" in refused(str(root / "flat.png"), limits)


def test_non_image_and_truncated_png(root: Path, limits: ImageLimits) -> None:
    (root / "notes.png").write_text("just some text, not pixels\n")
    message = refused(str(root / "notes.png"), limits)
    assert (
        "is not an image in an accepted format (27 bytes: cannot identify image file)" in message
        and "Send a PNG, JPEG" in message
    )
    assert "just" not in message  # the file's content never goes into statuses and dead letters
    whole = png_bytes(photo(200, 150))
    (root / "cut.png").write_bytes(whole[: len(whole) // 2])
    message = refused(str(root / "cut.png"), limits)
    assert "is a PNG of 200x150 that cannot be decoded (truncated or corrupt" in message
    assert "send the complete file" in message
    (root / "empty.png").write_bytes(b"")
    assert "is empty (0 bytes)" in refused(str(root / "empty.png"), limits)


def test_formats_outside_the_allow_list_are_refused(root: Path, limits: ImageLimits) -> None:
    # EPS would make Pillow run Ghostscript on untrusted input
    (root / "doc.eps").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    (root / "pic.ico").write_bytes(_ico())
    for name in ("doc.eps", "pic.ico"):
        assert "is not an image in an accepted format" in refused(str(root / name), limits)


def _ico() -> bytes:
    buf = io.BytesIO()
    photo(16, 16).save(buf, format="ICO")
    return buf.getvalue()


def test_a_directory_swapped_for_a_symlink_after_the_check_is_refused(
    root: Path, limits: ImageLimits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(png_bytes(photo()))
    (root / "sub").mkdir()
    (root / "sub" / "secret.png").write_bytes(png_bytes(photo()))
    real_open = os.open

    def swap_then_open(path: str, flags: int, *args: int) -> int:
        # the race: after the realpath check, "sub" becomes a symlink to a folder outside the root
        if not (root / "sub").is_symlink():
            (root / "sub" / "secret.png").unlink()
            (root / "sub").rmdir()
            (root / "sub").symlink_to(outside)
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", swap_then_open)
    message = refused(str(root / "sub" / "secret.png"), limits)
    assert "the file opened is outside the allowed roots" in message


def test_bad_base64_and_non_image_data_uri(limits: ImageLimits) -> None:
    assert "is not a base64 data URI" in refused("data:image/png,rawbytes", limits)
    assert "declares the media type 'text/plain', not an image" in refused("data:text/plain;base64,aGk=", limits)
    assert "is not valid base64" in refused("data:image/png;base64,@@@@", limits)


def test_forms_are_told_apart() -> None:
    encoded = base64.b64encode(png_bytes(photo())).decode()
    assert classify("/srv/images/cat.jpg") == "path"
    assert classify("relative/cat.png") == "path"
    assert classify("HTTPS://example.com/cat.png") == "url"
    assert classify("data:image/png;base64,AAAA") == "data"
    assert classify(encoded) == "data"
    assert classify(encoded[:40] + "\n" + encoded[40:]) == "data"  # line-wrapped base64
    buf = io.BytesIO()
    photo().save(buf, format="JPEG")
    jpeg = base64.b64encode(buf.getvalue()).decode()
    assert jpeg.startswith("/9j/") and classify(jpeg) == "data"  # starts like a path, decodes to a JPEG
    assert classify("/srv/images/" + "a" * 80) == "path"  # a long path without an extension


# -- URLs --------------------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        server: _Server = self.server  # type: ignore[assignment]
        server.hosts.append(self.headers.get("Host", ""))
        if self.path == "/img.png":
            self._send(200, server.image)
        elif self.path == "/big":
            self._send(200, os.urandom(server.big))
        elif self.path == "/big-chunked":
            self.send_response(200)
            self.end_headers()  # no Content-Length: the body runs until the connection closes
            for _ in range(server.big // 4096 + 2):
                self.wfile.write(os.urandom(4096))
        elif self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/img.png")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/gzip":
            body = gzip.compress(b"\0" * (server.big * 4))  # small on the wire, larger than the limit inflated
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/slow":
            time.sleep(3)
            self._send(200, server.image)
        else:
            self._send(404, b"no")

    def _send(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    image = b""
    big = 0
    hosts: list[str]

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # the loader hangs up on purpose (byte limit, timeout): not an error here


@pytest.fixture
def server(limits: ImageLimits) -> Iterator[_Server]:
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.image = png_bytes(photo())
    srv.big = limits.max_bytes + 10
    srv.hosts = []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def url(server: _Server, path: str, host: str = "127.0.0.1") -> str:
    return f"http://{host}:{server.server_address[1]}{path}"


def test_urls_are_off_by_default(server: _Server, limits: ImageLimits) -> None:
    message = refused(url(server, "/img.png"), limits)
    assert "image URLs are off; set images_allow_urls=true" in message
    assert server.hosts == []  # nothing was requested


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("http://127.0.0.1/x.png", "resolves to 127.0.0.1, a loopback address"),
        ("http://10.1.2.3/x.png", "resolves to 10.1.2.3, a private address"),
        ("http://192.168.0.7/x.png", "resolves to 192.168.0.7, a private address"),
        ("http://169.254.169.254/latest/meta-data/", "resolves to 169.254.169.254, a link-local address"),
        ("http://localhost/x.png", "'localhost' resolves to"),
        ("http://[::1]/x.png", "resolves to ::1, a loopback address"),
        ("http://[::ffff:127.0.0.1]/x.png", "a loopback address"),
        ("http://[2002:7f00:1::]/x.png", "a loopback address"),  # 6to4 wrapping 127.0.0.1
        ("http://[2002:a01:203::]/x.png", "a private address"),  # 6to4 wrapping 10.1.2.3
        ("http://0.0.0.0/x.png", "0.0.0.0, a"),
    ],
)
def test_private_addresses_are_refused(limits: ImageLimits, target: str, reason: str) -> None:
    message = refused(target, replace(limits, allow_urls=True))
    assert reason in message and "images_allow_private_urls=true" in message


def test_a_hostname_resolving_to_loopback_is_refused(server: _Server, limits: ImageLimits) -> None:
    # localhost is a name, not an address: the check is on what it resolves to
    message = refused(url(server, "/img.png", host="localhost"), replace(limits, allow_urls=True))
    assert "the host 'localhost' resolves to" in message and "loopback" in message
    assert server.hosts == []


def test_a_redirect_to_a_private_address_is_checked_again(
    server: _Server, limits: ImageLimits, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first hop passes (its address is treated as public here); the redirect target is checked anew."""
    calls: list[str] = []
    real = tasks.image_fetch.non_public

    def first_hop_public(address: object) -> str | None:
        calls.append(str(address))
        return None if len(calls) == 1 else real(address)  # type: ignore[arg-type]

    monkeypatch.setattr(tasks.image_fetch, "non_public", first_hop_public)
    message = refused(url(server, "/redirect"), replace(limits, allow_urls=True))
    assert "resolves to 127.0.0.1, a loopback address" in message
    assert len(server.hosts) == 1  # the redirect was never followed


def test_a_compressed_body_is_refused_before_it_is_inflated(server: _Server, limits: ImageLimits) -> None:
    on = replace(limits, allow_urls=True, allow_private_urls=True)
    message = refused(url(server, "/gzip"), on)
    assert "sent a 'gzip'-encoded body" in message and "serve it uncompressed" in message


def test_url_limits_bytes_and_time(server: _Server, limits: ImageLimits) -> None:
    allowed = replace(limits, allow_urls=True, allow_private_urls=True, url_timeout=0.5)
    assert f"the server announces {server.big} bytes, over images_max_bytes" in refused(url(server, "/big"), allowed)
    assert f"more than {limits.max_bytes} bytes arrived" in refused(url(server, "/big-chunked"), allowed)
    assert "download timed out after 0.5s (images_url_timeout" in refused(url(server, "/slow"), allowed)
    assert "the server answered HTTP 404" in refused(url(server, "/missing.png"), allowed)


def test_path_base64_data_uri_and_url_give_identical_pixels(server: _Server, root: Path, limits: ImageLimits) -> None:
    allowed = replace(limits, allow_urls=True, allow_private_urls=True)
    (root / "p.png").write_bytes(server.image)
    encoded = base64.b64encode(server.image).decode()
    forms = {
        "path": str(root / "p.png"),
        "base64": encoded,
        "data-uri": "data:image/png;base64," + encoded,
        "url": url(server, "/img.png"),
        "redirect": url(server, "/redirect"),
    }
    pixels = {}
    for name, data in forms.items():
        loaded = load_image_sync(data, allowed, task_id="same")
        assert loaded.image is not None
        pixels[name] = np.asarray(loaded.image)
    reference = np.asarray(photo())
    for name, array in pixels.items():
        assert array.shape == (64, 96, 3) and np.array_equal(array, reference), name
    assert f"127.0.0.1:{server.server_address[1]}" in server.hosts  # the Host header names the URL's host


async def test_loading_runs_off_the_event_loop(root: Path, limits: ImageLimits) -> None:
    photo().save(root / "a.jpg", quality=90)
    seen: list[str] = []
    real_open = Image.open

    def spy(*args: object, **kwargs: object) -> Image.Image:
        seen.append(threading.current_thread().name)
        return real_open(*args, **kwargs)  # type: ignore[arg-type]

    Image.open = spy  # type: ignore[assignment]
    try:
        loaded = await load_image(str(root / "a.jpg"), limits, task_id="t")
    finally:
        Image.open = real_open  # type: ignore[assignment]
    assert loaded.size == (96, 64) and seen and seen[0] != threading.main_thread().name


def test_large_images_are_kept_downscaled_with_their_aspect(root: Path, limits: ImageLimits) -> None:
    from tasks.images import MAX_KEPT_SIDE

    (root / "wide.png").write_bytes(png_bytes(photo(1600, 400)))
    roomy = replace(limits, max_bytes=4 * 1024 * 1024)
    image = load_image_sync(str(root / "wide.png"), roomy, task_id="t").image
    assert image.size == (MAX_KEPT_SIDE, MAX_KEPT_SIDE // 4) and image.mode == "RGB"
