"""The incidents page served at the responder's root URL."""

from __future__ import annotations

from importlib import resources

from aiohttp import web

_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _asset(name: str) -> bytes:
    return resources.files(__package__).joinpath(name).read_bytes()


async def _serve(request: web.Request, name: str, content_type: str) -> web.Response:
    return web.Response(
        body=_asset(name),
        content_type=content_type,
        headers={
            "Content-Security-Policy": _CSP,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
        },
    )


async def index(request: web.Request) -> web.Response:
    """The page itself: static HTML; data comes from the JSON API with the bearer token."""
    return await _serve(request, "index.html", "text/html")


async def script(request: web.Request) -> web.Response:
    return await _serve(request, "app.js", "application/javascript")


async def style(request: web.Request) -> web.Response:
    return await _serve(request, "style.css", "text/css")
