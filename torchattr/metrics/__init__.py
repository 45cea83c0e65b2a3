"""Metrics for attribution maps.

* :mod:`~torchattr.metrics.localisation`: agreement of maps with ground-truth boxes
  (:func:`proportional_energy`, :func:`boxes_to_mask`).
"""

from torchattr.metrics.localisation import boxes_to_mask, proportional_energy

__all__ = ["boxes_to_mask", "proportional_energy"]
