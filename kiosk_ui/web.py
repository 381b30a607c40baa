"""The kiosk's web UI, served by the box itself: `/` -> `/kiosk/`, `/kiosk/` is index.html and
`/kiosk/static/...` the assets (plain ES modules, CSS, the i18n catalogues; no build step).

Caching: index.html is `no-cache` (always revalidated, so an upgrade shows at the next load). It
names its assets under a versioned prefix, `/kiosk/static/v-<hash>/...`, where the hash covers
every static file; the modules import each other by relative URL, so the whole module graph stays
under that prefix. A versioned URL of the current version may be cached for a year; after an
upgrade the hash changes and the browser asks for new URLs. Unversioned or outdated-version URLs
get the current file with `no-cache`. Every answer has an ETag (If-None-Match -> 304) and text
assets are gzipped when the browser accepts it (the counter's first load stays small).

The files are read once, when the app is built (a daemon start or reload); an upgrade replaces
the package and restarts the daemon.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.responses import RedirectResponse

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
PREFIX = "/kiosk/static/"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".webmanifest": "application/manifest+json",
}
GZIP_MIN = 1024  # smaller bodies are not worth the header and the CPU
IMMUTABLE = "public, max-age=31536000, immutable"
VERSIONED = re.compile(r"v-([0-9a-f]{1,64})/(.+)")
# No inline script or style anywhere: the policy can be strict. connect-src 'self' covers fetch
# and EventSource to this box.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)


@dataclass(frozen=True)
class Asset:
    body: bytes
    gz: bytes | None
    etag: str
    content_type: str


def _asset(body: bytes, content_type: str) -> Asset:
    # Weak: the same content may go out gzipped or not (Vary: Accept-Encoding).
    etag = 'W/"' + hashlib.sha256(body).hexdigest()[:20] + '"'
    gz = None
    if len(body) >= GZIP_MIN and not content_type.startswith("image/png"):
        packed = gzip.compress(body, 9, mtime=0)
        gz = packed if len(packed) < len(body) else None
    return Asset(body, gz, etag, content_type)


def load_assets(root: Path = STATIC_DIR) -> tuple[str, dict[str, Asset]]:
    """(version, relative path -> Asset) for every file under `root` with a known type."""
    files: dict[str, bytes] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix in CONTENT_TYPES and not path.name.startswith("."):
            files[path.relative_to(root).as_posix()] = path.read_bytes()
    digest = hashlib.sha256()
    for rel, body in files.items():
        digest.update(rel.encode() + b"\0" + hashlib.sha256(body).digest())
    version = digest.hexdigest()[:12]
    assets = {rel: _asset(body, CONTENT_TYPES[Path(rel).suffix]) for rel, body in files.items()}
    return version, assets


def render_index(assets: dict[str, Asset], version: str) -> Asset:
    """index.html with its asset URLs moved under the versioned prefix."""
    src = assets["index.html"].body.decode()
    html = src.replace(f'"{PREFIX}', f'"{PREFIX}v-{version}/')
    return _asset(html.encode(), CONTENT_TYPES[".html"])


def _send(request: Request, asset: Asset, cache: str, *, csp: bool = False) -> Response:
    headers = {"ETag": asset.etag, "Cache-Control": cache, "Vary": "Accept-Encoding"}
    headers |= SECURITY_HEADERS
    if csp:
        headers["Content-Security-Policy"] = CSP
    if asset.etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    body = asset.body
    if asset.gz is not None and "gzip" in request.headers.get("accept-encoding", ""):
        body, headers["Content-Encoding"] = asset.gz, "gzip"
    if request.method == "HEAD":
        headers["Content-Length"] = str(len(body))
        return Response(status_code=200, headers=headers, media_type=asset.content_type)
    return Response(body, headers=headers, media_type=asset.content_type)


def _not_found() -> Response:
    return Response(
        "not found / 未找到\n",
        status_code=404,
        media_type="text/plain; charset=utf-8",
        headers={"Cache-Control": "no-cache"},
    )


def install_web(app: FastAPI, root: Path = STATIC_DIR) -> None:
    """Add the UI's routes to `app` (the kiosk extension calls it; tests with an app alone)."""
    version, assets = load_assets(root)
    if "index.html" not in assets:
        raise FileNotFoundError(f"kiosk UI missing: no index.html under {root}")
    index = render_index(assets, version)
    log.info("kiosk UI: %d files, assets version %s", len(assets), version)

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def root_redirect() -> Response:
        return RedirectResponse("/kiosk/", status_code=302)

    @app.api_route("/kiosk", methods=["GET", "HEAD"], include_in_schema=False)
    async def kiosk_redirect() -> Response:
        return RedirectResponse("/kiosk/", status_code=302)

    @app.api_route("/kiosk/", methods=["GET", "HEAD"], include_in_schema=False)
    async def kiosk_index(request: Request) -> Response:
        return _send(request, index, "no-cache", csp=True)

    @app.api_route("/kiosk/static/{path:path}", methods=["GET", "HEAD"], include_in_schema=False)
    async def kiosk_static(request: Request, path: str) -> Response:
        cache = "no-cache"
        if m := VERSIONED.fullmatch(path):
            path = m.group(2)
            if m.group(1) == version:
                cache = IMMUTABLE
        asset = assets.get(path)
        if asset is None or path == "index.html":
            return _not_found()
        return _send(request, asset, cache)
