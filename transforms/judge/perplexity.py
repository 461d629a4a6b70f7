"""Coherence from a reference model: token NLL plus degeneracy signals, calibrated to 0-100.

Perplexity alone fails (a token loop is very likely text), so each answer gets a small
feature vector (:data:`FEATURES`):

* ``nll`` — mean negative log-likelihood (nats/token) of the answer's tokens given the
  question, formatted as the reference model formats prompts (chat template when it has
  one), under the reference model (default: the application model without steering);
* ``pmi`` — ``nll(answer alone) - nll(answer | question)``, capped at :data:`PMI_CAP`: how
  much the question helps predict the answer. A fluent answer to a different question has a
  low one; the cap keeps a 2-token fragment's huge mean PMI from reading as relevance;
* ``repeat3`` — share of token 3-grams that already occurred earlier in the answer;
* ``distinct2`` — distinct token bigrams / bigrams;
* ``nonword`` — share of tokens with no letter or digit (whitespace and punctuation floods);
* ``loop`` — longest stretch made of ≥ 2 copies of one token pattern of period ``p ≤ 8``
  (``t[i] == t[i-p]`` throughout), as a share of the answer (runaway repetition);
* ``log_len`` — ``log(1 + tokens)`` capped at :data:`LEN_CAP` (≈ 20 tokens): fragments are
  short, while beyond a sentence length says nothing about coherence.

:class:`CoherenceCalibration` maps features to 0-100: standardise, a logistic regression
fitted on labelled fluent (1) vs degenerate (0) answers, score = 100·P(fluent). The map is
monotone in the regression's linear score. It is fitted on the project's calibration set
(``datasets/judge/calibration/coherence.jsonl``) by ``builders.calibration`` and stored
with the calibration dataset; its parameters are part of the scorer's identity.
An empty answer scores 0 (no answer is not a coherent one).
"""
from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from transforms.judge.base import OnResult, Score

logger = logging.getLogger(__name__)

FEATURES = ("nll", "pmi", "repeat3", "distinct2", "nonword", "loop", "log_len")
FEATURE_VERSION = "2"
PMI_CAP = 1.5  # nats/token; fluent answers sit at 0.5-1.4, answers to another question below 0.6
LEN_CAP = 3.0  # log(1 + tokens)
CPU_BATCH = 16  # ``batch_size="auto"`` off CUDA: the batch CPU runs always used
_WORDLIKE = re.compile(r"[^\W_]")


def degeneracy_features(ids: Sequence[int], pieces: Sequence[str]) -> dict[str, float]:
    """The token-statistics features of one answer (``ids`` and their decoded ``pieces``)."""
    n = len(ids)
    grams3 = [tuple(ids[i:i + 3]) for i in range(n - 2)]
    seen: set[tuple[int, ...]] = set()
    repeats = 0
    for gram in grams3:
        repeats += gram in seen
        seen.add(gram)
    bigrams = [tuple(ids[i:i + 2]) for i in range(n - 1)]
    longest = 0
    for period in range(1, 9):
        run = 0
        for i in range(period, n):
            run = run + 1 if ids[i] == ids[i - period] else 0
            if run >= period:  # at least two whole copies of the period
                longest = max(longest, run + period)
    return {
        "repeat3": repeats / len(grams3) if grams3 else 0.0,
        "distinct2": len(set(bigrams)) / len(bigrams) if bigrams else 1.0,
        "nonword": sum(not _WORDLIKE.search(p) for p in pieces) / n if n else 1.0,
        "loop": min(1.0, longest / n) if n else 0.0,
        "log_len": min(LEN_CAP, math.log1p(n)),
    }


