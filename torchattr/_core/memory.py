"""Measuring the memory a chunk of rows takes, and the default budget.

``chunk_size="auto"`` (see :func:`torchattr._core.chunking.chunks`) runs its first chunks under
:class:`PeakMeter` and sizes the rest from what they measured. The meter is a
``TorchDispatchMode`` that adds the bytes of every tensor storage an operation creates while it
is active (forward, backward, the accumulation) and subtracts them when the storage is freed
(also storages kept alive only by autograd's saved tensors); its ``peak`` is the largest sum
reached. It measures tensors, on any device, so the same code serves CPU and CUDA; allocator
slack, cuDNN workspaces and fragmentation are not seen (the budget is for tensors).

Default budget (``memory_budget=None``): 128 MiB on CPU, where a chunk of a few dozen rows already
runs the kernels at full speed, so a low ceiling costs little time (ResNet-18 at 128 x 128: about
7 MiB per row, 16-row chunks); on CUDA half of the memory the device reports free when the call
starts (``torch.cuda.mem_get_info``), where larger chunks do pay.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

DEFAULT_CPU_BUDGET = 128 * 2**20
CUDA_FREE_FRACTION = 0.5


def check_memory_budget(memory_budget: Any) -> int | None:
    """None (the default budget) or a positive number of bytes."""
    if memory_budget is None:
        return None
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, (int, float)):
        raise TypeError(
            f"memory_budget must be a number of bytes or None, got {type(memory_budget).__name__}"
        )
    if not memory_budget > 0 or memory_budget == float("inf"):
        raise ValueError(
            f"memory_budget must be a positive, finite number of bytes, got {memory_budget}"
        )
    return int(memory_budget)


def default_budget(device: torch.device) -> int:
    """Bytes a call may use for its chunks: 128 MiB on CPU, half the free memory on CUDA."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * CUDA_FREE_FRACTION)
    return DEFAULT_CPU_BUDGET


class PeakMeter(TorchDispatchMode):
    """Live bytes of the tensor storages created inside the context, and their peak.

    Storages that existed before (parameters, the inputs) are not counted; views share their
    base's storage and add nothing.
    """

    def __init__(self) -> None:
        super().__init__()
        self._live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out

    def _track(self, t: torch.Tensor) -> None:
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # no storage (meta, sparse, wrapper)
            return
        key = storage._cdata
        if key in self._live:
            return
        size = storage.nbytes()
        self._live[key] = size
        self.current += size
        self.peak = max(self.peak, self.current)
        # the finalizer holds the meter weakly: storages that outlive it do not keep it alive
        weakref.finalize(storage, _free, weakref.ref(self), key)


def _free(meter_ref: weakref.ref[PeakMeter], key: int) -> None:
    meter = meter_ref()
    if meter is not None:
        meter.current -= meter._live.pop(key, 0)
