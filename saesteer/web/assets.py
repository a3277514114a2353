"""Static assets: our CSS/JS from the package, and plotly.js from the installed `plotly` package.

No request path ever reaches the file system: at start-up the app lists the files of its own
static folder into a fixed table (name -> file), and a request can only pick an entry of that
table. plotly.min.js is served from the plotly Python package's own copy (no CDN, no network),
under a versioned name so browsers may cache it for good.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import mimetypes
from pathlib import Path

from fastapi import HTTPException
from starlette.responses import FileResponse, Response

__all__ = ["STATIC_DIR", "StaticAssets", "plotly_js_path", "plotly_asset_name"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png", ".ico": "image/x-icon"}


def plotly_js_path() -> Path:
    """The plotly.min.js bundled inside the installed `plotly` Python package."""
    try:
        import plotly
    except ImportError as e:  # pragma: no cover - plotly is a dependency
        raise RuntimeError("the web app needs the `plotly` package for its charts: pip install plotly") from e
    path = Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise RuntimeError(f"plotly.min.js not found at {path}; reinstall the `plotly` package")
    return path


def plotly_asset_name() -> str:
    try:
        v = importlib.metadata.version("plotly")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        v = "0"
    return f"vendor/plotly-{v}.min.js"


class StaticAssets:
    """A fixed table of servable files, built once."""

    def __init__(self) -> None:
        self.files: dict[str, Path] = {}
        for p in sorted(STATIC_DIR.rglob("*")):
            if p.is_file() and p.suffix in _TYPES:
                self.files[p.relative_to(STATIC_DIR).as_posix()] = p
        self.plotly_name = plotly_asset_name()
        self.files[self.plotly_name] = plotly_js_path()
        # a short content hash per file, appended to URLs (?v=...) so edits bust the cache
        self.versions = {n: hashlib.sha256(p.read_bytes()).hexdigest()[:10] for n, p in self.files.items() if n != self.plotly_name}

    def url(self, name: str) -> str:
        if name not in self.files:
            raise KeyError(f"no static asset {name!r}")
        v = self.versions.get(name)
        return f"/static/{name}" + (f"?v={v}" if v else "")

    async def endpoint(self, name: str) -> Response:
        path = self.files.get(name)
        if path is None:
            raise HTTPException(404, "no such static file")
        ctype = _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        cache = "public, max-age=31536000, immutable" if name.startswith("vendor/") else "no-cache"
        return FileResponse(path, media_type=ctype, headers={"Cache-Control": cache})
