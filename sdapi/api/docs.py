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


# msgspec's constraint names and the Schema attributes that state them in JSON Schema.
_CONSTRAINTS = {
    "ge": "minimum",
    "le": "maximum",
    "gt": "exclusive_minimum",
    "lt": "exclusive_maximum",
    "min_length": "min_length",
    "max_length": "max_length",
    "pattern": "pattern",
}
_ITEM_CONSTRAINTS = {"min_length": "min_items", "max_length": "max_items"}


class StrictStructSchemaPlugin(StructSchemaPlugin):
    """Struct schemas that say what the service checks, so generated clients and schema-driven fuzzers agree
    with it. Litestar's own Struct plugin (this subclasses a class Litestar does not export publicly; tests check
    /openapi.json, so an upgrade that breaks it shows up) misses two things:

    - bodies that refuse unknown fields (msgspec's forbid_unknown_fields) get `additionalProperties: false`;
    - an optional field's bounds (`Annotated[int, Meta(gt=0)] | None`) are dropped from its non-null branch:
      they are put back, so `"width": 0` is documented as invalid, as the service answers it.
    """

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: SchemaCreator) -> Schema:
        schema = super().to_openapi_schema(field_definition, schema_creator)
        info = msgspec.inspect.type_info(field_definition.type_)
        if not isinstance(info, msgspec.inspect.StructType):
            return schema
        if info.forbid_unknown_fields:
            schema.additional_properties = False
        for field in info.fields:
            documented = (schema.properties or {}).get(field.encode_name)
            if isinstance(documented, Schema) and isinstance(field.type, msgspec.inspect.UnionType):
                _restore_optional_bounds(documented, field.type)
        return schema


def _restore_optional_bounds(documented: Schema, union: msgspec.inspect.UnionType) -> None:
    """Copy the constraints of `X | None`'s X onto the one non-null branch of its documented oneOf."""
    constrained = [member for member in union.types if not isinstance(member, msgspec.inspect.NoneType)]
    branches = [branch for branch in documented.one_of or [] if isinstance(branch, Schema) and branch.type != "null"]
    if len(constrained) != 1 or len(branches) != 1:
        return
    member, branch = constrained[0], branches[0]
    if isinstance(member, msgspec.inspect.Metadata):  # Annotated[..., Meta(description=...)]
        member = member.type
    names = _ITEM_CONSTRAINTS if isinstance(member, msgspec.inspect.ListType) else _CONSTRAINTS
    for constraint, attribute in names.items():
        value = getattr(member, constraint, None)
        if value is not None and getattr(branch, attribute, None) is None:
            setattr(branch, attribute, value)
