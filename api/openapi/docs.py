"""/docs (Swagger UI) and /redoc from the assets inside the ``fastapi-offline`` package: they
render on a machine with no internet, and under a Content-Security-Policy with no inline
script (the Swagger UI start-up script is a file of its own, and ReDoc starts from its
``<redoc spec-url>`` element). Styles may be inline: both UIs set them from JavaScript.
"""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response

ASSETS = "/docs/assets"  # fastapi-offline's static folder: swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js
DOCS_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
HEADERS = {"Content-Security-Policy": DOCS_POLICY, "Cache-Control": "no-cache"}
# ReDoc's footer shows "API docs by Redocly" with a logo it always loads from this CDN; our
# CSP blocks it (a console error on every load). We serve ReDoc with that image drawn from a
# data: URL instead: the page then makes no request outside the API.
REDOC_REMOTE_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
REDOC_LOCAL_LOGO = "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' width='1' height='1'/%3E"

SWAGGER_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title} · Swagger UI</title>
<link rel="icon" type="image/png" href="{assets}/favicon.png">
<link rel="stylesheet" href="{assets}/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{assets}/swagger-ui-bundle.js"></script>
<script src="/docs/swagger-init.js"></script>
</body>
</html>
"""
SWAGGER_INIT = """window.ui = SwaggerUIBundle({options});
"""
REDOC_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title} · ReDoc</title>
<link rel="icon" type="image/png" href="{assets}/favicon.png">
</head>
<body>
<redoc spec-url="{openapi}"></redoc>
<script src="/docs/redoc.standalone.js"></script>
</body>
</html>
"""


def install(app: FastAPI) -> None:
    """``app`` comes from ``fastapi_offline.FastAPIOffline(docs_url=None, redoc_url=None,
    static_url=ASSETS)``, which mounts the assets; the pages are ours."""
    options = {
        "url": app.openapi_url,
        "dom_id": "#swagger-ui",
        "deepLinking": True,
        "displayRequestDuration": True,
        "persistAuthorization": False,
        "validatorUrl": None,  # never ask validator.swagger.io
        "showExtensions": True,
        "tryItOutEnabled": False,
    }
    swagger_init = SWAGGER_INIT.format(options=json.dumps(options))

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return HTMLResponse(SWAGGER_PAGE.format(title=app.title, assets=ASSETS), headers=HEADERS)

    @app.get("/docs/swagger-init.js", include_in_schema=False)
    async def swagger_ui_init() -> Response:
        return Response(swagger_init, media_type="text/javascript", headers=HEADERS)

    redoc_script = _redoc_script()

    @app.get("/docs/redoc.standalone.js", include_in_schema=False)
    async def redoc_standalone() -> Response:
        return Response(redoc_script, media_type="text/javascript", headers=HEADERS)

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return HTMLResponse(REDOC_PAGE.format(title=app.title, assets=ASSETS, openapi=app.openapi_url), headers=HEADERS)


def _redoc_script() -> bytes:
    """fastapi-offline's ReDoc bundle with its one remote image made local (read once)."""
    import fastapi_offline

    bundle = Path(fastapi_offline.__file__).parent / "static" / "redoc.standalone.js"
    return bundle.read_bytes().replace(REDOC_REMOTE_LOGO.encode(), REDOC_LOCAL_LOGO.encode())
