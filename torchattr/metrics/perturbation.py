"""Perturbation metrics: noisy linear imputation, ROAD, deletion and insertion.

Each metric perturbs the images along the order a saliency map gives and records the model's
score of the explained class (see *Conventions > Targets* in the docs; ``target=None``: the class
predicted on the clean images) on every perturbed copy:

* :func:`noisy_linear_impute`: fill the masked pixels with the weighted mean of their 8
  neighbours (26 in volumes), solved jointly for all of them (one sparse system per image),
  plus noise;
* :func:`road` (Rong et al., ICML 2022): scores after imputing the most (MoRF) or least (LeRF)
  relevant pixels, for several fractions; :func:`road_summary` compares MoRF(p) with
  LeRF(1 - p), which impute as many pixels;
* :func:`deletion` / :func:`insertion` (RISE, Petsiuk et al. 2018): scores while pixels are
  replaced by a substrate, or restored onto it, ``step`` pixels at a time; curves and AUC.

Perturbed copies are laid out copy-major (copy ``k`` of sample ``b`` is row ``k B + b``) and go
through the model ``chunk_size`` rows at a time; random draws are taken per copy, in copy
order, so results do not depend on ``chunk_size``. Everything runs on the inputs' device, and
the model is left as it was (see *Conventions > Model state* in the docs).

Volumes work as images, voxel for pixel: inputs ``[B, C, D, H, W]``, maps ``[B, D, H, W]`` (or
``[B, C', D, H, W]``), masks ``[B, D, H, W]``; the model takes ``[N, C, D, H, W]``.
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.nn import functional as F

from torchattr._core.checks import (
    check_choice,
    check_finite,
    check_positive_int,
    check_scale,
    keywords,
)
from torchattr._core.chunking import CopyDraws, build_rows, row_index, row_ranges, stack_draws
from torchattr._core.progress import Progress, check_progress, reported
from torchattr._core.targets import (
    Target,
)
from torchattr.metrics._shared import (
    _check_chunk_size,
    _check_fractions,
    _check_images,
    _check_maps,
    _check_mask,
    _check_tolerance,
    _randn,
    _scoring,
    check_score,
    predicted_classes,
)

__all__ = [
    "FRACTIONS",
    "ORDERS",
    "CausalCurves",
    "RoadSummary",
    "deletion",
    "gaussian_blur",
    "insertion",
    "noisy_linear_impute",
    "paired_fractions",
    "road",
    "road_masks",
    "road_summary",
]

# Symmetric (p and 1 - p both present), so that road_summary can pair MoRF(p) with LeRF(1 - p).
FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
ORDERS = ("morf", "lerf")

_COARSEST = 64  # pixels (voxels) of the multigrid level solved directly (dense Cholesky)
_TIE_BREAK = 1e-4


@functools.cache
def _offsets(dims: int) -> tuple[tuple[int, ...], ...]:
    """The ``3^dims`` stencil offsets in row-major order; the centre is the middle one."""
    return tuple(itertools.product((-1, 0, 1), repeat=dims))


@functools.cache
def _edges(dims: int) -> tuple[tuple[int, ...], ...]:
    """One offset of every neighbour pair: those whose first non-zero component is +1."""
    return tuple(o for o in _offsets(dims) if next((c for c in o if c), 0) == 1)


def _weight(offset: Sequence[int]) -> float:
    """Neighbour weight ``1 / (6 m)``, ``m`` the offset's non-zero components (its squared
    length): 1/6 for a face (edge in 2-D), 1/12 for an edge (diagonal in 2-D), 1/18 for a 3-D
    corner."""
    return 1 / (6 * sum(c != 0 for c in offset))


def _centre(dims: int) -> int:
    return len(_offsets(dims)) // 2


# --------------------------------------------------------------------------------------------
# Noisy linear imputation
# --------------------------------------------------------------------------------------------


@keywords(renamed={"noise": "sigma"})
def noisy_linear_impute(
    inputs: Tensor,
    mask: Tensor,
    sigma: float = 0.01,
    generator: torch.Generator | None = None,
    *,
    tol: float = 1e-6,
    max_iter: int = 500,
) -> Tensor:
    """ROAD's noisy linear imputation: masked pixels become the mean of their neighbours.

    For every masked pixel ``i`` of image b and every channel,

        ``x_i = sum_j w_ij x_j / sum_j w_ij``,

    over the neighbours ``j`` of ``i`` inside the image. Images ``[B, C, H, W]``: the 8
    neighbours, ``w_ij = 1/6`` for the 4 edge and ``1/12`` for the 4 diagonal ones (neighbours
    outside the image are dropped and the remaining weights renormalised: ``sum_j w_ij`` is 1
    inside, 2/3 on an edge, 5/12 in a corner). Volumes ``[B, C, D, H, W]``: the 26 neighbours,
    ``w_ij = 1 / (6 |j - i|^2)``: ``1/6`` for the 6 face, ``1/12`` for the 12 edge and ``1/18``
    for the 8 corner neighbours (``sum_j w_ij = 1 + 1 + 4/9 = 22/9`` inside), dropped and
    renormalised the same way at the border. A volume of depth 1 has no neighbour in depth
    and reduces exactly to the 2-D stencil. The stencil is symmetric, so constants and linear
    ramps are reproduced exactly where the holes keep away from the border.

    Neighbours may themselves be masked, so the equations of all masked pixels of an image form
    one sparse symmetric positive definite system ``L_UU x_U = W_UK x_K`` (``U`` masked, ``K``
    kept; ``L`` the weighted graph Laplacian), with one right-hand side per channel. Then
    ``sigma * N(0, 1)`` is added to every masked value (kept pixels are returned unchanged).

    The systems of all images and channels are solved together on the inputs' device by
    conjugate gradients, preconditioned by a geometric multigrid V-cycle (Galerkin coarse
    operators, bi/trilinear transfer, damped Jacobi smoothing, a dense Cholesky solve on the
    coarsest grid), in float32 (float64 for float64 inputs); nothing leaves the device. The
    iterations stop when the estimated error of every system (``M^-1 r``) is below ``tol`` times
    the largest absolute kept value of its image and channel: typically 8-15 iterations, whatever
    the image size and the holes' shape, and errors ~1e-6 relative in float32. ``max_iter``
    bounds them (with a RuntimeWarning).

    Args:
        inputs: images ``[B, C, H, W]`` or volumes ``[B, C, D, H, W]``, floating point.
        mask: bool ``[B, H, W]`` (or ``[B, 1, H, W]``; volumes: ``[B, D, H, W]`` or
            ``[B, 1, D, H, W]``), True where a pixel is imputed. Every image must keep at least
            one pixel (with none, the system is singular).
        sigma: standard deviation of the added Gaussian noise, in the inputs' units (0: the
            plain linear imputation).
        generator: draws the noise, ``randn(inputs.shape, generator=generator)`` on the
            generator's device (moved to the inputs' device).
        tol: relative accuracy of the solve.
        max_iter: largest number of conjugate-gradient iterations.

    Returns:
        Shaped like the inputs, their dtype and device.

    Example::

        mask = torch.zeros(2, 32, 32, dtype=torch.bool)
        mask[:, 8:24, 8:24] = True
        filled = noisy_linear_impute(images, mask, sigma=0.0)   # a smooth fill of the square
    """
    images = _check_images(inputs)
    holes = _check_mask(mask, images)
    sigma = check_scale(sigma, "sigma")
    _check_tolerance(tol, max_iter)
    filled = _linear_fill(images, holes, tol, max_iter)
    if sigma > 0:
        draw = _randn(tuple(images.shape), filled.dtype, images.device, generator)
        filled = filled + sigma * draw * holes[:, None]
    return filled.to(images.dtype)


def _linear_fill(images: Tensor, holes: Tensor, tol: float, max_iter: int) -> Tensor:
    """The noiseless imputation: solve ``L_UU x_U = W_UK x_K`` for every image and channel.

    ``images [N, C, *S]`` (``S`` = ``(H, W)`` or ``(D, H, W)``), ``holes`` bool ``[N, *S]``
    (every image keeps a pixel). The conjugate-gradient products use the difference form
    ``(L v)_i = sum_j w_ij (v_i - v_j)`` (:func:`_laplacian`), whose rounding errors scale with
    the differences of neighbouring values rather than with the values: written as ``D v - W v``
    in float32, the rounding of ``D`` alone acts as a small mass term that large holes
    (ill-conditioned systems) amplify to ~1e-4; in difference form the solves are accurate to
    ~1e-6.
    """
    dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
    x = images.to(dtype)
    unknown = holes.to(dtype)[:, None]  # [N, 1, *S]
    known = x * (1 - unknown)
    if not bool(holes.any()):
        return x
    spatial = tuple(range(2, x.ndim))
    rhs = -_laplacian(known) * unknown  # sum_j w_ij x_j over the kept neighbours
    precondition = _multigrid(holes, _neighbour_weights(x.shape[2:], dtype, x.device))
    scale = known.abs().amax(dim=spatial, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
    solution = torch.zeros_like(x)
    residual = rhs
    z = precondition(residual)
    direction = z.clone()
    rz = _dot(residual, z)
    converged = False
    for _ in range(max_iter):
        product = _laplacian(direction).mul_(unknown)
        curvature = _dot(direction, product)
        step = torch.where(curvature > 0, rz / torch.where(curvature > 0, curvature, 1), 0)
        solution.addcmul_(step, direction)
        residual.addcmul_(step, product, value=-1)
        z = precondition(residual)
        # z = M^-1 r approximates the error A^-1 r: stop when it is small everywhere.
        error = z.abs().amax(dim=spatial, keepdim=True)
        if bool((error <= tol * scale).all()):
            converged = True
            break
        rz_next = _dot(residual, z)
        beta = torch.where(rz > 0, rz_next / torch.where(rz > 0, rz, 1), 0)
        rz = rz_next
        direction.mul_(beta).add_(z)
    if not converged:
        warnings.warn(
            f"noisy linear imputation did not reach tol={tol} in {max_iter} iterations "
            f"(estimated relative error {float((error / scale).max()):.1e})",
            RuntimeWarning,
            stacklevel=3,
        )
    return known + solution * unknown


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-image, per-channel inner products ``[N, C, 1, ...]`` of ``[N, C, *S]`` tensors."""
    out = torch.linalg.vecdot(a.flatten(2), b.flatten(2))
    return out.reshape(*out.shape, *([1] * (a.ndim - 2)))


