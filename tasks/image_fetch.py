"""Downloading an image URL without becoming a proxy into the worker's network (SSRF).

* URLs are refused unless ``images_allow_urls`` is on.
* The host name is resolved once; every address it resolves to must be public
  (not private, loopback, link-local, multicast, reserved or unspecified,
  IPv4-mapped IPv6 included) unless ``images_allow_private_urls`` is on.
* The connection goes to the address that was checked (the URL's host is sent
  as ``Host`` and as the TLS server name), so a DNS answer that changes between
  the check and the connect (DNS rebinding) cannot redirect it.
* Redirects are followed by hand, at most :data:`MAX_REDIRECTS`, each target
  checked like the first URL.
* The body is streamed and the download stops at ``images_max_bytes``; every
  network step times out after ``images_url_timeout`` seconds and the whole
  download after twice that.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

from tasks.image_limits import ImageInputError, ImageLimits

MAX_REDIRECTS = 5
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def fetch_url(url: str, limits: ImageLimits, where: str) -> bytes:
    """Blocking: the body of ``url`` within ``limits``; :class:`ImageInputError` on any refusal or failure."""
    if not limits.allow_urls:
        raise ImageInputError(
            f"{where} refused: image URLs are off; set images_allow_urls=true (YAML images.allow_urls, "
            "env VECTORIZE_WORKER_IMAGES_ALLOW_URLS) to download images, or send the image as base64."
        )
    deadline = time.monotonic() + 2 * limits.url_timeout
    timeout = httpx.Timeout(limits.url_timeout)
    with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
        for _ in range(MAX_REDIRECTS + 1):
            host, address, pinned = _check(url, limits, where)
            try:
                with client.stream(
                    "GET",
                    pinned,
                    headers={"Host": _host_header(url), "Accept": "image/*", "Accept-Encoding": "identity"},
                    extensions={"sni_hostname": host},
                ) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        continue
                    if response.status_code != 200:
                        raise ImageInputError(
                            f"{where}: the server answered HTTP {response.status_code} ({address}); check the URL."
                        )
                    return _read_body(response, limits, where, deadline)
            except httpx.TimeoutException:
                raise ImageInputError(
                    f"{where}: download timed out after {limits.url_timeout:g}s (images_url_timeout, "
                    "VECTORIZE_WORKER_IMAGES_URL_TIMEOUT); check the server or send the image inline."
                ) from None
            except httpx.HTTPError as exc:
                raise ImageInputError(
                    f"{where}: download from {address} failed ({type(exc).__name__}: {exc}); check the URL."
                ) from None
    raise ImageInputError(f"{where}: more than {MAX_REDIRECTS} redirects; send the final URL.")


def _check(url: str, limits: ImageLimits, where: str) -> tuple[str, _Address, str]:
    """(host, the checked address, the URL rewritten to that address) or a refusal."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ImageInputError(f"{where} refused: a redirect to a {parts.scheme!r} URL; only http(s) is fetched.")
    host = parts.hostname
    if not host:
        raise ImageInputError(f"{where} refused: the URL {url!r} has no host.")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, ValueError) as exc:
        raise ImageInputError(f"{where}: cannot resolve the host {host!r} ({exc}); check the URL.") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]
    if not limits.allow_private_urls:
        for address in addresses:
            reason = non_public(address)
            if reason:
                raise ImageInputError(
                    f"{where} refused: the host {host!r} resolves to {address}, a {reason} address; "
                    "only public addresses are fetched unless images_allow_private_urls=true "
                    "(VECTORIZE_WORKER_IMAGES_ALLOW_PRIVATE_URLS)."
                )
    address = addresses[0]
    netloc = f"[{address}]" if address.version == 6 else str(address)
    if parts.port:
        netloc += f":{parts.port}"
    return host, address, urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))


def non_public(address: _Address) -> str | None:
    """Why ``address`` is not a public internet address, or None when it is."""
    if isinstance(address, ipaddress.IPv6Address):
        # IPv4 wrapped in IPv6 (mapped, 6to4, Teredo) is judged by the IPv4 address it reaches
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo[1] if address.teredo else None)
        if embedded is not None:
            reason = non_public(embedded)
            if reason is not None:
                return reason
            if address.ipv4_mapped is not None:
                address = address.ipv4_mapped
    checks = (
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("private", address.is_private),
        ("multicast", address.is_multicast),
        ("unspecified", address.is_unspecified),
        ("reserved", address.is_reserved),
        ("non-global", not address.is_global),
    )
    return next((name for name, hit in checks if hit), None)


def _host_header(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{parts.port}" if parts.port else host


def _read_body(response: httpx.Response, limits: ImageLimits, where: str, deadline: float) -> bytes:
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limits.max_bytes:
        raise _too_large(where, f"the server announces {declared} bytes", limits)
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        # a compressed body would be inflated before the byte limit can stop it (a gzip bomb)
        raise ImageInputError(
            f"{where}: the server sent a {encoding!r}-encoded body although the worker asks for the plain "
            "image (Accept-Encoding: identity); serve it uncompressed or send the image inline."
        )
    body = bytearray()
    for chunk in response.iter_raw():
        body += chunk
        if len(body) > limits.max_bytes:
            raise _too_large(where, f"more than {limits.max_bytes} bytes arrived", limits)
        if time.monotonic() > deadline:
            raise ImageInputError(
                f"{where}: download took longer than {2 * limits.url_timeout:g}s (twice images_url_timeout); "
                "check the server or send the image inline."
            )
    return bytes(body)


def _too_large(where: str, what: str, limits: ImageLimits) -> ImageInputError:
    return ImageInputError(
        f"{where} refused: {what}, over images_max_bytes ({limits.max_bytes} bytes, "
        "VECTORIZE_WORKER_IMAGES_MAX_BYTES); send a smaller image or raise the limit."
    )
