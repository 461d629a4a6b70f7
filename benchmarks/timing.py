"""Timing runs side by side: the runs alternate, so background load hits them alike."""
from __future__ import annotations

import time
from collections.abc import Callable


def round_robin(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds of every repeat per run, the runs taken in turn ``repeats`` times."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times
