"""The API docs: one Swagger UI page, /v1/docs (/ and /docs lead there), that works offline, and whose
schema marks uploads as files."""

from pathlib import Path

# The one import of BentoML's private modules: BentoML ships the Swagger UI files in its server package,
# and FastAPI's own docs page loads them from a CDN, which leaves it blank offline.
from bentoml._internal import server as bentoml_server
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.applications import Starlette
from starlette.responses import HTMLResponse, RedirectResponse
from starlette.routing import Route
from starlette.staticfiles import StaticFiles

DOCS = "/v1/docs"
SWAGGER_UI = Path(bentoml_server.__file__).parent / "static_content"


def offline_documented_api(title: str, version: str, description: str) -> FastAPI:
    """A FastAPI app whose docs page, at its /docs, takes Swagger UI from SWAGGER_UI, not from a CDN."""
    api = FastAPI(title=title, version=version, description=description, docs_url=None, redoc_url=None)
    api.mount("/swagger-ui", StaticFiles(directory=SWAGGER_UI), name="swagger-ui")

    @api.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")  # /v1, where BentoML mounts the app
        return get_swagger_ui_html(
            openapi_url=f"{root}{api.openapi_url}",
            title=f"{api.title}: API docs",
            swagger_js_url=f"{root}/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/swagger-ui/swagger-ui.css",
            swagger_favicon_url=f"{root}/swagger-ui/favicon-light-32x32.png",
        )

    def openapi(generate=api.openapi) -> dict:
        if api.openapi_schema is None:  # generated once, then cached by FastAPI
            mark_uploads_as_files(generate())
        return api.openapi_schema

    api.openapi = openapi
    return api


def mark_uploads_as_files(node) -> None:
    """FastAPI describes an UploadFile by `contentMediaType` (OpenAPI 3.1), for which Swagger UI shows a
    text box; `format: binary` makes "Try it out" a file picker."""
    if isinstance(node, dict):
        if node.get("type") == "string" and "contentMediaType" in node:
            node["format"] = "binary"
        for child in node.values():
            mark_uploads_as_files(child)
    elif isinstance(node, list):
        for child in node:
            mark_uploads_as_files(child)


async def to_the_docs(_: Request) -> RedirectResponse:
    return RedirectResponse(DOCS)


# Mounted at the root, it answers its own paths only, ahead of BentoML's generic page at /.
docs_redirects = Starlette(routes=[Route("/", to_the_docs), Route("/docs", to_the_docs)])
