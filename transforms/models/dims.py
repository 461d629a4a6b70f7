"""A model's dimensions read from its transformers config: the one reader every caller uses
(loading, the packaged-model check, capture's ``model_dims``, builders' config look-ups)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Config spellings across architectures (Llama/Gemma, GPT-2, T5-like), first match wins.
_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
_WIDTH_KEYS = ("hidden_size", "n_embd", "d_model")


@dataclass(frozen=True)
class ModelDims:
    """Decoder blocks, residual width and vocabulary size (None when the config has none)."""

    n_layers: int
    d_model: int
    vocab_size: int | None = None

    @classmethod
    def from_config(cls, config: Any, *, n_layers: int | None = None) -> ModelDims:
        """The dimensions of a transformers config (its text config for multimodal ones).

        ``n_layers``: the block count when the caller counted them in a module tree (which
        wins over the config's). A config without a readable width or depth: ValueError.
        """
        get_text = getattr(config, "get_text_config", None)
        text = get_text() if callable(get_text) else config
        depth = n_layers if n_layers is not None else _first_int(text, _LAYER_KEYS)
        if depth is None:
            raise ValueError(f"cannot read n_layers (num_hidden_layers) from {type(text).__name__}")
        width = _first_int(text, _WIDTH_KEYS)
        if width is None:
            raise ValueError(f"cannot read d_model (hidden_size) from {type(text).__name__}")
        return cls(n_layers=depth, d_model=width, vocab_size=_first_int(text, ("vocab_size",)))


def _first_int(config: Any, keys: tuple[str, ...]) -> int | None:
    for key in keys:
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None