class PerplexityFeaturizer:
    """Computes :data:`FEATURES` for ``(question, answer)`` pairs under a reference model.

    ``loaded``: a :class:`transforms.models.LoadedModel`; ``reference``: its identity (what
    names the model in version ids). Two forward passes per batch: answer given question,
    and answer after only a BOS (or EOS) token, for ``pmi``. ``batch_size``: an int or
    ``"auto"`` (:data:`CPU_BATCH` off CUDA, else from the free memory), halved for a batch
    that runs out of memory and the rest of the call.
    """

    def __init__(self, loaded: Any, reference: dict[str, Any], batch_size: int | str = "auto") -> None:
        from transforms.batching import parse_batch_size

        self.loaded, self.reference, self.batch_size = loaded, reference, parse_batch_size(batch_size)
        self.batch_sizes: set[int] = set()  # the sizes used, for a builder's summary

    def identity(self) -> dict[str, Any]:
        return {"features": list(FEATURES), "feature_version": FEATURE_VERSION, "pmi_cap": PMI_CAP,
                "len_cap": LEN_CAP, "reference": self.reference}

    def _encode(self, question: str, answer: str) -> tuple[list[int], list[int], list[int]]:
        from transforms.sequences import bos_token_id, format_prompt

        tok = self.loaded.tokenizer
        prompt = list(format_prompt(tok, question).ids)
        answer_ids = list(tok(answer, add_special_tokens=False)["input_ids"])
        start = bos_token_id(tok)
        start = tok.eos_token_id if start is None else start
        return prompt, answer_ids, [int(start)]

    def _answer_logprobs(self, sequences: list[tuple[list[int], list[int]]]) -> list[list[float]]:
        """Log-probabilities of each ``answer``'s tokens after its ``prefix``.

        The token prefix every row shares (a chat template's system turn and user header) is
        run once and its KV cache repeated per row; the rest is right padded after it. Models
        with sliding-window attention get the plain right-padded batch."""
        import torch
        from transformers import DynamicCache

        from transforms.judge.local import common_prefix, sliding_window

        model = self.loaded.model
        pad = self.loaded.tokenizer.pad_token_id or 0
        device = next(model.parameters()).device
        full = [p + a for p, a in sequences]
        shared = common_prefix([p for p, _ in sequences] * 2) if sliding_window(model.config) is None else 0
        width = max(map(len, full)) - shared
        ids = torch.full((len(full), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, seq in enumerate(full):
            ids[row, :len(seq) - shared] = torch.tensor(seq[shared:])
            mask[row, :len(seq) - shared] = 1
        # logits only where some row predicts an answer token: the unembedding of a 49k-262k
        # vocabulary is a large share of a small model's forward pass
        first = min(len(p) for p, _ in sequences) - 1 - shared
        kwargs: dict[str, Any] = {}
        with torch.inference_mode():
            if shared:
                cache = DynamicCache()
                model(input_ids=torch.tensor([full[0][:shared]], device=device), past_key_values=cache,
                      use_cache=True, logits_to_keep=1)
                cache.batch_repeat_interleave(len(full))
                mask = torch.cat([mask.new_ones(len(full), shared), mask], dim=1)
                kwargs = {"past_key_values": cache, "use_cache": True,
                          "position_ids": torch.arange(shared, shared + width, device=device)[None].expand(len(full), -1)}
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), logits_to_keep=width - first,
                           **kwargs).logits[:, :-1].float()
            targets = ids[:, first + 1:].to(device).unsqueeze(-1)
            token_lp = (logits.gather(-1, targets).squeeze(-1) - torch.logsumexp(logits, dim=-1)).cpu()
        out = []
        for (prefix, answer) in sequences:
            lo = len(prefix) - 1 - shared - first  # the position predicting the first answer token
            out.append(token_lp[len(out), lo:lo + len(answer)].tolist())
        return out

    def features(self, items: Sequence[tuple[str, str]]) -> list[dict[str, float] | None]:
        """One feature dict per item; ``None`` for an empty answer."""
        from transforms.batching import run_slices
        from transforms.batching import resolve_batch_size

        encoded = [self._encode(q, a) for q, a in items]
        out: list[dict[str, float] | None] = [None] * len(items)
        todo = sorted((i for i, e in enumerate(encoded) if e[1]), key=lambda i: len(encoded[i][0]) + len(encoded[i][1]))
        if not todo:
            return out
        tok = self.loaded.tokenizer

        def featurize(lo: int, hi: int, size: int) -> None:
            # both passes of a batch are redone together on out-of-memory: nothing is kept before both finish
            chunk = todo[lo:hi]
            cond = self._answer_logprobs([(encoded[i][0], encoded[i][1]) for i in chunk])
            bare = self._answer_logprobs([(encoded[i][2], encoded[i][1]) for i in chunk])
            for i, lp, lp_bare in zip(chunk, cond, bare):
                answer = encoded[i][1]
                feats = degeneracy_features(answer, tok.batch_decode([[t] for t in answer]))
                pmi = (sum(lp) - sum(lp_bare)) / len(lp)
                out[i] = {"nll": -sum(lp) / len(lp), "pmi": min(PMI_CAP, pmi), **feats}

        longest = len(encoded[todo[-1]][0]) + len(encoded[todo[-1]][1])
        size = resolve_batch_size(self.batch_size, self.loaded.model, longest, cpu_batch=CPU_BATCH)
        self.batch_sizes.update(run_slices(len(todo), size, featurize, what="perplexity judge"))
        return out


