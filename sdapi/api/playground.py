"""The playground: one page (sdapi/api/playground/index.html, no build step, nothing from a CDN) that makes
pictures through the native API from a browser, at / and /playground.

Litestar's OpenAPI router owns the root path (it serves its default render plugin there), so the page is served
as that router's render plugin for "/" and "/playground"; /docs, /redoc and /openapi.json stay as they are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar import Request, get
from litestar.datastructures import CacheControlHeader
from litestar.enums import MediaType
from litestar.openapi.plugins import OpenAPIRenderPlugin
from litestar.openapi.spec import OpenAPI

PAGE = Path(__file__).parent / "playground" / "index.html"


class PlaygroundPage(OpenAPIRenderPlugin):
    def __init__(self) -> None:
        super().__init__(path=["/", "/playground"], media_type=MediaType.HTML)
        self._page = PAGE.read_bytes()

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any] | OpenAPI) -> bytes:
        return self._page


# The service's icon (an orange sun over a hill), for the playground's tab and any client that asks /favicon.ico.
ICON = (
    b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 64 64">'
    b'<rect width="64" height="64" rx="14" fill="#1d1d1f"/>'
    b'<circle cx="40" cy="26" r="12" fill="#f76707"/>'
    b'<path d="M0 52 Q20 30 40 46 T64 42 V64 H0Z" fill="#d9480f"/></svg>'
)


@get(
    "/favicon.ico", include_in_schema=False, media_type="image/svg+xml", cache_control=CacheControlHeader(max_age=86400)
)
async def favicon() -> bytes:
    return ICON
