"""Swagger UI served with its JavaScript and CSS from this service, so /docs works offline.

FastAPI's default page loads those assets from a CDN. The assets here come from the
fastapi-offline package; only its static files are used.
"""

import importlib.metadata
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC_URL = "/static/docs"


def _assets_folder() -> Path:
    dist = importlib.metadata.distribution("fastapi-offline")
    return Path(str(dist.locate_file("fastapi_offline/static")))


def install_docs(app: FastAPI) -> None:
    app.mount(STATIC_URL, StaticFiles(directory=_assets_folder()), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{STATIC_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{STATIC_URL}/swagger-ui.css",
            swagger_favicon_url=f"{STATIC_URL}/favicon.png",
        )