@dataclass(frozen=True)
class CoherenceCalibration:
    """Standardise, then ``100·sigmoid(coef·z + intercept)``: fitted on labelled answers."""

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    regularization: float

    def linear(self, feats: dict[str, float]) -> float:
        return self.intercept + sum(c * (feats[f] - m) / s for f, m, s, c in
                                    zip(self.features, self.mean, self.scale, self.coef))

    def apply(self, feats: dict[str, float] | None) -> float:
        if feats is None:
            return 0.0
        z = self.linear(feats)
        return 100.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CoherenceCalibration":
        return cls(tuple(data["features"]), tuple(map(float, data["mean"])), tuple(map(float, data["scale"])),
                   tuple(map(float, data["coef"])), float(data["intercept"]), float(data["regularization"]))

    @classmethod
    def fit(cls, feats: Sequence[dict[str, float]], fluent: Sequence[bool], regularization: float = 1.0,
            features: Sequence[str] = FEATURES) -> "CoherenceCalibration":
        """Logistic regression (L2, ``C = regularization``) of fluent on standardised features."""
        import numpy as np
        from sklearn.linear_model import LogisticRegression

        labels = np.asarray(fluent, dtype=int)
        if len(set(labels.tolist())) < 2:
            raise ValueError("calibration needs both fluent and degenerate answers")
        X = np.array([[f[name] for name in features] for f in feats], dtype=float)
        mean, scale = X.mean(axis=0), X.std(axis=0)
        scale[scale == 0] = 1.0
        model = LogisticRegression(C=regularization, max_iter=2000).fit((X - mean) / scale, labels)
        return cls(tuple(features), tuple(mean.tolist()), tuple(scale.tolist()), tuple(model.coef_[0].tolist()),
                   float(model.intercept_[0]), float(regularization))


class PerplexityScorer:
    """Coherence 0-100 = ``calibration.apply(featurizer.features(item))``."""

    name = "perplexity"

    def __init__(self, featurizer: PerplexityFeaturizer, calibration: CoherenceCalibration,
                 calibration_ref: str | None = None) -> None:
        self.featurizer, self.calibration, self.calibration_ref = featurizer, calibration, calibration_ref

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "version": "1", **self.featurizer.identity(),
                "calibration": self.calibration.as_dict()}

    def score(self, items: Sequence[tuple[str, str]], on_result: OnResult | None = None) -> list[Score]:
        scores = [self.calibration.apply(f) for f in self.featurizer.features(items)]
        if on_result is not None:
            for i, value in enumerate(scores):
                on_result(i, value)
        return scores
