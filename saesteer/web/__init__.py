"""The web app behind `saesteer serve`: browse feature stores and steer generation in a browser.

    from saesteer.web import create_app, ServeConfig, Limits, StoreEntry
    app = create_app(entries, config=ServeConfig(port=8000))

Layout: `app` (the FastAPI app and error handling), `security` (Host/Origin/token/CSP guard),
`api` (JSON API under /api), `pages` (HTML), `jobs` (one-at-a-time model queue), `sources`
(what a store offers the app), `store_source` (those built from a real feature store + model),
`assets` (static files, bundled plotly.js), `templates/` and `static/`.
"""

from saesteer.web.app import create_app
from saesteer.web.config import Limits, ServeConfig
from saesteer.web.jobs import ModelQueue, QueueFull
from saesteer.web.sources import Catalog, Engine, FeatureQuery, StoreEntry, make_store_ids

__all__ = [
    "create_app", "Limits", "ServeConfig", "ModelQueue", "QueueFull",
    "Catalog", "Engine", "FeatureQuery", "StoreEntry", "make_store_ids",
]
