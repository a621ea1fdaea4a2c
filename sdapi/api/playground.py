"""The playground: one page (sdapi/api/playground/index.html, no build step, nothing from a CDN) that makes
pictures through the native API from a browser, at / and /playground.

Litestar's OpenAPI router owns the root path (it serves its default render plugin there), so the page is served
as that router's render plugin for "/" and "/playground"; /docs, /redoc and /openapi.json stay as they are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar import Request
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
