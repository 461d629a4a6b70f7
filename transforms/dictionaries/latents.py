"""Per-latent statistics of a crosscoder: decoder-norm comparison, tags, activation statistics.

Everything takes plain arrays (numpy or torch, any device); nothing here knows a ``CrossCoder``
class, so public checkpoints and locally trained ones go through the same code.

- :func:`dec_norm_diff`: ``((‖d_A‖ − ‖d_B‖) / max(‖d_A‖, ‖d_B‖) + 1) / 2`` — 0 for a latent
  whose A decoder is zero (B-only), 1 for A-only, 0.5 for equal norms. A latent whose two
  decoder norms are both 0 (0/0) is defined as 0.5: it writes to neither model, so it is not
  specific to either.
- :func:`tag_latents`: ``b_only`` / ``a_only`` / ``shared`` / ``other`` from those values and a
  :class:`Tagging` (thresholds are parameters).
- :func:`decoder_table`: one row per latent (decoder and encoder norms, dec_norm_diff, tag,
  cosine of the two decoder rows).
- :class:`LatentActivationStats`: streaming frequency / means / per-model contribution norms and
  an exact bounded top-k of activations per latent, memory ``O(F · top_k)``.
- :func:`context_window`: token ids around one token, for attaching contexts to top examples.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:
    import numpy as np

logger = logging.getLogger(__name__)

TAGS = ("b_only", "a_only", "shared", "other")


def as_numpy(x: Any, dtype: Any = None) -> "np.ndarray":
    """``x`` (numpy array, torch tensor on any device, nested sequence) as a numpy array.
    Half-precision tensors become float32 (numpy has no bfloat16)."""
    import numpy as np

    if hasattr(x, "detach"):  # a torch tensor, without importing torch here
        x = x.detach()
        if x.dtype.is_floating_point and x.element_size() < 4:
            x = x.float()
        x = x.cpu().numpy()
    return np.asarray(x, dtype=dtype)


def dec_norm_diff(norm_a: Any, norm_b: Any) -> "np.ndarray":
    """``((a − b) / max(a, b) + 1) / 2`` elementwise (float64); 0.5 where both norms are 0."""
    import numpy as np

    a, b = as_numpy(norm_a, np.float64), as_numpy(norm_b, np.float64)
    top = np.maximum(a, b)
    safe = np.where(top > 0, top, 1.0)
    return np.where(top > 0, ((a - b) / safe + 1.0) / 2.0, 0.5)


@dataclass(frozen=True)
class Tagging:
    """Thresholds on dec_norm_diff: ``b_only`` below ``b_only``, ``a_only`` above ``a_only``,
    ``shared`` within ``shared_width`` of 0.5 (strict inequalities), else ``other``."""

    b_only: float = 0.1
    a_only: float = 0.9
    shared_width: float = 0.1

    def __post_init__(self) -> None:
        if not (0.0 <= self.b_only <= self.a_only <= 1.0) or self.shared_width < 0:
            raise ValueError(f"inconsistent tagging thresholds: {self}")


def tag_latents(ndiff: Any, tagging: Tagging = Tagging()) -> list[str]:
    """One tag per dec_norm_diff value; checked in the order b_only, a_only, shared (NaN is
    ``other``)."""
    out: list[str] = []
    for x in as_numpy(ndiff, float).ravel().tolist():
        if x < tagging.b_only:
            out.append("b_only")
        elif x > tagging.a_only:
            out.append("a_only")
        elif abs(x - 0.5) < tagging.shared_width:
            out.append("shared")
        else:
            out.append("other")
    return out


def check_model_index(index: int, n_models: int, what: str) -> None:
    """ValueError unless ``0 <= index < n_models`` (``what`` names the argument)."""
    if not 0 <= index < n_models:
        raise ValueError(f"{what}={index} out of range for {n_models} models")


def decoder_table(
    W_dec_MFD: Any,
    W_enc_MDF: Any = None,
    model_a: int = 0,
    model_b: int = 1,
    tagging: Tagging = Tagging(),
) -> list[dict[str, Any]]:
    """One row per latent: ``latent, dec_norm_a, dec_norm_b, dec_norm_diff, tag, enc_norm_a,
    enc_norm_b, dec_cosine``. Encoder norms are of each model's encoder column (None without
    an encoder); ``dec_cosine`` is None where a decoder norm is 0."""
    import numpy as np

    dec = as_numpy(W_dec_MFD, np.float64)
    if dec.ndim != 3:
        raise ValueError(f"decoder must be [n_models, dict, d_model], got shape {dec.shape}")
    n_models, n_latents, _ = dec.shape
    check_model_index(model_a, n_models, "model_a")
    check_model_index(model_b, n_models, "model_b")
    dec_norms = np.linalg.norm(dec, axis=2)  # [M, F]
    norm_a, norm_b = dec_norms[model_a], dec_norms[model_b]
    ndiff = dec_norm_diff(norm_a, norm_b)
    tags = tag_latents(ndiff, tagging)
    dots = np.einsum("fd,fd->f", dec[model_a], dec[model_b])
    defined = (norm_a > 0) & (norm_b > 0)
    cosine = np.where(defined, dots / np.where(defined, norm_a * norm_b, 1.0), np.nan)
    enc_a = enc_b = None
    if W_enc_MDF is not None:
        enc = as_numpy(W_enc_MDF, np.float64)
        if enc.shape[0] != n_models or enc.shape[2] != n_latents:
            raise ValueError(f"encoder shape {enc.shape} does not match decoder shape {dec.shape}")
        enc_norms = np.linalg.norm(enc, axis=1)  # [M, F]
        enc_a, enc_b = enc_norms[model_a], enc_norms[model_b]
    return [
        {
            "latent": j,
            "dec_norm_a": float(norm_a[j]),
            "dec_norm_b": float(norm_b[j]),
            "dec_norm_diff": float(ndiff[j]),
            "tag": tags[j],
            "enc_norm_a": None if enc_a is None else float(enc_a[j]),
            "enc_norm_b": None if enc_b is None else float(enc_b[j]),
            "dec_cosine": float(cosine[j]) if defined[j] else None,
        }
        for j in range(n_latents)
    ]


def context_window(
    token_ids: Sequence[int], index: int, before: int = 8, after: int = 4
) -> tuple[list[int], int, list[int]]:
    """``(up to `before` ids left of index, the id at index, up to `after` ids right of it)``."""
    import numpy as np

    ids = as_numpy(token_ids, np.int64).ravel().tolist()
    if not 0 <= index < len(ids):
        raise IndexError(f"token index {index} out of range for a sequence of {len(ids)} tokens")
    return ids[max(0, index - before) : index], int(ids[index]), ids[index + 1 : index + 1 + after]


class LatentActivationStats:
    """Streaming activation statistics per latent over batches of token rows.

    Per latent: ``n_active`` (rows with f > 0), ``frequency`` (n_active / tokens),
    ``mean_active`` (mean of f over active rows), ``mean_all`` (mean of f over all rows),
    ``max_activation``, and for each model m ``mean_contribution_{m}``: the mean over active
    rows of the norm of the latent's contribution to model m, ``f · ‖d_m‖`` (when decoder norms
    are passed to :meth:`add`). The top ``top_k`` activations per latent are kept exactly,
    ordered by value descending then (sample, token) ascending, so ties resolve the same way
    whatever the batching; only active rows (f > 0) enter it. ``context`` = (before, after)
    token counts used by :meth:`top_examples` when token ids are given.
    """

    def __init__(self, dict_size: int, n_models: int, top_k: int = 10, context: tuple[int, int] = (8, 4)):
        import numpy as np

        if dict_size < 1 or n_models < 1 or top_k < 1:
            raise ValueError("dict_size, n_models and top_k must be positive")
        self.dict_size, self.n_models, self.top_k, self.context = dict_size, n_models, top_k, context
        self.n_tokens = 0
        self._n_active = np.zeros(dict_size, np.int64)
        self._sum_active = np.zeros(dict_size, np.float64)
        self._sum_all = np.zeros(dict_size, np.float64)
        self._max = np.full(dict_size, -np.inf)
        self._contrib: np.ndarray | None = None  # [M, F] sums over active rows of f·‖d_m‖
        self._contrib_rows = 0  # rows seen with decoder norms: all or none, checked
        self._top_val = np.full((dict_size, top_k), -np.inf)
        self._top_sample = np.full((dict_size, top_k), -1, np.int64)
        self._top_token = np.full((dict_size, top_k), -1, np.int64)

    def add(self, f_BF: Any, dec_norms_MF: Any = None, keys: Any = None) -> None:
        """Fold one batch in. ``keys``: [B, 2] (sample index, token index) per row; without it a
        row is keyed (running row number, 0)."""
        import numpy as np

        f = as_numpy(f_BF)
        if f.dtype.kind != "f":
            f = f.astype(np.float64)
        if f.ndim != 2 or f.shape[1] != self.dict_size:
            raise ValueError(f"activations must be [batch, {self.dict_size}], got shape {f.shape}")
        n = f.shape[0]
        if keys is None:
            keys_B2 = np.stack([np.arange(self.n_tokens, self.n_tokens + n), np.zeros(n, np.int64)], 1)
        else:
            keys_B2 = as_numpy(keys, np.int64).reshape(n, 2)
        active = f > 0
        self._n_active += active.sum(0)
        self._sum_active += np.where(active, f, 0).sum(0, dtype=np.float64)
        self._sum_all += f.sum(0, dtype=np.float64)
        if n:
            self._max = np.maximum(self._max, f.max(0))
        self._add_contributions(f, active, dec_norms_MF)
        self.n_tokens += n
        if n:
            self._merge_top(f, keys_B2)

    def _add_contributions(self, f: "np.ndarray", active: "np.ndarray", dec_norms_MF: Any) -> None:
        import numpy as np

        if dec_norms_MF is None:
            if self._contrib is not None:
                raise ValueError("decoder norms were given for earlier batches but not for this one")
            return
        if self._contrib is None:
            if self.n_tokens:
                raise ValueError("decoder norms given now but not for earlier batches")
            self._contrib = np.zeros((self.n_models, self.dict_size), np.float64)
        norms = as_numpy(dec_norms_MF, np.float64)
        if norms.shape != (self.n_models, self.dict_size):
            raise ValueError(f"decoder norms must be [{self.n_models}, {self.dict_size}], got {norms.shape}")
        # sum over active rows of f · ‖d_m‖ = ‖d_m‖ · (sum of active f)
        self._contrib += norms * np.where(active, f, 0).sum(0, dtype=np.float64)[None, :]

    def _merge_top(self, f: "np.ndarray", keys_B2: "np.ndarray") -> None:
        """Per-batch candidates by argpartition, then an exact lexicographic merge with the kept
        top-k. Latents whose k-th candidate value is tied with rows left out are re-selected by
        key so the result does not depend on argpartition's arbitrary choice among ties."""
        import numpy as np

        n, k = f.shape[0], self.top_k
        vals = np.where(f > 0, f, -np.inf).astype(np.float64)  # inactive rows never enter the top
        kk = min(k, n)
        if kk < n:
            cand = np.argpartition(-vals, kk - 1, axis=0)[:kk].T  # [F, kk] row indices
        else:
            cand = np.broadcast_to(np.arange(n), (self.dict_size, n)).copy()
        cand_vals = np.take_along_axis(vals.T, cand, axis=1)
        if kk < n:
            kth = cand_vals.min(1)
            n_ge = (vals >= kth[None, :]).sum(0)
            for j in np.nonzero(np.isfinite(kth) & (n_ge > kk))[0]:
                rows = np.nonzero(vals[:, j] >= kth[j])[0]
                order = np.lexsort((keys_B2[rows, 1], keys_B2[rows, 0], -vals[rows, j]))
                cand[j] = rows[order[:kk]]
            cand_vals = np.take_along_axis(vals.T, cand, axis=1)
        all_val = np.concatenate([self._top_val, cand_vals], 1)
        all_sample = np.concatenate([self._top_sample, keys_B2[cand, 0]], 1)
        all_token = np.concatenate([self._top_token, keys_B2[cand, 1]], 1)
        order = np.lexsort((all_token, all_sample, -all_val), axis=1)[:, :k]
        self._top_val = np.take_along_axis(all_val, order, 1)
        self._top_sample = np.take_along_axis(all_sample, order, 1)
        self._top_token = np.take_along_axis(all_token, order, 1)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per latent (see the class docstring); means are None for a never-active
        latent, contributions None when no decoder norms were given."""
        rows = []
        for j in range(self.dict_size):
            n_act = int(self._n_active[j])
            row: dict[str, Any] = {
                "latent": j,
                "n_active": n_act,
                "frequency": n_act / self.n_tokens if self.n_tokens else None,
                "mean_active": float(self._sum_active[j] / n_act) if n_act else None,
                "mean_all": float(self._sum_all[j] / self.n_tokens) if self.n_tokens else None,
                "max_activation": float(self._max[j]) if self.n_tokens else None,
            }
            for m in range(self.n_models):
                value = None
                if self._contrib is not None and n_act:
                    value = float(self._contrib[m, j] / n_act)
                row[f"mean_contribution_{m}"] = value
            rows.append(row)
        return rows

    def top_examples(
        self, token_ids: Mapping[int, Sequence[int]] | Sequence[Sequence[int]] | None = None
    ) -> list[dict[str, Any]]:
        """Rows ``latent, rank (1 = largest), value, sample, token``; with ``token_ids`` (sample
        index -> that sample's ids) also ``left_ids, token_id, right_ids`` from
        :func:`context_window` with this object's ``context``."""
        out = []
        before, after = self.context
        for j in range(self.dict_size):
            for r in range(self.top_k):
                value = float(self._top_val[j, r])
                if value == float("-inf"):
                    break
                sample, token = int(self._top_sample[j, r]), int(self._top_token[j, r])
                row: dict[str, Any] = {"latent": j, "rank": r + 1, "value": value, "sample": sample, "token": token}
                if token_ids is not None:
                    left, tok, right = context_window(token_ids[sample], token, before, after)
                    row.update(left_ids=left, token_id=tok, right_ids=right)
                out.append(row)
        return out
