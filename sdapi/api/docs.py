"""Swagger UI at /docs, ReDoc at /redoc, the schema at /openapi.json — all working with no internet.

The UI bundles come from the drf-spectacular-sidecar wheel, which ships Swagger UI and ReDoc as plain static
files. We only read those files (Django, its nominal dependency, is never imported or installed), and serve
them at /docs-assets.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import msgspec
from litestar._openapi.schema_generation import SchemaCreator
from litestar._openapi.schema_generation.plugins.struct import StructSchemaPlugin
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, RedocRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, Schema, SecurityScheme
from litestar.router import Router
from litestar.static_files import create_static_files_router
from litestar.typing import FieldDefinition

from sdapi import __version__
from sdapi.api.playground import PlaygroundPage

ASSETS_ROUTE = "/docs-assets"
ASSETS_PACKAGE = "drf_spectacular_sidecar"

DESCRIPTION = (
    "Stable Diffusion 图片生成服务：文生图、图生图，异步任务，回调通知。"
    "除健康检查外，所有接口都需要在请求头中携带 API Key。"
)


def assets_directory() -> Path | None:
    """Folder holding swagger-ui-dist/ and redoc/, found without importing the package."""
    spec = importlib.util.find_spec(ASSETS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "static" / ASSETS_PACKAGE
    return folder if folder.is_dir() else None


def openapi_config(key_header: str) -> OpenAPIConfig:
    swagger = f"{ASSETS_ROUTE}/swagger-ui-dist"
    return OpenAPIConfig(
        title="sdapi",
        version=__version__,
        description=DESCRIPTION,
        path="/",
        components=Components(
            security_schemes={
                "APIKeyHeader": SecurityScheme(type="apiKey", name=key_header, security_scheme_in="header"),
                # The OpenAI dialect (/v1): the key as OpenAI's clients send it.
                "BearerKey": SecurityScheme(type="http", scheme="bearer"),
                # The AUTOMATIC1111 dialect (/sdapi/v1): any user name, the key as password (A1111's --api-auth).
                "BasicAuth": SecurityScheme(type="http", scheme="basic"),
            }
        ),
        render_plugins=[
            PlaygroundPage(),
            JsonRenderPlugin(path="/openapi.json"),
            SwaggerRenderPlugin(
                path="/docs",
                js_url=f"{swagger}/swagger-ui-bundle.js",
                css_url=f"{swagger}/swagger-ui.css",
                standalone_preset_js_url=f"{swagger}/swagger-ui-standalone-preset.js",
                favicon=f"<link rel='icon' type='image/png' href='{swagger}/favicon-32x32.png'>",
            ),
            RedocRenderPlugin(
                path="/redoc",
                js_url=f"{ASSETS_ROUTE}/redoc/bundles/redoc.standalone.js",
                google_fonts=False,
                favicon=f"<link rel='icon' type='image/png' href='{swagger}/favicon-32x32.png'>",
            ),
        ],
    )


def assets_router() -> Router | None:
    folder = assets_directory()
    if folder is None:
        return None
    return create_static_files_router(path=ASSETS_ROUTE, directories=[folder], include_in_schema=False)


class StrictStructSchemaPlugin(StructSchemaPlugin):
    """Request bodies that refuse unknown fields (msgspec's forbid_unknown_fields) say so in the schema, with
    `additionalProperties: false`, so generated clients and schema-driven fuzzers agree with the service.

    Litestar's own Struct plugin leaves additionalProperties unset; this subclass (of a class Litestar does not
    export publicly) adds the one attribute. tests check /openapi.json, so an upgrade that breaks it shows up.
    """

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: SchemaCreator) -> Schema:
        schema = super().to_openapi_schema(field_definition, schema_creator)
        info = msgspec.inspect.type_info(field_definition.type_)
        if isinstance(info, msgspec.inspect.StructType) and info.forbid_unknown_fields:
            schema.additional_properties = False
        return schema
