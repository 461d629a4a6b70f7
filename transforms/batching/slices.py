"""Work over consecutive slices of a list, each slice retried at half the batch on out-of-memory.

The stages that keep results per batch (steering generations, judge scores, similarity
chunks, live projections) walk their items in consecutive slices of the batch size. Run
through :func:`run_slices`, a slice that runs out of memory is done again from scratch
as a slice of half the size starting at the same item, and the rest of the run keeps
the smaller size: with an even size the slices are then exactly those a run at the
smaller size from the start makes (a start at a multiple of ``b`` is one of ``b/2``), so
the results are too. A batch of 1 that does not fit is a one-line
:class:`transforms.batching.OutOfMemory` error.
"""
from __future__ import annotations

from typing import Callable

from transforms.batching.sizes import with_backoff


def run_slices(n_items: int, size: int, run: Callable[[int, int, int], None], *, what: str,
               span: Callable[[int], int] | None = None) -> list[int]:
    """Call ``run(lo, hi, size)`` for consecutive slices ``[lo, hi)`` of ``range(n_items)``
    and return the sorted distinct sizes used.

    A slice holds ``span(size)`` items (default ``size``; a stage whose batch rows are
    several per item, like steering's configurations x questions, passes its own, at
    least 1). ``run`` must keep nothing of a slice it does not finish: on out-of-memory it
    is called again for the slice at half the size (see the module docstring)."""
    width = span or (lambda s: s)
    used: set[int] = set()
    lo = 0
    while lo < n_items:
        def work(s: int, lo: int = lo) -> int:
            hi = min(n_items, lo + max(1, width(s)))
            run(lo, hi, s)
            return hi

        lo, size = with_backoff(work, size, what=f"{what} (from item {lo} of {n_items})")
        used.add(size)
    return sorted(used)
