"""What every benchmark here measures the same way: CPU of processes, percentiles, table cells."""

from __future__ import annotations

import psutil


def cpu_seconds(procs: list[psutil.Process]) -> float:
    """User + system CPU seconds of ``procs`` so far (a process that has ended counts 0)."""
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def pct_ms(seconds: list[float], q: float) -> float | None:
    """The ``q``-th percentile (nearest rank) of durations in seconds, in ms; None if empty."""
    if not seconds:
        return None
    ordered = sorted(seconds)
    return 1000 * ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def fmt(value: float | None, spec: str) -> str:
    """A table cell: ``-`` for what was not measured."""
    return "-" if value is None else format(value, spec)
