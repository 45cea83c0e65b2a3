"""The argument preamble shared by the benchmark scripts.

Every timing script takes the same core options, spelled and defaulted the same way:
``--device``, ``--batch``, ``--size``, ``--repeats``, ``--warmup``, ``--threads``, ``--seed`` and
``--markdown``; a script adds its own options to the parser :func:`parser` returns and reads them
back with :func:`parse`, which also checks the device and applies ``--threads``.

Example::

    p = parser("python -m benchmarks.bench_cam", "Time every ta.cam method.", batch=16, size=224)
    p.add_argument("--layer", default="stages.3")
    args = parse(p, argv)                      # args.device, args.batch, ..., args.layer
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch

__all__ = ["comma_list", "parse", "parser"]


def parser(
    prog: str | None,
    description: str,
    *,
    batch: int | None,
    size: int | None,
    repeats: int = 5,
    warmup: int | None = 1,
    device: str | None = "cpu",
    markdown: bool = True,
    batch_help: str | None = None,
    size_help: str | None = None,
) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` with the shared options and these defaults.

    ``device=None`` leaves ``--device`` out (a CPU-only script); ``"auto"`` defaults to CUDA when
    available. ``warmup=None`` leaves ``--warmup`` out; ``markdown=False`` leaves ``--markdown``
    out. ``batch`` / ``size`` ``None``: the script picks per model (say so in ``*_help``).
    """
    p = argparse.ArgumentParser(prog=prog, description=description)
    if device is not None:
        default = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        p.add_argument("--device", choices=("cpu", "cuda"), default=default)
    p.add_argument(
        "--batch", type=int, default=batch, help=batch_help or f"samples B (default {batch})"
    )
    p.add_argument(
        "--size", type=int, default=size, help=size_help or f"image side S (default {size})"
    )
    p.add_argument("--repeats", type=int, default=repeats, help=f"timed calls (default {repeats})")
    if warmup is not None:
        p.add_argument(
            "--warmup", type=int, default=warmup, help=f"untimed calls first (default {warmup})"
        )
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--seed", type=int, default=0)
    if markdown:
        p.add_argument("--markdown", action="store_true", help="print the table as markdown")
    return p


def parse(p: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv``; refuse ``--device cuda`` without CUDA; apply ``--threads``."""
    args = p.parse_args(argv)
    if getattr(args, "device", "cpu") == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch.cuda.is_available() is False")
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def comma_list(p: argparse.ArgumentParser, text: str, known: Sequence[str], what: str) -> list[str]:
    """``"a, b"`` -> ``["a", "b"]``, each one of ``known`` (else a usage error naming ``what``)."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    for item in items:
        if item not in known:
            p.error(f"unknown {what} {item!r}: expected some of {', '.join(known)}")
    return items
