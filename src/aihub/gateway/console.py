"""The web console's files, served by the gateway at ``/console/`` (same origin as ``/api/*``).

The console is a static single-page application (``aihub/console/static``): plain ES modules,
no build step, no CDN, committed as they are served. The gateway reads the files once at start
and answers from memory with an ETag; the browser revalidates (``no-cache``) so an upgrade is
seen at the next load. The console's own Content-Security-Policy allows scripts, styles and
connections from this origin only: no inline script or style, no ``eval``, no framing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import PurePosixPath

PREFIX = "/console"
CONSOLE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/json",
}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def _walk(root: resources.abc.Traversable, prefix: PurePosixPath) -> dict[str, Asset]:
    assets: dict[str, Asset] = {}
    for entry in root.iterdir():
        name = prefix / entry.name
        if entry.is_dir():
            assets.update(_walk(entry, name))
            continue
        content_type = _TYPES.get(PurePosixPath(entry.name).suffix)
        if content_type is None:
            continue  # only the kinds of file the console is made of
        body = entry.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        assets[str(name)] = Asset(body, content_type, etag)
    return assets


class ConsoleFiles:
    """Path (relative to ``/console/``) → file, loaded once."""

    def __init__(self, assets: dict[str, Asset]) -> None:
        self.assets = assets

    @classmethod
    def load(cls) -> ConsoleFiles:
        root = resources.files("aihub.console").joinpath("static")
        return cls(_walk(root, PurePosixPath()))

    def find(self, path: str) -> Asset | None:
        """``path`` is the request path; ``/console/`` itself is the application's page."""
        rest = path[len(PREFIX) :].lstrip("/")
        return self.assets.get(rest or "index.html")


def is_console(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")