def _neighbour_weights(shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> Tensor:
    """``[3^d - 1, *S]``: weight of neighbour k of every pixel, 0 where it lies outside."""
    dims = len(shape)
    grids = torch.meshgrid(*(torch.arange(n, device=device) for n in shape), indexing="ij")
    planes = []
    for k, offset in enumerate(_offsets(dims)):
        if k == _centre(dims):
            continue
        inside = torch.ones(tuple(shape), dtype=torch.bool, device=device)
        for grid, c, n in zip(grids, offset, shape):
            inside &= (grid + c >= 0) & (grid + c < n)
        planes.append(inside.to(dtype) * _weight(offset))
    return torch.stack(planes)


def _window(offset: Sequence[int], shape: Sequence[int]) -> tuple[slice, ...]:
    """The pixels ``i`` whose neighbour ``i + offset`` lies inside a grid of ``shape``."""
    return tuple(slice(max(0, -c), n - max(0, c)) for c, n in zip(offset, shape))


def _shift(window: tuple[slice, ...], offset: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(s.start + c, s.stop + c) for s, c in zip(window, offset))


def _shifted(v: Tensor) -> list[Tensor]:
    """The ``3^d`` views ``v[..., i + o]`` (zero outside) of ``v [N, C, *S]``, in
    :func:`_offsets` order."""
    dims = v.ndim - 2
    shape = v.shape[2:]
    padded = F.pad(v, (1, 1) * dims)
    return [
        padded[(..., *(slice(1 + c, 1 + c + n) for c, n in zip(o, shape)))] for o in _offsets(dims)
    ]


def _laplacian(v: Tensor) -> Tensor:
    """``(L v)_i = sum_j w_ij (v_i - v_j)`` over the in-image neighbours; ``v [N, C, *S]``.

    Summed edge by edge: each neighbour direction (one of each opposite pair) gives one
    difference array ``d = v_i - v_j`` (pairs inside the image only, so outside neighbours drop
    out), added to ``i`` and subtracted from ``j`` with the edge's weight.
    """
    shape = v.shape[2:]
    out = torch.zeros_like(v)
    for offset in _edges(v.ndim - 2):
        rows_i = (..., *_window(offset, shape))
        rows_j = (..., *_shift(_window(offset, shape), offset))
        difference = v[rows_i] - v[rows_j]
        out[rows_i].add_(difference, alpha=_weight(offset))
        out[rows_j].sub_(difference, alpha=_weight(offset))
    return out


# --------------------------------------------------------------------------------------------
# Multigrid preconditioner
# --------------------------------------------------------------------------------------------
#
# An operator on a grid of shape S (2 or 3 dimensions) is a 3^d-point stencil
# T [N, 3^d, *S]: (A v)_i = sum_k T_k,i v_{i+o_k} (zero outside the grid). Pixels outside the
# unknown set have the identity row, and vectors are zero there. Coarse grids take every other
# pixel along every dimension (ceil(n/2)); a coarse pixel is active when its fine pixel is, so
# the prolongation P (bi/trilinear interpolation, masked to the active pixels at both ends) has
# full column rank and A_c = P^T A P is again SPD and 3^d-point.


@dataclass(frozen=True)
class _Level:
    """One grid of the hierarchy: its operator, active pixels and inverse diagonal."""

    active: Tensor  # [N, 1, *S] float 0/1
    inverse_diagonal: Tensor  # [N, 1, *S]
    stencil: Tensor | None = None  # [N, 3^d, *S] on coarse grids
    diagonal: Tensor | None = None  # [*S] on the finest grid: sum of in-image weights

    def residual(self, r: Tensor, v: Tensor) -> Tensor:
        """``r - A v`` for vectors ``[N, C, *S]`` that vanish outside the active pixels."""
        if self.stencil is not None:
            return r - _apply(self.stencil, v)
        # The finest grid's weights are constants (zero padding drops outside neighbours):
        # r - A v = m (r - D v + sum_j w_j v_j).
        dims = v.ndim - 2
        out = torch.addcmul(r, self.diagonal, v, value=-1)
        for k, (offset, view) in enumerate(zip(_offsets(dims), _shifted(v))):
            if k != _centre(dims):
                out.add_(view, alpha=_weight(offset))
        return out.mul_(self.active)


class _Multigrid:
    """A symmetric V-cycle: one damped Jacobi sweep before and after each coarse correction."""

    omega = 0.8

    def __init__(self, levels: list[_Level], cholesky: Tensor) -> None:
        self.levels = levels
        self.cholesky = cholesky  # [N, n, n] float64, the coarsest operator's factor

    def __call__(self, residual: Tensor) -> Tensor:
        return self._cycle(0, residual)

    def _cycle(self, depth: int, r: Tensor) -> Tensor:
        level = self.levels[depth]
        if depth == len(self.levels) - 1:
            n, c = r.shape[:2]
            rhs = r.reshape(n, c, -1).transpose(1, 2).double()
            z = torch.cholesky_solve(rhs, self.cholesky)
            return z.transpose(1, 2).reshape(r.shape).to(r.dtype) * level.active
        smooth = self.omega * level.inverse_diagonal
        z = smooth * r
        coarse_r = _restrict(level.residual(r, z), level.active)
        coarse = self.levels[depth + 1]
        z += _prolong(self._cycle(depth + 1, coarse_r.mul_(coarse.active)), level.active)
        return z.addcmul_(smooth, level.residual(r, z))


def _multigrid(holes: Tensor, weights: Tensor) -> _Multigrid:
    """The V-cycle preconditioner of the imputation systems of ``holes [N, *S]``."""
    dims = holes.ndim - 1
    centre = _centre(dims)
    coarser = (slice(None), slice(None), *([slice(None, None, 2)] * dims))
    active = holes.to(weights.dtype)[:, None]
    diagonal = weights.sum(dim=0)
    stencil = _fine_stencil(active, weights)
    levels = [_Level(active, 1 / stencil[:, centre : centre + 1], diagonal=diagonal)]
    while math.prod(stencil.shape[2:]) > _COARSEST:
        coarse_active = active[coarser]
        stencil = _galerkin(stencil, active, coarse_active)
        active = coarse_active
        levels.append(_Level(active, 1 / stencil[:, centre : centre + 1], stencil=stencil))
    return _Multigrid(levels, torch.linalg.cholesky(_dense(stencil.double())))


def _fine_stencil(active: Tensor, weights: Tensor) -> Tensor:
    """Stencil of ``L_UU`` (identity outside ``U``) from ``active [N, 1, *S]``."""
    centre = _centre(active.ndim - 2)
    planes = []
    neighbour = 0
    for k, view in enumerate(_shifted(active)):
        if k == centre:
            planes.append(weights.sum(dim=0) * active + (1 - active))
        else:
            planes.append(-weights[neighbour] * active * view)
            neighbour += 1
    return torch.cat(planes, dim=1)


def _apply(stencil: Tensor, v: Tensor) -> Tensor:
    """``A v`` for a stencil ``[N, 3^d, *S]`` and vectors ``[N, C, *S]``."""
    out = torch.zeros_like(v)
    for k, view in enumerate(_shifted(v)):
        out.addcmul_(stencil[:, k : k + 1], view)
    return out


def _prolong(coarse: Tensor, active: Tensor) -> Tensor:
    """Bi/trilinear interpolation ``[N, C, *S_c] -> [N, C, *S]``, masked by ``active``.

    Coarse pixel ``I`` sits on fine pixel ``2I``; fine pixels between two coarse ones take their
    mean, and the last fine pixel of an even size copies the last coarse one (so that constants,
    the slowest error near a border the holes touch, are interpolated exactly).
    """
    fine = coarse
    for dim, size in enumerate(active.shape[2:], start=2):
        fine = _interpolate(fine, dim - active.ndim, size)
    return fine * active


def _interpolate(v: Tensor, dim: int, size: int) -> Tensor:
    """Along ``dim`` (< 0): ``out_2I = v_I``, ``out_2I+1 = (v_I + v_I+1) / 2`` (``v_I`` past the
    last coarse pixel), ``size`` long."""
    n = v.shape[dim]
    shape = list(v.shape)
    shape[dim] = 2 * n
    out = v.new_empty(shape)
    pairs = out.unflatten(dim, (n, 2))  # views: the pair axis right after dim
    pairs.select(dim, 0).copy_(v)
    odd = pairs.select(dim, 1)
    torch.add(v.narrow(dim, 0, n - 1), v.narrow(dim, 1, n - 1), out=odd.narrow(dim, 0, n - 1))
    odd.narrow(dim, 0, n - 1).mul_(0.5)
    odd.narrow(dim, n - 1, 1).copy_(v.narrow(dim, n - 1, 1))  # past the last: constant
    return out.narrow(dim, 0, size)


def _restrict(fine: Tensor, active: Tensor) -> Tensor:
    """``P^T`` without the coarse mask: ``[N, C, *S] -> [N, C, *ceil(S/2)]``."""
    out = fine * active
    for dim in range(2, fine.ndim):
        out = _fold(out, dim - fine.ndim)
    return out


def _fold(v: Tensor, dim: int) -> Tensor:
    """Transpose of :func:`_interpolate` along ``dim``: ``out_I = v_2I + (v_2I-1 + v_2I+1) / 2``."""
    coarse = (v.shape[dim] + 1) // 2
    out = _every_other(v, dim, 0).clone()  # v_2I
    odd = _every_other(v, dim, 1)  # v_2I+1, floor(size / 2) of them
    out.narrow(dim, 0, odd.shape[dim]).add_(odd, alpha=0.5)
    out.narrow(dim, 1, coarse - 1).add_(odd.narrow(dim, 0, coarse - 1), alpha=0.5)
    if odd.shape[dim] == coarse:  # an even size: the last fine pixel copies the last coarse one
        out.narrow(dim, coarse - 1, 1).add_(odd.narrow(dim, coarse - 1, 1), alpha=0.5)
    return out


def _every_other(v: Tensor, dim: int, start: int) -> Tensor:
    index = [slice(None)] * v.ndim
    index[dim] = slice(start, None, 2)
    return v[tuple(index)]


def _galerkin(stencil: Tensor, active: Tensor, coarse_active: Tensor) -> Tensor:
    """``P^T A P`` as a coarse ``3^d``-point stencil, by probing with ``3^d`` interleaved
    coarse vectors.

    Probe ``q`` is 1 on the active coarse pixels ``I`` with ``I = q mod 3`` (componentwise).
    Row ``J`` of ``A_c`` has its non-zeros at ``J + o``, ``o`` in the ``3^d`` offsets, which all
    differ mod 3: so ``(A_c probe_q)_J`` is the single entry ``A_c[J, J + o]`` with
    ``J + o = q mod 3``.
    """
    n = stencil.shape[0]
    shape = coarse_active.shape[2:]
    dims = len(shape)
    grids = torch.meshgrid(
        *(torch.arange(size, device=stencil.device) for size in shape), indexing="ij"
    )

    def residue(offset: Sequence[int]) -> Tensor:  # [*S_c], the probe index of J + offset
        out = torch.zeros(tuple(shape), dtype=torch.long, device=stencil.device)
        for grid, c in zip(grids, offset):
            out = out * 3 + (grid + c) % 3
        return out

    count = 3**dims
    which = torch.arange(count, device=stencil.device).view(count, *([1] * dims))
    probes = (residue((0,) * dims) == which).to(stencil.dtype)
    probes = probes[None] * coarse_active  # [N, 3^d, *S_c]
    response = _restrict(_apply(stencil, _prolong(probes, active)), active) * coarse_active
    planes = [response.gather(1, residue(offset).expand(n, 1, *shape)) for offset in _offsets(dims)]
    coarse = torch.cat(planes, dim=1)
    coarse[:, _centre(dims)] += 1 - coarse_active[:, 0]
    return coarse


def _dense(stencil: Tensor) -> Tensor:
    """The matrix ``[N, |S|, |S|]`` of a stencil ``[N, 3^d, *S]`` (row-major pixel order)."""
    n = stencil.shape[0]
    shape = stencil.shape[2:]
    size = math.prod(shape)
    index = torch.arange(size, device=stencil.device).reshape(shape)
    matrix = stencil.new_zeros(n, size, size)
    for k, offset in enumerate(_offsets(len(shape))):
        window = _window(offset, shape)
        rows = index[window].reshape(-1)
        cols = index[_shift(window, offset)].reshape(-1)
        matrix[:, rows, cols] = stencil[(slice(None), k, *window)].reshape(n, -1)
    return matrix


# --------------------------------------------------------------------------------------------
# ROAD
# --------------------------------------------------------------------------------------------


class RoadSummary(NamedTuple):
    """Summary of ROAD curves (see :func:`road_summary`).

    ``gap [P] = (LeRF(1 - p) - MoRF(p)) / 2`` per MoRF fraction ``p``; ``per_image [B]``: the gap
    averaged over the fractions; ``score = mean(per_image)``, higher is better.

    Example::

        summary = ta.metrics.road_summary(morf, lerf)
        summary.score                # one number per method
    """

    morf: Tensor  # [P] mean MoRF score per fraction (lower is better)
    lerf: Tensor  # [P] mean LeRF score per fraction (higher is better)
    gap: Tensor  # [P] (LeRF(1 - p) - MoRF(p)) / 2 per MoRF fraction p
    per_image: Tensor  # [B] (LeRF(1 - p) - MoRF(p)) / 2 averaged over the fractions, per image
    score: Tensor  # [] the mean of per_image: one number per method (higher is better)


@keywords(renamed={"noise": "sigma", "batch_size": "chunk_size"})
def road(
    model: Callable[..., Any],
    inputs: Tensor,
    saliency: Tensor,
    target: Target = None,
    *,
    fractions: Sequence[float] = FRACTIONS,
    order: str = "morf",
    sigma: float = 0.01,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
    score: str = "softmax",
    labels: Tensor | None = None,
    tol: float = 1e-6,
    max_iter: int = 500,
    forward_kwargs: Mapping[str, Any] | None = None,
    progress: Progress = False,
) -> Tensor:
    """ROAD, RemOve And Debias (Rong et al., ICML 2022): scores after imputing ranked pixels.

    Pixels are ranked by the map (channels summed), min-max normalised per image plus a fixed
    tie-breaker ``1e-4 * N(0, 1)`` (one ``[H, W]`` or ``[D, H, W]`` draw shared by all images, so
    that maps with many equal values still remove exactly the requested fraction); see
    :func:`road_masks`. With ``n = H W`` (``D H W``) and ``k_p = floor(p n)``:

    * ``order="morf"``: MoRF(p) imputes the ``k_p`` most relevant pixels (lower is better);
    * ``order="lerf"``: LeRF(p) keeps the ``k_p`` most relevant pixels and imputes the other
      ``n - k_p`` (higher is better), as in the reference implementation.

    MoRF(p) and LeRF(1 - p) impute the same number of pixels (exactly when ``p n`` is an integer,
    else one more for LeRF): :func:`road_summary` pairs them.

    Imputation is :func:`noisy_linear_impute` (noise ``sigma * N(0, 1)``, ``sigma`` in the
    inputs' units; ``noise`` is its deprecated former name), and the score is the
    model's output for the target on the imputed image: ``score="softmax"`` (the default, as the
    ROAD paper) the output after a softmax over the classes (a sigmoid for single-logit
    models), ``"sigmoid"`` after a sigmoid per output (multi-label models), ``"logit"`` the raw
    output (``"probability"``: the deprecated name of ``"softmax"``) -- applied before the
    target, so a callable target receives probabilities. ``target=None`` explains the class
    predicted on the clean image.

    With ``labels`` (LongTensor ``[B]`` of class indices), ROAD accuracy instead, as the paper
    reports it: entry ``[b, p]`` is 1.0 where the model still classifies the imputed copy as
    ``labels[b]`` (``argmax`` of ``[N, C]`` outputs; ``z > 0`` is class 1 for a single logit
    ``z``), else 0.0; ``.mean(0)`` is the accuracy per fraction. ``score`` and ``target`` then
    play no part beyond the checks.

    The ``P x B`` imputed copies (fraction-major) are imputed and scored ``chunk_size`` at a
    time (default B), on the inputs' device. Random draws come from ``generator``: first the
    tie-breaker, then the noise of each fraction, ``randn([B, C, H, W])``, in order.

    Args:
        model: maps images ``[N, C, H, W]`` (volumes ``[N, C, D, H, W]``) to outputs
            ``[N, classes]`` (or ``[N]``).
        inputs: images ``[B, C, H, W]`` or volumes ``[B, C, D, H, W]`` (voxels for pixels
            throughout, the 26-neighbour imputation of :func:`noisy_linear_impute`).
        saliency: maps ``[B, H, W]`` or ``[B, C', H, W]`` (summed over C'; volumes
            ``[B, D, H, W]`` or ``[B, C', D, H, W]``); any sign (only the order matters), finite.
        target: None, an int, a LongTensor ``[B]`` or a callable (see
            *Conventions > Targets* in the docs).
        fractions: P values in (0, 1).
        order: ``"morf"`` or ``"lerf"``.
        score: ``"softmax"`` (default), ``"sigmoid"`` or ``"logit"``.
        labels: None, or the true classes ``[B]``: return ROAD accuracy (0/1 per copy).
        forward_kwargs: keyword arguments passed to every model call (tensors with leading
            dimension B follow their image into the imputed copies).
        progress: True for a tqdm bar (when installed and stderr is a terminal) or a callable
            ``(done, total)`` called after each model call with the imputed copies done
            (``total = P B``).

    Returns:
        Scores ``[B, P]`` (float32, or float64 for float64 outputs); with ``labels``, 0/1
        correctness ``[B, P]`` (float32).

    Example::

        morf = road(model, images, maps, order="morf")
        lerf = road(model, images, maps, order="lerf")
        road_summary(morf, lerf).score     # mean (LeRF(1 - p) - MoRF(p)) / 2, higher is better
    """
    score = check_score(score)
    images = _check_images(inputs)
    maps = _check_maps(saliency, images)
    fractions = _check_fractions(fractions)
    check_choice(order, "order", ORDERS)
    labels = _check_labels(labels, images)
    sigma = check_scale(sigma, "sigma")
    _check_tolerance(tol, max_iter)
    check_progress(progress)
    batch = images.shape[0]
    counts = _imputed_counts(fractions, maps[0].numel(), order)
    chunk_size = _check_chunk_size(chunk_size, batch)
    ranks = _relevance_ranks(maps, generator)
    noise_draws = CopyDraws(
        lambda: _randn(tuple(images.shape), torch.float32, images.device, generator)
    )
    result = None
    with _scoring(model, images, target, score, chunk_size, forward_kwargs) as scorer:
        rows = len(fractions) * batch
        for start, stop in reported(row_ranges(rows, chunk_size), progress, rows, "road"):
            fraction, sample = row_index(start, stop, batch, images.device)
            count = counts.to(images.device)[fraction]
            holes = _holes(ranks[sample], count, order)
            filled = _linear_fill(images[sample], holes, tol, max_iter)
            if sigma > 0:
                draws = build_rows(start, stop, batch, lambda c, s: stack_draws(noise_draws, c, s))
                filled = filled + sigma * draws.to(filled.dtype) * holes[:, None]
            if labels is None:
                scores = scorer(filled.to(images.dtype), sample)
            else:
                output = scorer.forward(filled.to(images.dtype), sample)
                scores = (predicted_classes(output) == labels[sample]).float()
            if result is None:
                result = scores.new_zeros(len(fractions) * batch)
            result[start:stop] = scores
    return result.reshape(len(fractions), batch).T


def road_masks(
    saliency: Tensor,
    fractions: Sequence[float] = FRACTIONS,
    order: str = "morf",
    generator: torch.Generator | None = None,
) -> Tensor:
    """The pixels :func:`road` imputes: bool ``[B, P, H, W]``, True = imputed.

    Maps ``[B, H, W]`` or ``[B, C, H, W]`` are images; volumes ``[B, C, D, H, W]`` (a channel
    dimension is needed, ``C = 1`` for one map: a 4-D map is an image's) give
    ``[B, P, D, H, W]``.

    ``s = sum_c S`` is min-max normalised per image, ``(s - min s) / (max s - min s)`` (0 for
    a constant map), and ``1e-4 * N(0, 1)`` (one ``[H, W]`` draw from ``generator``) is added;
    pixels are ranked by the result, highest first. MoRF(p) marks the ``floor(p H W)``
    highest-ranked pixels, LeRF(p) all but them. Exactly that many pixels are marked whatever
    the ties in ``S``: the tie-breaker orders equal values randomly but the same way for every
    image and fraction.

    Example::

        masks = road_masks(maps, fractions=(0.2, 0.4), generator=torch.Generator().manual_seed(0))
        masks.flatten(2).sum(-1)   # [[0.2 H W, 0.4 H W], ...] (floored)
    """
    maps = _check_maps(saliency, None)
    fractions = _check_fractions(fractions)
    check_choice(order, "order", ORDERS)
    counts = _kept_counts(fractions, maps[0].numel()).to(maps.device)
    ranks = _relevance_ranks(maps, generator)
    return _holes(ranks[:, None], counts.view(1, -1, *([1] * (maps.ndim - 1))), order)


def road_summary(morf: Tensor, lerf: Tensor, fractions: Sequence[float] = FRACTIONS) -> RoadSummary:
    """Summarise ROAD curves, comparing like with like: ``(LeRF(1 - p) - MoRF(p)) / 2``.

    ``morf`` and ``lerf`` are :func:`road` scores (or accuracies) ``[B, P]``, both computed at
    ``fractions`` (P values; default :data:`FRACTIONS`, as :func:`road`'s). MoRF(p) imputes the
    ``floor(p n)`` most relevant pixels, LeRF(q) all but the ``floor(q n)`` most relevant, so
    MoRF(p) and LeRF(1 - p) impute the same number of pixels (``p n`` integer; else LeRF one
    more): the two copies differ only in *which* pixels the map picks, and a random map scores
    0 in expectation. (LeRF(p) imputes ``1 - p`` of the image: pairing it with MoRF(p), as
    before, biases the score whenever the fractions are not symmetric.) Hence ``fractions``
    must be symmetric: ``1 - p`` must be among them for every ``p`` (within 1e-6), else a
    ValueError names the unpaired fractions.

    Returns the mean curves ``[P]`` over the images (indexed by ``fractions``), the per-fraction
    ``gap[k] = mean_b (LeRF_b(1 - p_k) - MoRF_b(p_k)) / 2`` (indexed by the MoRF fraction
    ``p_k``), the per-image ``(LeRF(1 - p) - MoRF(p)) / 2`` averaged over the fractions ``[B]``,
    and its mean over the images (a scalar tensor; higher is better: removing the least relevant
    pixels hurts the model less than removing as many of the most relevant ones).

    Example::

        summary = road_summary(morf, lerf)                       # the default fractions
        summary = road_summary(morf, lerf, fractions=(0.2, 0.5, 0.8))
        summary.score, summary.morf, summary.lerf
    """
    for name, value in (("morf", morf), ("lerf", lerf)):
        if not isinstance(value, Tensor) or value.ndim != 2:
            shape = list(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"{name} must be ROAD scores [B, P], got {shape}")
    if morf.shape != lerf.shape:
        raise ValueError(
            f"morf has shape {list(morf.shape)} but lerf has {list(lerf.shape)}: "
            "summarise curves of the same images and fractions"
        )
    fractions = _check_fractions(fractions)
    if len(fractions) != morf.shape[1]:
        raise ValueError(
            f"fractions has {len(fractions)} values but the curves have {morf.shape[1]} "
            "columns: pass the fractions given to road"
        )
    partner = paired_fractions(fractions)
    half = (lerf[:, partner] - morf) / 2
    per_image = half.mean(dim=1)
    return RoadSummary(
        morf.mean(dim=0), lerf.mean(dim=0), half.mean(dim=0), per_image, per_image.mean()
    )


def paired_fractions(fractions: Sequence[float]) -> list[int]:
    """For each fraction ``p_k``, the index ``j`` with ``p_j = 1 - p_k`` (within 1e-6).

    Raises a ValueError naming the fractions whose ``1 - p`` is missing.

    Example::

        paired_fractions((0.2, 0.5, 0.8))   # [2, 1, 0]
    """
    fractions = _check_fractions(fractions)
    partner, unpaired = [], []
    for p in fractions:
        matches = [j for j, q in enumerate(fractions) if abs(p + q - 1) <= 1e-6]
        if matches:
            partner.append(matches[0])
        else:
            unpaired.append(p)
    if unpaired:
        raise ValueError(
            f"fractions {unpaired} have no partner 1 - p among {list(fractions)}: the ROAD "
            "summary pairs MoRF(p) with LeRF(1 - p) (the same number of imputed pixels); "
            f"add {[round(1 - p, 6) for p in unpaired]} or use symmetric fractions"
        )
    return partner


def _check_labels(labels: Any, images: Tensor) -> Tensor | None:
    """None, or integer class labels ``[B]`` on the images' device."""
    if labels is None:
        return None
    if not isinstance(labels, Tensor) or labels.dtype.is_floating_point or labels.is_complex():
        kind = f"dtype {labels.dtype}" if isinstance(labels, Tensor) else type(labels).__name__
        raise TypeError(f"labels must be an integer tensor [B] of class indices, got {kind}")
    if labels.dtype == torch.bool or tuple(labels.shape) != (images.shape[0],):
        raise ValueError(
            f"labels has shape {list(labels.shape)} and dtype {labels.dtype}: expected integer "
            f"class indices [B] = [{images.shape[0]}]"
        )
    return labels.to(images.device)


def _relevance_ranks(maps: Tensor, generator: torch.Generator | None) -> Tensor:
    """Rank ``[B, *S]`` of every pixel (0 = most relevant), ROAD's normalisation + tie-breaker."""
    flat = maps.flatten(1)
    low, high = flat.amin(dim=1, keepdim=True), flat.amax(dim=1, keepdim=True)
    spread = high - low
    normalised = torch.where(spread > 0, (flat - low) / torch.where(spread > 0, spread, 1), 0)
    tie_break = _TIE_BREAK * _randn((flat.shape[1],), flat.dtype, maps.device, generator)
    order = (normalised + tie_break).argsort(dim=1, descending=True, stable=True)
    return _ranks_from_order(order).reshape(maps.shape)


def _ranks_from_order(order: Tensor) -> Tensor:
    """Inverse permutation per row: ``rank[order[j]] = j``."""
    positions = torch.arange(order.shape[1], device=order.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions)


def _kept_counts(fractions: tuple[float, ...], n: int) -> Tensor:
    """``floor(p n)`` per fraction (robust to ``p n`` landing just below an integer)."""
    return torch.tensor([math.floor(p * n + 1e-7) for p in fractions], dtype=torch.long)


def _imputed_counts(fractions: tuple[float, ...], n: int, order: str) -> Tensor:
    """``k_p`` for MoRF; after checking that LeRF keeps at least one pixel at every fraction."""
    kept = _kept_counts(fractions, n)
    if order == "lerf" and bool((kept == 0).any()):
        p = fractions[int((kept == 0).nonzero()[0])]
        raise ValueError(
            f"fractions: LeRF at {p} keeps floor({p} * {n}) = 0 pixels of a {n}-pixel image, "
            "and an image with no pixel left cannot be imputed; use larger fractions"
        )
    return kept


def _holes(ranks: Tensor, counts: Tensor, order: str) -> Tensor:
    """Pixels to impute: MoRF the ``counts`` best ranked, LeRF the others (counts broadcast)."""
    if counts.ndim == 1:
        counts = counts.view(-1, *([1] * (ranks.ndim - 1)))
    return ranks < counts if order == "morf" else ranks >= counts


# --------------------------------------------------------------------------------------------
# Deletion and insertion (RISE)
# --------------------------------------------------------------------------------------------


class CausalCurves(NamedTuple):
    """Deletion or insertion curves and their areas (see :func:`deletion`).

    ``curves [B, n + 1]``: the score after ``0, 1, ..., n`` steps; ``auc [B]``: the trapezoid
    area ``(sum_i c_i - c_0 / 2 - c_n / 2) / n``.

    Example::

        curves, auc = ta.metrics.deletion(model, images, maps, labels)   # auc: lower is better
    """

    curves: Tensor  # [B, n + 1] score after 0, 1, ..., n steps
    auc: Tensor  # [B] (sum - first / 2 - last / 2) / n


@keywords(renamed={"batch_size": "chunk_size"})
def deletion(
    model: Callable[..., Any],
    inputs: Tensor,
    saliency: Tensor,
    target: Target = None,
    *,
    step: int | None = None,
    substrate: Any = 0.0,
    chunk_size: int | None = None,
    score: str = "softmax",
    forward_kwargs: Mapping[str, Any] | None = None,
    progress: Progress = False,
) -> CausalCurves:
    """Deletion metric (RISE, Petsiuk et al. 2018): the score while the most salient pixels go.

    Pixels are ordered by the map (channels summed), highest first; equal values keep their
    row-major order (a stable sort), so the result is deterministic. Copy ``k = 0..n``,
    ``n = ceil(H W / step)``, is the image with its first ``min(k step, H W)`` pixels (all
    channels) replaced by the substrate: copy 0 is the image, copy n the substrate. The curve
    is the score of each copy, and

        ``AUC = (sum_k s_k - s_0 / 2 - s_n / 2) / n``

    the trapezoidal area over ``[0, 1]``. Lower is better: a good map finds the pixels without
    which the class vanishes.

    Args:
        model: maps images ``[N, C, H, W]`` (volumes ``[N, C, D, H, W]``) to outputs
            ``[N, classes]`` (or ``[N]``).
        inputs: images ``[B, C, H, W]`` or volumes ``[B, C, D, H, W]`` (voxels for pixels).
        saliency: maps ``[B, H, W]`` or ``[B, C', H, W]`` (summed over C'; volumes
            ``[B, D, H, W]`` or ``[B, C', D, H, W]``); any sign, finite.
        target: None (the class predicted on the clean images), an int, a LongTensor ``[B]``,
            or a callable.
        step: pixels per step (default ``W``, one image row's worth, as RISE's 224 for 224 x 224
            images; for volumes ``H W``, one slice's worth, so ``n = D``).
        substrate: what replaces the pixels: a number, a tensor broadcastable to the inputs,
            ``"blur"`` (:func:`gaussian_blur` of the image) or a callable ``images -> tensor``
            of their shape. Default 0.
        chunk_size: copies per model call (default B).
        progress: True for a tqdm bar (when installed and stderr is a terminal) or a callable
            ``(done, total)`` called after each model call with the copies done
            (``total = (n + 1) B``).
        score: ``"softmax"`` (over the classes, a sigmoid for a single logit; the default, as
            in RISE), ``"sigmoid"`` (per output, for multi-label models) or ``"logit"``;
            ``"probability"`` is the deprecated name of ``"softmax"``.
        forward_kwargs: keyword arguments passed to every model call (tensors with leading
            dimension B follow their image into the copies).

    Returns:
        ``CausalCurves(curves [B, n + 1], auc [B])``.

    Example::

        curves, auc = deletion(model, images, maps, step=64)
    """
    return _causal(
        model,
        inputs,
        saliency,
        target,
        step,
        substrate,
        chunk_size,
        score,
        False,
        forward_kwargs,
        progress,
    )


@keywords(renamed={"batch_size": "chunk_size"})
def insertion(
    model: Callable[..., Any],
    inputs: Tensor,
    saliency: Tensor,
    target: Target = None,
    *,
    step: int | None = None,
    substrate: Any = "blur",
    chunk_size: int | None = None,
    score: str = "softmax",
    forward_kwargs: Mapping[str, Any] | None = None,
    progress: Progress = False,
) -> CausalCurves:
    """Insertion metric (RISE): the score while the most salient pixels come back.

    Copy ``k = 0..n`` is the substrate (by default the image blurred by a Gaussian of size 11
    and sigma 5, :func:`gaussian_blur`) with the first ``min(k step, H W)`` pixels of the
    saliency order restored from the image: copy 0 is the substrate, copy n the image. Curves,
    order, ties and ``AUC = (sum - first / 2 - last / 2) / n`` as in :func:`deletion`. Higher
    is better.

    Example::

        curves, auc = insertion(model, images, maps, step=64)
    """
    return _causal(
        model,
        inputs,
        saliency,
        target,
        step,
        substrate,
        chunk_size,
        score,
        True,
        forward_kwargs,
        progress,
    )


def gaussian_blur(images: Tensor, size: int = 11, sigma: float = 5.0) -> Tensor:
    """Separable Gaussian blur of ``[B, C, H, W]`` images or ``[B, C, D, H, W]`` volumes
    (RISE's insertion substrate).

    The kernel is ``exp(-t^2 / (2 sigma^2))`` for ``t = -(size // 2)..size // 2``, normalised
    to sum 1, applied along every spatial dimension in turn; borders are padded by replicating
    the edge pixels, so a constant image stays constant (RISE pads with zeros, which darkens
    borders).

    Example::

        blurred = ta.metrics.gaussian_blur(images, size=11, sigma=5.0)   # [B, C, H, W]
        curves, auc = ta.metrics.insertion(model, images, maps, substrate=blurred)
    """
    images = _check_images(images, "images")
    size = check_positive_int(size, "size")
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0:
        raise ValueError(f"sigma must be a number > 0, got {sigma!r}")
    dtype = torch.promote_types(images.dtype, torch.float32)
    t = torch.arange(size, dtype=dtype, device=images.device) - size // 2
    kernel = torch.exp(-(t**2) / (2 * float(sigma) ** 2))
    kernel = kernel / kernel.sum()
    dims = images.ndim - 2
    conv = F.conv2d if dims == 2 else F.conv3d
    flat = images.to(dtype).reshape(-1, 1, *images.shape[2:])
    left, right = size // 2, size - 1 - size // 2
    for axis in range(dims):  # the last axis first, as F.pad lists it
        pad = [0, 0] * dims
        pad[2 * axis : 2 * axis + 2] = [left, right]
        shape = [1] * dims
        shape[dims - 1 - axis] = size
        flat = conv(F.pad(flat, pad, mode="replicate"), kernel.view(1, 1, *shape))
    return flat.reshape(images.shape).to(images.dtype)


def _causal(
    model: Callable[..., Any],
    inputs: Tensor,
    saliency: Tensor,
    target: Target,
    step: int | None,
    substrate: Any,
    chunk_size: int | None,
    score: str,
    insert: bool,
    forward_kwargs: Mapping[str, Any] | None = None,
    progress: Progress = False,
) -> CausalCurves:
    """Deletion (``insert=False``) or insertion curves; see :func:`deletion`."""
    score = check_score(score, stacklevel=5)
    check_progress(progress)
    images = _check_images(inputs)
    maps = _check_maps(saliency, images)
    batch = images.shape[0]
    pixels = maps[0].numel()
    step = math.prod(images.shape[3:]) if step is None else check_positive_int(step, "step")
    steps = -(-pixels // step)
    chunk_size = _check_chunk_size(chunk_size, batch)
    background = _substrate(substrate, images)
    order = maps.flatten(1).argsort(dim=1, descending=True, stable=True)
    ranks = _ranks_from_order(order).reshape(maps.shape)
    first, second = (background, images) if insert else (images, background)

    def make(copies: slice, samples: slice) -> Tensor:
        done = torch.arange(copies.start, copies.stop, device=images.device) * step
        done = done.view(-1, *([1] * maps.ndim))
        changed = ranks[samples][None] < done  # [copies, samples, *S]
        return torch.where(changed[:, :, None], second[samples], first[samples])

    curves = None
    with _scoring(model, images, target, score, chunk_size, forward_kwargs) as scorer:
        rows = (steps + 1) * batch
        name = "insertion" if insert else "deletion"
        for start, stop in reported(row_ranges(rows, chunk_size), progress, rows, name):
            _, sample = row_index(start, stop, batch, images.device)
            scores = scorer(build_rows(start, stop, batch, make), sample)
            if curves is None:
                curves = scores.new_zeros((steps + 1) * batch)
            curves[start:stop] = scores
    curves = curves.reshape(steps + 1, batch).T
    auc = (curves.sum(dim=1) - curves[:, 0] / 2 - curves[:, -1] / 2) / steps
    return CausalCurves(curves, auc)


def _substrate(substrate: Any, images: Tensor) -> Tensor:
    """The substrate as a tensor shaped like ``images``."""
    if isinstance(substrate, str):
        if substrate != "blur":
            raise ValueError(
                f"unknown substrate {substrate!r}: expected 'blur', a number, a tensor or a "
                "callable"
            )
        return gaussian_blur(images)
    if isinstance(substrate, bool):
        raise TypeError("substrate must be a number, a tensor, 'blur' or a callable, got a bool")
    if isinstance(substrate, (int, float)):
        return torch.full_like(images, float(substrate))
    if callable(substrate):
        substrate = substrate(images)
        if not isinstance(substrate, Tensor) or substrate.shape != images.shape:
            shape = (
                list(substrate.shape) if isinstance(substrate, Tensor) else type(substrate).__name__
            )
            raise ValueError(
                f"the substrate callable returned {shape}: expected a tensor shaped like "
                f"inputs, {list(images.shape)}"
            )
    if not isinstance(substrate, Tensor):
        raise TypeError(
            "substrate must be a number, a tensor, 'blur' or a callable, "
            f"got {type(substrate).__name__}"
        )
    try:
        out = torch.broadcast_to(
            substrate.to(device=images.device, dtype=images.dtype), images.shape
        )
    except RuntimeError:
        raise ValueError(
            f"substrate has shape {list(substrate.shape)}: expected a tensor broadcastable to "
            f"inputs {list(images.shape)}"
        ) from None
    check_finite([out], ["substrate"])
    return out
