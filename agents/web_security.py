"""The web port's guards as plain functions and aiohttp middlewares, testable without Faust or Kafka.

- :func:`auth_middleware`: ``Authorization: Bearer <web.auth_token>`` on every route (Faust's own
  ``/router/`` and ``/table/`` views included, since the middleware sits on the whole aiohttp app),
  except :data:`OPEN_PATHS`: the probes and the dashboard's static page, which holds no data and
  sends the token on each of its own requests.
- :func:`access_log_middleware`: one INFO line per request, the path without its query string,
  never a header.
- Input bounds for ``/search/`` and ``/tasks/{task_id}`` (the task schema's own patterns).
- Peers for a ``/tasks/{task_id}`` lookup: only from live heartbeats, one hop, no redirects.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]

TOKEN_SETTING = "VECTORIZE_WORKER_WEB_AUTH_TOKEN (web.auth_token, or a file: VECTORIZE_WORKER_WEB_AUTH_TOKEN_FILE)"
SEARCH_SETTING = "VECTORIZE_WORKER_WEB_SEARCH_ENABLED (web.search_enabled)"
#: (method, path) pairs served without the token: the probes (orchestrators send no header) and the
#: dashboard's page, a constant file with no data in it
OPEN_PATHS: frozenset[tuple[str, str]] = frozenset(
    (method, path) for method in ("GET", "HEAD") for path in ("/healthz", "/readyz", "/")
)
#: a request one worker sends another for a task it does not hold; never forwarded again
FORWARDED_HEADER = "X-Vectorize-Forwarded"

# the task schema's bounds (tasks/schema.py, _TaskBase.task_id and .collection)
TASK_ID_PATTERN = re.compile(r"^[^\x00-\x1f\x7f]{1,200}$")
COLLECTION_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")
MODEL_NAME_PATTERN = re.compile(r"^[^\x00-\x1f\x7f]{1,500}$")
MAX_QUERY_CHARS = 2000
MAX_K = 100
MAX_PEERS = 64
MAX_PEER_BODY = 1024 * 1024
PEER_TIMEOUT = aiohttp.ClientTimeout(total=3, connect=1)


# -- authentication -------------------------------------------------------------------------
def bearer_matches(header: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <token>`` (constant-time comparison)."""
    if not header:
        return False
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode("utf-8"), token.encode("utf-8"))


def unauthorized_body(header: str | None) -> dict[str, str]:
    """The 401's JSON: what is wrong and which header and setting fix it (never the token)."""
    problem = "no Authorization header" if not header else "the bearer token does not match"
    return {
        "error": f"Unauthorized: {problem}. Send 'Authorization: Bearer <token>' with the token set in "
        f"{TOKEN_SETTING}; only /healthz, /readyz and the dashboard page (/) are open without it.",
        "header": "Authorization",
        "setting": "VECTORIZE_WORKER_WEB_AUTH_TOKEN",
    }


def auth_middleware(token: str, open_paths: frozenset[tuple[str, str]] = OPEN_PATHS) -> Middleware:
    """Refuse every request but ``open_paths`` without the bearer token (401, JSON)."""
    if not token:
        raise ValueError("auth_middleware needs a non-empty token")

    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if (request.method, request.path) in open_paths:
            return await handler(request)
        header = request.headers.get("Authorization")
        if not bearer_matches(header, token):
            return web.json_response(
                unauthorized_body(header), status=401, headers={"WWW-Authenticate": 'Bearer realm="vectorize-worker"'}
            )
        return await handler(request)

    return require_token


# -- access log -----------------------------------------------------------------------------
def loggable_path(request: web.Request, limit: int = 300) -> str:
    """The request's path as sent (percent-encoded, so no line breaks), without the query string
    (where a token could be), capped."""
    path = request.rel_url.raw_path
    path = "".join(c if c.isprintable() else "?" for c in path)
    return path if len(path) <= limit else path[: limit - 1] + "…"


