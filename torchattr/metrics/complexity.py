"""Complexity of explanations: how concentrated the attribution mass is (no model calls).

* :func:`sparseness` (Chalasani et al. 2020): the Gini index of ``|Phi|`` per sample, in
  [0, 1]; higher is sparser (better: fewer features carry the explanation).
* :func:`complexity` (Bhatt et al. 2020): the entropy of ``|Phi| / sum |Phi|`` per sample, in
  [0, log F]; lower is simpler (better).

Both read one sample's attributions as a flat vector of ``F`` features (every element of a
tensor; the elements of all entries, concatenated, for a tuple or a dict). Both are NaN for an
all-zero attribution, where the distribution is undefined (never 0).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from torchattr._core.checks import check_finite

__all__ = ["complexity", "sparseness"]


def sparseness(attributions: Tensor | tuple[Tensor, ...] | Mapping[str, Tensor]) -> Tensor:
    """Sparseness (Chalasani et al. 2020): the Gini index of ``|Phi|``, per sample: ``[B]``.

        ``G = sum_i (2 i - F - 1) a_(i) / (F sum_i a_(i))``

    with ``a_(1) <= ... <= a_(F)`` the sorted ``|Phi|`` of one sample (``F`` features). 0 when
    every feature carries the same mass, ``(F - 1) / F`` when one feature carries all of it;
    higher is better (sparser). NaN for an all-zero attribution.

    Args:
        attributions: ``[B, ...]`` (or a tuple / dict of such tensors, features concatenated),
            floating point, finite.

    Returns:
        ``[B]``, float32 (float64 for float64 attributions).

    Example::

        gini = sparseness(ta.saliency(model, images))
    """
    a = _magnitudes(attributions).sort(dim=1).values
    features = a.shape[1]
    i = torch.arange(1, features + 1, device=a.device, dtype=a.dtype)
    total = a.sum(dim=1)
    gini = ((2 * i - features - 1) * a).sum(dim=1) / (features * total)
    return torch.where(total > 0, gini, torch.nan)


def complexity(attributions: Tensor | tuple[Tensor, ...] | Mapping[str, Tensor]) -> Tensor:
    """Complexity (Bhatt et al. 2020): the entropy of the attribution mass, per sample: ``[B]``.

        ``p_i = |Phi_i| / sum_j |Phi_j|``,   ``C = -sum_i p_i log p_i``   (``0 log 0 = 0``)

    over the ``F`` features of one sample, in nats. 0 when one feature carries all the mass,
    ``log F`` when every feature carries the same; lower is better (simpler). NaN for an
    all-zero attribution.

    Args:
        attributions: ``[B, ...]`` (or a tuple / dict of such tensors, features concatenated),
            floating point, finite.

    Returns:
        ``[B]``, float32 (float64 for float64 attributions).

    Example::

        entropy = complexity(ta.integrated_gradients(model, images))
    """
    a = _magnitudes(attributions)
    total = a.sum(dim=1, keepdim=True)
    p = a / torch.where(total > 0, total, 1)
    entropy = -torch.where(p > 0, p * p.log(), 0).sum(dim=1)
    return torch.where(total[:, 0] > 0, entropy, torch.nan)


def _magnitudes(attributions: Any) -> Tensor:
    """``|Phi|`` as ``[B, F]``, in at least float32, checked."""
    if isinstance(attributions, Tensor):
        names, tensors = ["attributions"], [attributions]
    elif isinstance(attributions, Mapping) and attributions:
        names = [f"attributions[{k!r}]" for k in attributions]
        tensors = list(attributions.values())
    elif isinstance(attributions, tuple) and attributions:
        names = [f"attributions[{i}]" for i in range(len(attributions))]
        tensors = list(attributions)
    else:
        raise TypeError(
            "attributions must be a tensor [B, ...] or a non-empty tuple / dict of them, got "
            f"{type(attributions).__name__}"
        )
    batch = None
    flat = []
    for name, t in zip(names, tensors):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a tensor [B, ...], got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} has dtype {t.dtype}: expected floating point")
        if t.ndim < 2 or t[0].numel() == 0:
            raise ValueError(f"{name} has shape {list(t.shape)}: expected a non-empty [B, ...]")
        if batch is None:
            batch = t.shape[0]
        elif t.shape[0] != batch:
            raise ValueError(
                f"{name} has {t.shape[0]} samples but the first entry has {batch}: expected "
                "one batch"
            )
        check_finite([t], [name])
        t = t.detach()
        flat.append(t.to(torch.promote_types(t.dtype, torch.float32)).flatten(1).abs())
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in flat) else torch.float32
    return torch.cat([t.to(device=flat[0].device, dtype=dtype) for t in flat], dim=1)
