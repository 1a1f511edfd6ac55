"""The web client: `/` (its one HTML page) and `/web/<name>` (its CSS and ES modules).

The files are package data (sn/web/), read once per worker on first use and served from memory
with an ETag. The client talks to the public REST and WebSocket API only, like any other client.
Every response here sets its own security headers, a strict Content-Security-Policy among them
(no inline script or style anywhere in the client), so they hold whatever the API's defaults are.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources

from sanic import Blueprint, HTTPResponse, Request

from sn.api.common import Param, RouteDoc
from sn.errors import NotFound

bp = Blueprint("web")

# 'self' only: the page loads nothing from elsewhere (no CDN) and runs no inline code, so an
# injected <script> or style attribute is refused even if escaping were ever missed.
# connect-src names ws:/wss: because CSP Level 2 browsers do not match WebSockets to 'self'.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    # Revalidate every time (a 304 is cheap): a new server version is picked up on reload.
    "Cache-Control": "no-cache",
}
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
INDEX = "index.html"


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


@cache
def assets() -> dict[str, Asset]:
    """Every file of sn/web by name; only these names are served (no path from the request is opened)."""
    found: dict[str, Asset] = {}
    for entry in resources.files("sn").joinpath("web").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if not entry.is_file() or suffix not in CONTENT_TYPES:
            continue
        body = entry.read_bytes()
        found[entry.name] = Asset(body, CONTENT_TYPES[suffix], '"' + hashlib.sha256(body).hexdigest()[:20] + '"')
    return found


def _serve(request: Request, name: str) -> HTTPResponse:
    asset = assets().get(name)
    if asset is None:
        raise NotFound(f"no such file in the web client: {name[:60]!r}")
    headers = {**SECURITY_HEADERS, "ETag": asset.etag}
    if request.headers.get("if-none-match") == asset.etag:
        return HTTPResponse(status=304, headers=headers)
    body = b"" if request.method == "HEAD" else asset.body
    return HTTPResponse(body, headers=headers, content_type=asset.content_type)


async def index(request: Request) -> HTTPResponse:
    return _serve(request, INDEX)


async def asset(request: Request, name: str) -> HTTPResponse:
    return _serve(request, name)


index.__dict__["openapi_doc"] = RouteDoc(
    "The web client's page", str, errors=(), content_type="text/html", responses=((304, "Not modified (ETag)"),)
)
asset.__dict__["openapi_doc"] = RouteDoc(
    "One file of the web client (CSS, ES module, SVG)",
    str,
    # Only the packaged files exist: any other name is a 404.
    params=(Param("name", "path", {"type": "string", "enum": sorted(set(assets()) - {INDEX})}, required=True),),
    errors=(404,),
    content_type="text/plain",
    responses=((304, "Not modified (ETag)"),),
)
bp.add_route(index, "/", methods=["GET", "HEAD"], name="index")
bp.add_route(asset, "/web/<name:str>", methods=["GET", "HEAD"], name="asset")
