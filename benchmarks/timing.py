"""Timing helpers shared by the benchmark scripts."""

from __future__ import annotations

import contextlib
import platform
import time
from collections.abc import Callable

import torch

Fn = Callable[[], object]


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels on CUDA; nothing on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    fns: dict[str, Fn], device: torch.device, repeats: int, warmup: int
) -> dict[str, list[float]]:
    """Wall times in seconds of ``repeats`` calls of each callable, after ``warmup`` calls each.

    Calls are interleaved (one of each per round, rotating the order) so that background load on
    a shared machine hits all contenders alike. Each call is bracketed by device synchronisation.
    """
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            synchronize(device)
            start = time.perf_counter()
            fns[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


def peak_mib(fn: Fn, device: torch.device) -> float | None:
    """Peak CUDA memory (MiB) of one call above what was allocated before it (None on CPU)."""
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def device_name(device: torch.device) -> str:
    """GPU name, or the CPU model from /proc/cpuinfo (``platform.processor()`` elsewhere)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "cpu"
