"""The web app behind `saesteer serve`: browse feature stores and steer generation in a browser.

    from saesteer.web import create_app, ServeConfig, Limits, StoreEntry
    app = create_app(entries, config=ServeConfig(port=8000))

Layout: `app` (the FastAPI app and error handling), `security` (Host/Origin/token/CSP guard),
`api` (JSON API under /api), `pages` (HTML), `jobs` (one-at-a-time model queue), `sources`
(what a store offers the app), `store_source` (a real feature store's records), `model_source`
(the model work: fire, steer, sweep), `assets` (static files, bundled plotly.js), `templates/`
and `static/`.

Names are imported lazily: the CLI reads `saesteer.web.config` for `serve`'s flags without
importing FastAPI or torch.
"""

from __future__ import annotations

from saes.lazy import lazy_exports

_LAZY = {
    "create_app": "saesteer.web.app",
    "Limits": "saesteer.web.config",
    "ServeConfig": "saesteer.web.config",
    "ModelQueue": "saesteer.web.jobs",
    "QueueFull": "saesteer.web.jobs",
    "Catalog": "saesteer.web.sources",
    "Engine": "saesteer.web.sources",
    "FeatureQuery": "saesteer.web.sources",
    "StoreEntry": "saesteer.web.sources",
    "make_store_ids": "saesteer.web.sources",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
