"""Synthetic chest-X-ray-like phantoms with known lesion boxes.

Each image is a grey ``[1, H, W]`` picture in [0, 1]: a dark background, a bright body ellipse,
two darker lung fields (soft-edged ellipses) crossed by faint curved rib stripes, smooth
low-frequency texture and a little pixel noise. Positive images also carry one lesion: a bright
bump ``a * max(0, 1 - d^2 / R^2)^2`` of radius ``R`` (2 to 4 pixels at 64 x 64) centred at a
random point inside one lung field. Its box holds every pixel centre with ``|x - c_x| < R`` and
``|y - c_y| < R``, as XYXY pixel coordinates with exclusive ends (``M[y1:y2, x1:x2] = 1``), so
the lesion adds nothing outside its box.

Everything is drawn from one ``torch.Generator`` seeded with ``derive_seed(seed, "phantoms")``
(so a generator seeded with ``seed`` itself, e.g. for shuffling, draws something unrelated), in an
order that does not depend on the labels: the same ``(n, size, seed)`` give the same anatomy,
noise and lesion parameters whatever ``positive_fraction`` is, and the same arguments give
bit-identical data. The global random state is neither used nor changed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from torchattr._core.checks import check_positive_int
from torchattr.data.seeding import derive_seed

__all__ = ["lesion_box", "make_phantoms"]

_TEXTURE_CELLS = 8  # the smooth texture is bilinear noise on an 8 x 8 grid


def make_phantoms(
    n: int, size: int = 64, positive_fraction: float = 0.5, seed: int = 0
) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Generate ``n`` phantoms, ``round(n * positive_fraction)`` of them with a lesion.

    Returns ``(images, labels, boxes)``:

    * ``images``: float32 ``[N, 1, H, W]`` (``H = W = size``), values in [0, 1];
    * ``labels``: long ``[N]``, 1 for an image with a lesion, else 0 (positions shuffled);
    * ``boxes``: a list of N long tensors ``[N_i, 4]`` of XYXY pixel coordinates with exclusive
      ends; ``N_i = 1`` for positives and ``N_i = 0`` (shape ``[0, 4]``) for negatives.

    Example::

        images, labels, boxes = make_phantoms(600, seed=0)   # [600, 1, 64, 64], [600], 600 boxes
    """
    n = check_positive_int(n, "n")
    size = check_positive_int(size, "size", minimum=16)
    if isinstance(positive_fraction, bool) or not isinstance(positive_fraction, (int, float)):
        kind = type(positive_fraction).__name__
        raise TypeError(f"positive_fraction must be a number, got {kind}")
    if not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(f"positive_fraction must lie in [0, 1], got {positive_fraction}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")

    gen = torch.Generator().manual_seed(derive_seed(seed, "phantoms"))
    labels = torch.zeros(n, dtype=torch.long)
    labels[torch.randperm(n, generator=gen)[: round(n * positive_fraction)]] = 1
    anatomy, lungs = _anatomy(n, size, gen)
    lesion, centre, radius = _lesions(lungs, size, gen)
    noise = 0.02 * torch.randn((n, size, size), generator=gen)
    images = anatomy + labels[:, None, None] * lesion + noise
    boxes = [
        lesion_box(centre[i], radius[i], size)[None] if labels[i] else _no_boxes() for i in range(n)
    ]
    return images.clamp(0.0, 1.0).unsqueeze(1).to(torch.float32), labels, boxes


def lesion_box(centre: Tensor, radius: Tensor | float, size: int) -> Tensor:
    """XYXY box (long ``[4]``, ends exclusive) of the pixels with ``|x - c_x|, |y - c_y| < R``.

    Pixel ``i`` has its centre at coordinate ``i``; so ``x1 = floor(c_x - R) + 1`` and
    ``x2 = ceil(c_x + R)``, clipped to ``[0, size]``. ``centre`` is ``(c_x, c_y)``.

    Example::

        lesion_box(torch.tensor([10.0, 12.0]), 3.0, 32)   # tensor([8, 10, 13, 15])
    """
    low = torch.floor(centre - radius).long() + 1
    high = torch.ceil(centre + radius).long()
    return torch.cat([low, high]).clamp(0, size)


