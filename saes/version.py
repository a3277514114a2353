"""saesteer's version: one number for the whole distribution (saes, training, ..., saesteer).

Written here and nowhere else. pyproject.toml reads it (setuptools, without importing anything),
`saesteer.__version__` is this, and what the domain packages record (an SAE's saesteer.json, a
steering preset) reads it here: pip's metadata says "unknown" for a checkout run through PYTHONPATH
and an older number for an editable install made before the last bump. It lives in `saes`, the one
package every other package may import.
"""

__version__ = "0.1.0"
