"""saesteer: the face of the platform (CLI, web app, model resolution, pipelines).

It imports the domain packages (saes, training, features, autointerp, steering, toyworld);
they never import it.
"""

__version__ = "0.1.0"
