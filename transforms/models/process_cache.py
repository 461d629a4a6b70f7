"""The one in-process cache of loaded models, plain and adapted, bounded to two.

Builders run several stages in a row on the same variants (the demo, the tests); a cached
Gemma 3 load still spends seconds on its tokenizer, so a model is loaded once per process
per identity and placement. Only two stay in memory: the least recently used one is
dropped first (its memory is freed once no caller holds it).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

#: models kept at once (two variants of a comparison, or a base model and its adapted copy)
CAPACITY = 2


@dataclass(frozen=True)
class ModelKey:
    """What makes two loaded models the same one."""

    model_id: str
    revision: str | None
    device: str
    dtype: str
    device_map: str | None = None
    quantization: str | None = None  # QuantizationSpec.label
    adapter: str | None = None  # fingerprint of a merged LoRA adapter


class ModelCache:
    """Loaded models by :class:`ModelKey`, at most ``capacity`` of them."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self._models: OrderedDict[ModelKey, Any] = OrderedDict()

    def get(self, key: ModelKey, load: Callable[[], Any]) -> Any:
        """The model cached under ``key``, else ``load()``'s result, cached."""
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        while len(self._models) >= self.capacity:  # before loading: never three at once
            dropped, _ = self._models.popitem(last=False)
            logger.info("model cache: dropped %s", dropped)
        model = load()
        self._models[key] = model
        return model

    def clear(self) -> None:
        self._models.clear()

    def __len__(self) -> int:
        return len(self._models)

    def __contains__(self, key: object) -> bool:
        return key in self._models


#: the process's cache, shared by every builder (builders.shared.common.cached_model and
#: builders.shared.variants.variant_model)
MODEL_CACHE = ModelCache()
