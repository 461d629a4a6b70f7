"""Judge scores cached in the store, so re-scoring the same answer costs no call.

Scores live under ``<store root>/_cache/judge/`` (a :class:`store.kvcache.KeyedCache`),
keyed by judge model, template hash, question and answer. The judge model's id carries
the dtype it runs in when that is not float32 (``+dtype:bfloat16``, see
:func:`builders.shared.judges.judge_dtype`), so bf16 scores never answer for float32 ones. Each
batch of finished scores is flushed at once: a judge that fails halfway keeps what it
obtained.
"""
from __future__ import annotations

from typing import Iterable

from store import Store
from store.kvcache import KeyedCache

CACHE_DIR = "_cache/judge"
Key = tuple[str, str, str, str]  # (judge model, template hash, question, answer)


def _key(key: Key) -> str:
    return "\x1f".join(key)


class StoreScoreCache:
    """A ``ScoreCache`` (get_many / put_many) persisted in the store."""

    def __init__(self, store: Store) -> None:
        self._cache = KeyedCache(store, "judge", ["score"])
        self.folder = self._cache.folder

    def get_many(self, keys: Iterable[Key]) -> dict[Key, float | None]:
        keys = list(keys)
        hits = self._cache.get_many(_key(k) for k in keys)
        return {k: hits[_key(k)]["score"] for k in keys if _key(k) in hits}

    def put_many(self, items: Iterable[tuple[Key, float | None]]) -> None:
        import pyarrow as pa

        rows = list(items)
        self._cache.put_many([(_key(k), {"score": s}) for k, s in rows], schema={"score": pa.float64()},
                             extra={"judge_model": [k[0] for k, _ in rows], "template_hash": [k[1] for k, _ in rows]})

    def __len__(self) -> int:
        return len(self._cache)
