"""The interactive docs at ``/docs``: Swagger UI from vendored files, no CDN, no inline script.

The page, its start script and Swagger UI's own files are all served by the gateway, so the
docs work on a machine with no network access and under a CSP that allows only ``'self'``.
The one extra is ``img-src data:``: Swagger UI's stylesheet embeds its icons as data URIs,
which load nothing from anywhere. ``/openapi.json`` is the contract, merged from the upstreams
(openapi.py). Both are public, like ``/health``: the contract is no secret.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import aiohttp
from aiohttp import web

from aihub.gateway.context import Ctx, json_response, method_not_allowed
from aihub.gateway.openapi import SchemaCache
from aihub.kit.errors import NotFound

SWAGGER_UI_VERSION = "5.35.0"  # npm swagger-ui-dist; see swagger_ui/README.md
DOCS_PATH = "/docs"
OPENAPI_PATH = "/openapi.json"
_ASSET_DIR = Path(__file__).with_name("swagger_ui")

DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)

PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>aihub API</title>
<link rel="stylesheet" href="{DOCS_PATH}/swagger-ui.css">
<link rel="icon" type="image/png" href="{DOCS_PATH}/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{DOCS_PATH}/swagger-ui-bundle.js"></script>
<script src="{DOCS_PATH}/init.js"></script>
</body>
</html>
""".encode()

# validatorUrl null: Swagger UI would otherwise send the document to an online validator.
INIT_JS = b"""window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null,
  persistAuthorization: false,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout"
});
"""

_VENDORED = {
    "swagger-ui.css": "text/css; charset=utf-8",
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "favicon-32x32.png": "image/png",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    gzipped: bytes | None
    content_type: str
    # The page is cheap and names the assets: always revalidated. The assets change only with a release.
    cache_control: str


def _compressible(content_type: str) -> bool:
    return content_type.startswith(("text/", "application/json"))


@cache
def asset(path: str) -> Asset | None:
    """The file served at ``path`` (``/docs`` or ``/docs/<name>``), or None. Read and
    compressed once per process, on first use."""
    if path in (DOCS_PATH, DOCS_PATH + "/"):
        return Asset(PAGE, None, "text/html; charset=utf-8", "no-cache")
    name = path.removeprefix(DOCS_PATH + "/")
    if name == "init.js":
        body, content_type = INIT_JS, "text/javascript; charset=utf-8"
    elif name in _VENDORED:
        body, content_type = (_ASSET_DIR / name).read_bytes(), _VENDORED[name]
    else:
        return None
    gzipped = gzip.compress(body, 6) if _compressible(content_type) and len(body) > 1024 else None
    return Asset(body, gzipped, content_type, "public, max-age=3600")


def is_docs(path: str) -> bool:
    return path in (OPENAPI_PATH, DOCS_PATH) or path.startswith(DOCS_PATH + "/")


class Docs:
    def __init__(self, openapi: SchemaCache) -> None:
        self.openapi = openapi
        self.session: aiohttp.ClientSession | None = None  # set when the gateway starts

    async def answer(self, request: web.Request, ctx: Ctx, path: str) -> web.Response:
        """``path``: one ``is_docs`` accepts."""
        if request.method not in ("GET", "HEAD"):
            return method_not_allowed(ctx)
        if path == OPENAPI_PATH:
            assert self.session is not None
            body, _complete = await self.openapi.document(self.session)
            return json_response(body, headers={"Cache-Control": "no-cache"})
        found = asset(path)
        if found is None:
            raise NotFound("No such file")
        headers = {
            "Content-Type": found.content_type,
            "Cache-Control": found.cache_control,
            "Content-Security-Policy": DOCS_CSP,  # its own: on_prepare keeps it (headers.py)
            "Vary": "Accept-Encoding",
        }
        body = found.body
        if found.gzipped is not None and "gzip" in request.headers.get("Accept-Encoding", ""):
            body, headers["Content-Encoding"] = found.gzipped, "gzip"
        return web.Response(body=body, headers=headers)