def access_log_middleware(logger: logging.Logger, clock: Callable[[], float] = time.perf_counter) -> Middleware:
    """One INFO line per request: method, path (no query), status, milliseconds, client address."""

    @web.middleware
    async def access_log(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = clock()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            logger.info(
                "%s %s %d %.1fms %s",
                request.method,
                loggable_path(request),
                status,
                (clock() - started) * 1000,
                request.remote or "-",
            )

    return access_log


# -- the dashboard's page -------------------------------------------------------------------
def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def dashboard_headers(html: str) -> dict[str, str]:
    """Headers for the dashboard: a Content-Security-Policy that runs only the page's own inline script
    and style (by hash) and lets it fetch only this origin, so a string that slipped past the page's
    escaping still could not run or send data anywhere; no framing, no referrer."""
    scripts = " ".join(_sha256(s) for s in re.findall(r"<script>(.*?)</script>", html, re.DOTALL))
    styles = " ".join(_sha256(s) for s in re.findall(r"<style>(.*?)</style>", html, re.DOTALL))
    none = "'none'"
    policy = (
        f"default-src 'none'; script-src {scripts or none}; style-src {styles or none}; connect-src 'self'; "
        "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return {
        "Content-Security-Policy": policy,
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Cache-Control": "no-store",
    }


# -- input bounds -------------------------------------------------------------------------
class BadInput(ValueError):
    """A query parameter out of bounds: ``status`` and a message naming the parameter and its bounds."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def valid_task_id(task_id: str) -> bool:
    return bool(TASK_ID_PATTERN.match(task_id))


@dataclass(frozen=True)
class SearchQuery:
    q: str
    k: int
    model: str
    collection: str
    filter: dict[str, Any] | None = None  # the store port's filter language over declared fields (sinks.filters)


def whole_number(raw: str, name: str, low: int, high: int) -> int:
    """A query parameter that must be a whole number in ``low..high``; raises :class:`BadInput` naming it.

    ASCII digits only: ``str.isdigit`` also takes characters such as ``²`` that ``int`` refuses."""
    if raw.isascii() and raw.isdigit() and len(raw) <= len(str(high)) and low <= int(raw) <= high:
        return int(raw)
    raise BadInput(f"{name} must be a whole number from {low} to {high}, got {raw[:20]!r}")


def parse_search(query: Mapping[str, str], *, default_model: str, default_collection: str) -> SearchQuery:
    """``/search/``'s parameters, bounded; raises :class:`BadInput` naming the parameter."""
    q = query.get("q", "").strip()
    if not q:
        raise BadInput("missing query parameter q, e.g. /search/?q=hello&k=5")
    if len(q) > MAX_QUERY_CHARS:
        raise BadInput(f"query parameter q is {len(q)} characters; at most {MAX_QUERY_CHARS}")
    k = whole_number(query.get("k", "5"), "k", 1, MAX_K)
    model = query.get("model") or default_model
    if not MODEL_NAME_PATTERN.match(model):
        raise BadInput("model must be 1-500 characters without control characters")
    collection = query.get("collection") or default_collection
    if not COLLECTION_PATTERN.match(collection):
        raise BadInput(
            "collection must start with a letter and hold at most 63 letters, digits, '_' or '-' "
            "(the task schema's rule)"
        )
    raw_filter = query.get("filter")
    where = None
    if raw_filter:
        if len(raw_filter) > MAX_QUERY_CHARS:
            raise BadInput(f"query parameter filter is {len(raw_filter)} characters; at most {MAX_QUERY_CHARS}")
        try:
            where = json.loads(raw_filter)
        except ValueError:
            where = None
        if not isinstance(where, dict):
            raise BadInput('filter must be a JSON object, e.g. filter={"lang":"en","year":{"gte":2020}}')
    return SearchQuery(q=q, k=k, model=model, collection=collection, filter=where)


# -- peers ----------------------------------------------------------------------------------
def peer_base_url(heartbeat: Mapping[str, Any]) -> str | None:
    """``scheme://host:port`` from a heartbeat's advertised ``web_url``; None unless it is a plain
    http(s) origin (no credentials, path, query or fragment): heartbeats are only as trusted as Redis."""
    url = heartbeat.get("web_url")
    if not isinstance(url, str) or len(url) > 300:
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname
    if parts.scheme not in ("http", "https") or not host or port is None or parts.username or parts.password:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return None
    if not re.fullmatch(r"[A-Za-z0-9._:-]+", host):
        return None
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}:{port}"


def select_peers(heartbeats: Iterable[Mapping[str, Any]], *, self_id: str, group: str | None = None) -> list[str]:
    """Base URLs of the other live workers of ``group`` (each once, at most :data:`MAX_PEERS`)."""
    peers: list[str] = []
    for beat in heartbeats:
        if beat.get("worker_id") == self_id:
            continue
        if group is not None and beat.get("group") not in (None, group):
            continue
        base = peer_base_url(beat)
        if base is not None and base not in peers:
            peers.append(base)
        if len(peers) == MAX_PEERS:
            break
    return peers


def task_path(task_id: str) -> str:
    return "/tasks/" + quote(task_id, safe="")


def forward_headers(token: str | None) -> dict[str, str]:
    """A forwarded request: marked (so the peer never forwards it again) and carrying the token."""
    headers = {FORWARDED_HEADER: "1"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


async def fetch_from_peer(
    session: aiohttp.ClientSession, url: str, headers: Mapping[str, str], timeout: aiohttp.ClientTimeout
) -> dict[str, Any] | None:
    """GET ``url`` once: a JSON object on 200, else None (redirects are not followed, bodies are capped)."""
    try:
        async with session.get(url, headers=dict(headers), timeout=timeout, allow_redirects=False) as response:
            if response.status != 200:
                return None
            body = await response.content.read(MAX_PEER_BODY + 1)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None
    if len(body) > MAX_PEER_BODY:
        return None
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


async def ask_peers(
    session: aiohttp.ClientSession,
    peers: Iterable[str],
    path: str,
    *,
    token: str | None,
    timeout: aiohttp.ClientTimeout = PEER_TIMEOUT,
) -> dict[str, Any] | None:
    """The first peer's answer for ``path``, asking all at once (a dead peer costs one timeout, not one each)."""
    headers = forward_headers(token)
    pending = {asyncio.ensure_future(fetch_from_peer(session, base + path, headers, timeout)) for base in peers}
    try:
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                found = future.result()
                if found is not None:
                    return found
        return None
    finally:
        for future in pending:
            future.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
