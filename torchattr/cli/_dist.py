"""Running a command on several processes with ``torch.distributed`` (``torchrun``).

A command is distributed when ``torch.distributed`` is already initialised, or when ``torchrun``
set ``WORLD_SIZE`` > 1 (with ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``): the
process group is then initialised here (``env://``; backend ``nccl`` for CUDA devices, ``gloo``
otherwise) and destroyed when the command ends. Each rank takes the shard ``names[rank::world]``
of the sorted image names: disjoint, and together every image exactly once. With a CUDA device,
rank r uses ``cuda:LOCAL_RANK``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from torchattr.cli._common import CommandError

T = TypeVar("T")


@dataclass
class Distributed:
    """Rank, world size and device of this process; ``owned``: we initialised the group."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owned: bool = False

    @property
    def active(self) -> bool:
        return self.world > 1

    def shard(self, names: list[T]) -> list[T]:
        """This rank's items: ``names[rank::world]`` (all of them on a single process)."""
        return names[self.rank :: self.world]

    def gather(self, obj: Any) -> list[Any]:
        """``obj`` of every rank, in rank order (``[obj]`` on a single process)."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self) -> None:
        """Destroy the process group if this command created it."""
        if self.owned and dist.is_initialized():
            dist.destroy_process_group()
            self.owned = False


def resolve_device(text: str, local_rank: int | None = None) -> torch.device:
    """``--device``: ``auto`` (cuda when available), ``cpu``, ``cuda`` or ``cuda:N``.

    Under torchrun (``local_rank`` given) a plain ``cuda`` / ``auto`` becomes ``cuda:LOCAL_RANK``.
    """
    name = text.strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CommandError(
            f"--device {text!r} is not a device: expected cpu, cuda, cuda:N or auto"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CommandError(f"--device {text}: CUDA is not available on this machine")
        if device.index is None:
            device = torch.device("cuda", local_rank or 0)
        if device.index >= torch.cuda.device_count():
            raise CommandError(
                f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif device.type not in ("cpu", "mps", "xpu"):
        raise CommandError(f"--device {text!r}: expected cpu, cuda, cuda:N or auto")
    return device


def setup(device_text: str) -> Distributed:
    """The distributed context of this process (a single process when not under torchrun)."""
    world_env = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank % max(torch.cuda.device_count(), 1)))
        device = resolve_device(device_text, local if world > 1 else None)
        return Distributed(rank, world, local, device, owned=False)
    if world_env <= 1:
        return Distributed(device=resolve_device(device_text))
    if not dist.is_available():
        raise CommandError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_text, local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend=backend, init_method="env://")
    except (RuntimeError, ValueError) as error:
        raise CommandError(
            f"could not join the torchrun process group ({backend}): {error}"
        ) from None
    return Distributed(dist.get_rank(), dist.get_world_size(), local, device, owned=True)