def _anatomy(n: int, size: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Images without lesions ``[N, H, W]`` and lung-field parameters ``[N, 2, 4]``.

    The lung parameters are ``(c_x, c_y, a_x, a_y)`` in normalised coordinates [-1, 1], the
    left lung first.
    """
    y, x = _grid(size)

    def u(low: float, high: float) -> Tensor:
        return low + (high - low) * torch.rand(n, generator=gen)

    background, body_level = u(0.02, 0.10), u(0.55, 0.72)
    body = _soft_ellipse(x, y, u(-0.04, 0.04), u(0.02, 0.1), u(0.80, 0.92), u(0.95, 1.05), 12.0)
    offset, width = u(0.33, 0.42), u(0.22, 0.28)
    lungs = torch.stack(
        [
            torch.stack([-offset + u(-0.03, 0.03), u(-0.12, 0.0), width, u(0.5, 0.6)], -1),
            torch.stack([offset + u(-0.03, 0.03), u(-0.12, 0.0), width, u(0.5, 0.6)], -1),
        ],
        dim=1,
    )
    lung = torch.maximum(
        *(_soft_ellipse(x, y, *lungs[:, side].unbind(-1), 10.0) for side in range(2))
    )
    rib_phase, rib_bend = u(0.0, 2 * math.pi), u(1.0, 2.0)
    ribs = 0.5 + 0.5 * torch.sin(
        2 * math.pi * 4.5 * (y + rib_bend[:, None, None] * x.square()) + rib_phase[:, None, None]
    )
    texture = torch.nn.functional.interpolate(
        torch.randn((n, 1, _TEXTURE_CELLS, _TEXTURE_CELLS), generator=gen),
        size=(size, size),
        mode="bilinear",
        align_corners=False,
    )[:, 0]
    darkening = u(0.28, 0.38)
    image = background[:, None, None] + (body_level - background)[:, None, None] * body
    image = image - darkening[:, None, None] * lung + 0.06 * lung * ribs + 0.04 * texture * body
    return image, lungs


def _lesions(lungs: Tensor, size: int, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Lesion images ``[N, H, W]``, centres ``[N, 2]`` (pixel ``(x, y)``) and radii ``[N]``.

    The centre is uniform over the inner 70% (in radius) of a randomly chosen lung field.
    """
    n = lungs.shape[0]
    side = torch.randint(0, 2, (n,), generator=gen)
    r = 0.7 * torch.rand(n, generator=gen).sqrt()
    theta = 2 * math.pi * torch.rand(n, generator=gen)
    radius = (2.0 + 2.0 * torch.rand(n, generator=gen)) * size / 64
    amplitude = 0.25 + 0.15 * torch.rand(n, generator=gen)
    cx, cy, ax, ay = lungs[torch.arange(n), side].unbind(-1)
    norm = torch.stack([cx + ax * r * torch.cos(theta), cy + ay * r * torch.sin(theta)], -1)
    centre = (norm + 1) * size / 2 - 0.5  # normalised [-1, 1] -> pixel-centre coordinates
    pixels = torch.arange(size, dtype=torch.float32)
    d2 = (pixels[None, None, :] - centre[:, 0, None, None]).square() + (
        pixels[None, :, None] - centre[:, 1, None, None]
    ).square()
    bump = (1 - d2 / radius[:, None, None].square()).clamp_min(0).square()
    return amplitude[:, None, None] * bump, centre, radius


def _grid(size: int) -> tuple[Tensor, Tensor]:
    """Normalised pixel-centre coordinates ``y, x`` in (-1, 1), each ``[H, W]``."""
    t = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    return torch.meshgrid(t, t, indexing="ij")


def _soft_ellipse(
    x: Tensor, y: Tensor, cx: Tensor, cy: Tensor, ax: Tensor, ay: Tensor, sharpness: float
) -> Tensor:
    """``sigmoid(sharpness * (1 - rho))`` with ``rho`` the elliptic radius; ``[N, H, W]``."""
    rho = (
        ((x - cx[:, None, None]) / ax[:, None, None]).square()
        + ((y - cy[:, None, None]) / ay[:, None, None]).square()
    ).sqrt()
    return torch.sigmoid(sharpness * (1 - rho))


def _no_boxes() -> Tensor:
    return torch.zeros((0, 4), dtype=torch.long)
