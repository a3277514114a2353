"""saesteer: the face of the platform (CLI, web app, model resolution, pipelines).

It imports the domain packages (saes, training, features, autointerp, steering, toyworld);
they never import it.
"""

from saes.version import __version__  # noqa: F401 (re-exported; written there, once: pyproject reads it there too)
