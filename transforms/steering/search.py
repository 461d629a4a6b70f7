"""Coefficient search for steering: adaptive per-layer search and grid helpers (pure logic).

No model here: the caller evaluates the coefficients :meth:`AdaptiveSearch.current` asks
for (typically all layers' coefficients in ONE batched
:func:`transforms.steering.generate_steered` call), judges the responses, and feeds the
per-layer means back with :meth:`AdaptiveSearch.update`.

Conventions
-----------
- Coefficients multiply the raw vector: the perturbation is ``coef * v_L`` and its size
  relative to the residual stream is :func:`perturbation_ratio` ``= |coef| ||v_L|| / ||h_L||``.
- Start: ``0.7 * ||h_L|| / ||v_L||`` (:func:`start_coefficient`), i.e. a perturbation of
  70% of the mean residual norm at that layer.
- Direction: ``direction=+1`` searches positive coefficients and calls the highest trait
  score best; ``direction=-1`` searches negative coefficients (suppressing the trait) and
  calls the lowest trait score best. Magnitudes are tracked internally; the sign is applied
  on output, so start coefficients of either sign mean the same magnitude.
- Scores: trait and coherence means on the judge's 0-100 scale; ``None`` (no score) counts
  as incoherent / not a candidate.

Momentum rule (on the log scale of the magnitude)
-------------------------------------------------
``g_t = log(up)`` when ``coherence_t >= threshold`` else ``log(down)``;
``v_t = momentum * v_{t-1} + g_t`` when ``g_t`` has the sign of ``v_{t-1}`` (consecutive
moves the same way accelerate, up to ``up ** (1 / (1 - momentum))`` per step: x1.69 for
1.3 and 0.5), else ``v_t = g_t`` (a reversal takes effect at once: a coherence failure is
never followed by a larger coefficient); ``|coef_{t+1}| = |coef_t| * exp(v_t)``.
``momentum=0`` is the plain rule (x1.3 / x0.85). The first move is always exactly x``up``
or x``down``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Trial:
    """One evaluated coefficient of one layer."""

    layer: int
    step: int
    coef: float  # signed
    trait: float | None
    coherence: float | None


def start_coefficient(h_norm: float, v_norm: float, scale: float = 0.7, direction: int = 1) -> float:
    """``direction * scale * ||h_L|| / ||v_L||``: a perturbation of ``scale`` residual norms."""
    if v_norm <= 0 or h_norm <= 0:
        raise ValueError(f"norms must be > 0, got ||h||={h_norm}, ||v||={v_norm}")
    return _sign(direction) * scale * h_norm / v_norm


def perturbation_ratio(coef: float, v_norm: float, h_norm: float) -> float:
    """``|coef| * ||v|| / ||h||``: how large the added vector is against the residual stream."""
    return abs(coef) * v_norm / h_norm


def coefficient_grid(center: float, n: int = 7, spread: float = 0.5, *, log: bool = False) -> list[float]:
    """``n`` coefficients around ``center`` (sign kept), from ``center * (1 - spread)`` to
    ``center * (1 + spread)``: evenly spaced, or geometrically (``log=True``, ratio
    ``(1 + spread) / (1 - spread)`` end to end). For a fine search around a coherence drop-off."""
    if n < 1 or not 0 <= spread < 1:
        raise ValueError(f"need n >= 1 and 0 <= spread < 1, got n={n}, spread={spread}")
    if n == 1:
        return [center]
    lo, hi = 1 - spread, 1 + spread
    if log:
        return [center * lo * (hi / lo) ** (i / (n - 1)) for i in range(n)]
    return [center * (lo + (hi - lo) * i / (n - 1)) for i in range(n)]


def _sign(direction: int) -> int:
    if direction not in (1, -1):
        raise ValueError(f"direction must be +1 or -1, got {direction!r}")
    return direction


class AdaptiveSearch:
    """Adaptive coefficient search, many layers in parallel (see the module docstring).

    ``AdaptiveSearch(layers, start_coefs)``; then ``steps`` times: evaluate
    ``current()`` (``{layer: signed coef}``) and call ``update({layer: (trait_mean,
    coherence_mean)})``. ``done`` turns True after ``steps`` updates; ``best(min_coherence)``
    picks per layer the trial with the best trait score among those at least that coherent.
    """

    def __init__(
        self,
        layers: Iterable[int],
        start_coefs: Mapping[int, float],
        threshold: float = 70.0,
        up: float = 1.3,
        down: float = 0.85,
        momentum: float = 0.5,
        steps: int = 8,
        direction: int = 1,
    ) -> None:
        self.layers = sorted(set(int(k) for k in layers))
        if not self.layers:
            raise ValueError("AdaptiveSearch needs at least one layer")
        missing = [k for k in self.layers if k not in start_coefs]
        if missing:
            raise ValueError(f"no start coefficient for layers {missing}")
        if not up > 1 or not 0 < down < 1:
            raise ValueError(f"need up > 1 and 0 < down < 1, got up={up}, down={down}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.threshold, self.up, self.down, self.momentum, self.steps = threshold, up, down, momentum, steps
        self.direction = _sign(direction)
        self._mag: dict[int, float] = {}
        for k in self.layers:
            mag = abs(float(start_coefs[k]))
            if not mag > 0 or not math.isfinite(mag):
                raise ValueError(f"start coefficient of layer {k} must be finite and non-zero, got {start_coefs[k]}")
            self._mag[k] = mag
        self._vel = {k: 0.0 for k in self.layers}
        self.step = 0
        self.history: list[Trial] = []

    @property
    def done(self) -> bool:
        return self.step >= self.steps

    def current(self) -> dict[int, float]:
        """Signed coefficients to evaluate at this step (empty once ``done``)."""
        if self.done:
            return {}
        return {k: self.direction * self._mag[k] for k in self.layers}

    def update(self, results: Mapping[int, tuple[float | None, float | None]]) -> dict[int, float]:
        """Record ``{layer: (trait_mean, coherence_mean)}`` for ``current()`` and move every
        layer's coefficient; returns the next ``current()``."""
        if self.done:
            raise RuntimeError(f"search finished after {self.steps} steps")
        missing = [k for k in self.layers if k not in results]
        if missing:
            raise ValueError(f"step {self.step}: no results for layers {missing}")
        for k in self.layers:
            trait, coherence = results[k]
            self.history.append(Trial(k, self.step, self.direction * self._mag[k], trait, coherence))
            ok = coherence is not None and coherence >= self.threshold
            grad = math.log(self.up if ok else self.down)
            prev = self._vel[k]
            vel = self.momentum * prev + grad if prev * grad > 0 else grad
            self._vel[k] = vel
            self._mag[k] *= math.exp(vel)
            logger.debug("layer %d step %d: coef %.4g trait %s coherence %s -> x%.3f",
                         k, self.step, self.history[-1].coef, trait, coherence, math.exp(vel))
        self.step += 1
        return self.current()

    def trials(self, layer: int) -> list[Trial]:
        return [t for t in self.history if t.layer == layer]

    def best(self, min_coherence: float | None = None) -> dict[int, Trial | None]:
        """Per layer, the trial with the highest (``direction=-1``: lowest) trait score whose
        coherence is ``>= min_coherence`` (default: the threshold); ``None`` if none is.
        Ties go to the smaller coefficient magnitude."""
        floor = self.threshold if min_coherence is None else min_coherence
        out: dict[int, Trial | None] = {}
        for k in self.layers:
            ok = [t for t in self.trials(k) if t.trait is not None and t.coherence is not None and t.coherence >= floor]
            out[k] = min(ok, key=lambda t: (-self.direction * t.trait, abs(t.coef))) if ok else None
        return out

    def best_overall(self, min_coherence: float | None = None) -> Trial | None:
        """The best trial over all layers (same rule as :meth:`best`)."""
        found = [t for t in self.best(min_coherence).values() if t is not None]
        return min(found, key=lambda t: (-self.direction * t.trait, abs(t.coef))) if found else None


def searches_from_norms(
    layers: Sequence[int],
    h_norms: Mapping[int, float],
    v_norms: Mapping[int, float],
    *,
    scale: float = 0.7,
    direction: int = 1,
    **kwargs: float,
) -> AdaptiveSearch:
    """An :class:`AdaptiveSearch` started at ``scale * ||h_L|| / ||v_L||`` per layer."""
    starts = {k: start_coefficient(h_norms[k], v_norms[k], scale, direction) for k in layers}
    return AdaptiveSearch(layers, starts, direction=direction, **kwargs)  # type: ignore[arg-type]
