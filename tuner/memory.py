"""A trial's peak memory, the cost `peak_memory_mb` reports: the GPU's where the trial has one, else
the process's resident memory (RSS).

Workers are reused from trial to trial, so each trial resets the peak when it starts: on GPU
torch's peak statistics, on Linux the kernel's high-water mark (`/proc/self/clear_refs`). Where the
kernel refuses that reset (or elsewhere than Linux) the CPU figure is the process's peak since it
started (`ru_maxrss`), never lower than an earlier trial's in the same worker.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


def reset_peak() -> None:
    """Start a new peak: this trial's own, not the worker's earlier trials'."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        CLEAR_REFS.write_text("5")  # 5: reset the peak resident set size (Linux >= 4.0)
    except OSError:
        pass


def peak_mb() -> float:
    """The peak since `reset_peak`, in MiB: GPU memory allocated by torch, or on CPU resident memory."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resident_peak_mb()


def resident_peak_mb() -> float:
    """The process's peak resident memory in MiB: the kernel's high-water mark (VmHWM), else ru_maxrss."""
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux
