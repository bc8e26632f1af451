"""The memory high-water mark the benchmarks report."""

from __future__ import annotations

import resource
from pathlib import Path


def peak_mb() -> float:
    """This process's own high-water mark in MB. Not ru_maxrss alone: Linux keeps that
    across exec, so a child started by a (larger) setup process would report the setup's."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
