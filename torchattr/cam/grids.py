"""Layer outputs as channels-first grids ``[B, C, *s]``: feature maps, tokens, output sizes.

A vision transformer's layer output ``[B, N, D]`` is read as tokens and becomes a grid
``[B, D, h, w]`` (channels = the embedding); see :func:`token_grid` for the automatic rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

__all__ = [
    "Reshape",
    "Space",
    "as_grid",
    "check_grid",
    "check_map_dims",
    "is_tokens",
    "spatial",
    "token_grid",
]

Reshape = tuple[int, ...] | Callable[[Tensor], Tensor] | None


@dataclass(frozen=True)
class Space:
    """Where maps live: the spatial size of the image input (None: not an image) and the output."""

    image: tuple[int, ...] | None
    size: tuple[int, ...]

    @property
    def dims(self) -> int:
        return len(self.size)


def spatial(image: Tensor, size: int | Sequence[int] | None) -> Space:
    own = tuple(image.shape[2:]) if 3 <= image.ndim <= 5 else None
    if size is None:
        if own is None:
            raise ValueError(
                f"inputs has shape {list(image.shape)}: expected images [B, C, H, W] (or "
                "[B, C, L], [B, C, D, H, W]); pass size= to choose the map's size"
            )
        return Space(own, own)
    dims = len(own) if own is not None else 2
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size,) * dims
    if (
        not isinstance(size, Sequence)
        or not 1 <= len(size) <= 3
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)
    ):
        raise ValueError(f"size must be a positive int or a tuple of 1-3 of them, got {size!r}")
    return Space(own, tuple(size))


def check_grid(reshape: Any) -> tuple[int, ...]:
    if (
        not isinstance(reshape, (tuple, list))
        or not 1 <= len(reshape) <= 3
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in reshape)
    ):
        raise TypeError(
            f"reshape must be None, a grid (h, w) of positive ints or a callable, got {reshape!r}"
        )
    return tuple(reshape)


def token_grid(tokens: int, aspect: tuple[int, ...]) -> tuple[int, tuple[int, int]] | None:
    """(tokens dropped, (h, w)) for ``tokens`` tokens and an image of spatial size ``aspect``.

    Drops the first token (a class token) if the other ``tokens - 1`` tile an ``h x w`` grid with
    ``h / w = H / W``; else keeps all of them if they do; else None.

    Example::

        token_grid(197, (224, 224))   # (1, (14, 14)): a class token and 14 x 14 patches
    """
    if len(aspect) != 2:
        return None
    height, width = aspect
    for dropped in (1, 0):
        n = tokens - dropped
        if n <= 0:
            continue
        h = round(math.sqrt(n * height / width))
        if h > 0 and n % h == 0 and h * width == (n // h) * height:
            return dropped, (h, n // h)
    return None


def as_grid(
    x: Any, rows: int, name: str, space: Space, reshape: Reshape, what: str = "output"
) -> Tensor:
    """A layer output ``[rows, ...]`` as a channels-first grid ``[rows, C, *s]``."""
    if not isinstance(x, Tensor):
        raise ValueError(
            f"layer {name} returned a {type(x).__name__}, not a Tensor: pick a submodule whose "
            "output is the feature map [B, C, h, w] (or tokens [B, N, D])"
        )
    if callable(reshape):
        y = reshape(x)
        if not isinstance(y, Tensor) or y.ndim < 3 or y.shape[0] != rows:
            got = _shape_text(y, rows) if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(
                f"reshape turned the {what} of layer {name}, {_shape_text(x, rows)}, into "
                f"{got}: expected [B, C, h, w]"
            )
        return y
    if x.ndim < 3 or x.shape[0] != rows:
        raise ValueError(
            f"layer {name} {what} has shape {_shape_text(x, rows)}: expected [B, C, ...] "
            "(channels, then spatial dims) or tokens [B, N, D]; pass reshape= (a callable) to "
            "turn other layouts into [B, C, h, w]"
        )
    if reshape is not None and x.ndim != 3:
        raise ValueError(
            f"reshape={reshape} turns tokens [B, N, D] into a grid, but layer {name} {what} has "
            f"shape {_shape_text(x, rows)}: pass reshape=None (or a callable)"
        )
    if not is_tokens(x, space, reshape):
        return x
    n = x.shape[1]
    if reshape is not None:
        grid, dropped = reshape, n - math.prod(reshape)
        if dropped < 0:
            raise ValueError(
                f"reshape={reshape} needs {math.prod(reshape)} tokens but layer {name} {what} "
                f"has {n}, shape {_shape_text(x, rows)}"
            )
    else:
        found = token_grid(n, space.image or space.size)
        if found is None:
            raise ValueError(
                f"layer {name} {what} has shape {_shape_text(x, rows)}, read as tokens "
                f"[B, N, D], but neither N = {n} nor N - 1 tokens tile a grid with the input's "
                f"aspect {space.image or space.size}; pass reshape=(h, w) (the first N - h*w "
                "tokens are dropped) or a callable"
            )
        dropped, grid = found
    return x[:, dropped:].transpose(1, 2).reshape(rows, x.shape[2], *grid)


def _shape_text(x: Tensor, rows: int) -> str:
    """``[B, 5]`` when the first dim is the batch, else the literal shape and a remark."""
    if x.ndim and x.shape[0] == rows:
        return "[" + ", ".join(["B", *(str(d) for d in x.shape[1:])]) + "]"
    return f"{list(x.shape)} (the batch, {rows} rows here, is not its first dim)"


def is_tokens(x: Tensor, space: Space, reshape: Reshape) -> bool:
    """A 3-D output is tokens ``[B, N, D]`` for a 2-D (or larger) map or with a grid reshape."""
    return not callable(reshape) and x.ndim == 3 and (reshape is not None or space.dims >= 2)


def check_map_dims(grid: Tensor, name: str, space: Space) -> None:
    if grid.ndim - 2 != space.dims:
        raise ValueError(
            f"layer {name} gives a map with {grid.ndim - 2} spatial dims {list(grid.shape[2:])} "
            f"but the output size {space.size} has {space.dims}: pass size= with "
            f"{grid.ndim - 2} entries or a layer with {space.dims} spatial dims"
        )
