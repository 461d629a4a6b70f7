"""Per-token projections of activations onto many trait vectors at once (seed 004 monitoring).

Vectors are stacked per layer into a unit matrix ``U_KD`` (K vectors), so one matmul per
layer scores every token against every vector and only ``[T, K]`` scores leave:

- ``raw``      = ``h · v̂``;
- ``cosine``   = ``h · v̂ / ‖h‖``;
- ``centered`` = ``h · v̂ − baseline`` (the vector's stored centroid projection);
- ``norm``     = ``‖h‖`` per token.

:class:`LiveProjector` does the same inside the model during generation (hooks on the
chosen layers, a callback per forward pass: prompt tokens at prefill, then every new
token), so nothing but the scores is kept.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from transforms.capture.hooks import hook_components

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn


@dataclass(frozen=True)
class VectorStack:
    """The vectors scored at one layer: names, unit rows ``U_KD`` and baselines ``[K]``."""

    layer: int
    names: tuple[str, ...]
    unit_KD: np.ndarray
    baselines_K: np.ndarray

    @classmethod
    def build(cls, layer: int, vectors: Sequence[tuple[str, np.ndarray, float]]) -> VectorStack:
        import numpy as np

        from transforms.stats import unit_rows

        if not vectors:
            raise ValueError(f"layer {layer}: no vectors to stack")
        widths = {len(v) for _, v, _ in vectors}
        if len(widths) != 1:
            raise ValueError(f"layer {layer}: vectors of different widths {sorted(widths)}")
        mat = np.stack([np.asarray(v, dtype=np.float64) for _, v, _ in vectors])
        if (np.linalg.norm(mat, axis=1) == 0).any():
            raise ValueError(f"layer {layer}: a zero vector cannot be projected on")
        return cls(layer, tuple(n for n, _, _ in vectors), unit_rows(mat),
                   np.array([b for _, _, b in vectors], dtype=np.float64))


def project(acts_TD: np.ndarray, stack: VectorStack) -> dict[str, np.ndarray]:
    """``{"raw", "cosine", "centered": [T, K], "norm": [T]}`` for one layer's activations."""
    import numpy as np

    acts = np.asarray(acts_TD, dtype=np.float64)
    raw = acts @ stack.unit_KD.T
    norm = np.linalg.norm(acts, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        # cos(h, v) from the matmul already done (v̂ is unit): no [T, K, D] product as transforms.stats.cosine would need
        cosine = raw / norm[:, None]
    return {"raw": raw, "cosine": cosine, "centered": raw - stack.baselines_K[None, :], "norm": norm}


def score_rows(sample: str, token_ids: Sequence[int], offset: int, stack: VectorStack, scores: dict[str, np.ndarray],
               decode: Callable[[int], str], prompt_len: int) -> list[dict[str, Any]]:
    """Table rows (one per token and vector) for one sample's scores at one layer;
    ``offset`` is the absolute position of the first scored token."""
    rows = []
    for t in range(scores["raw"].shape[0]):
        position = offset + t
        token = int(token_ids[position])
        for k, name in enumerate(stack.names):
            rows.append({"sample": sample, "token_index": position, "token_id": token, "token": decode(token),
                         "is_response": position >= prompt_len, "layer": stack.layer, "vector": name,
                         "score": float(scores["raw"][t, k]), "cosine": float(scores["cosine"][t, k]),
                         "centered": float(scores["centered"][t, k]), "norm": float(scores["norm"][t])})
    return rows


class LiveProjector:
    """Scores every token of a ``generate`` call as it is computed.

    ``with projector.attach(model, component="residual"): model.generate(...)``; afterwards
    ``projector.scores[layer]`` is a list of per-forward ``[B, T_new, K]`` raw-score arrays
    and ``projector.norms[layer]`` the matching ``[B, T_new]`` norms (float32, computed in
    float32 from the model's states whatever its dtype); ``on_scores(layer,
    raw_BTK, norms_BT)`` (optional) streams them. :meth:`per_row` concatenates a row's
    scores over the forwards (prefill + each decoding step), left padding included.
    """

    def __init__(self, stacks: Sequence[VectorStack], on_scores: Callable[[int, np.ndarray, np.ndarray], None] | None = None):
        self.stacks = {s.layer: s for s in stacks}
        self.on_scores = on_scores
        self.scores: dict[int, list[np.ndarray]] = {k: [] for k in self.stacks}
        self.norms: dict[int, list[np.ndarray]] = {k: [] for k in self.stacks}
        self._units: dict[tuple[int, str], torch.Tensor] = {}  # (layer, device) -> float32 U_KD there

    def _unit_on(self, layer: int, device: torch.device) -> torch.Tensor:
        import torch

        key = (layer, str(device))
        if key not in self._units:  # sent to the device once, not per forward
            self._units[key] = torch.as_tensor(self.stacks[layer].unit_KD, dtype=torch.float32, device=device)
        return self._units[key]

    def _callback(self, layer: int, hidden_BTD: torch.Tensor) -> None:
        import torch

        # float32 whatever the model dtype (bf16 states are widened exactly; float64 is
        # missing on some accelerators), on the states' device; scores and norms leave it
        # together, one copy per layer and forward pass
        h = hidden_BTD.detach().float()
        both = torch.cat([h @ self._unit_on(layer, h.device).T, h.norm(dim=-1, keepdim=True)], dim=-1).cpu().numpy()
        raw, norms = both[..., :-1], both[..., -1]
        self.scores[layer].append(raw)
        self.norms[layer].append(norms)
        if self.on_scores is not None:
            self.on_scores(layer, raw, norms)

    @contextmanager
    def attach(self, model: nn.Module, component: str = "residual") -> Iterator[LiveProjector]:
        with hook_components(model, sorted(self.stacks), component, self._callback):
            yield self

    def per_row(self, layer: int, row: int) -> tuple[np.ndarray, np.ndarray]:
        """``(raw [T_total, K], norms [T_total])`` of batch row ``row`` over all forwards."""
        import numpy as np

        raw = np.concatenate([s[row] for s in self.scores[layer]], axis=0)
        norms = np.concatenate([n[row] for n in self.norms[layer]], axis=0)
        return raw, norms
