"""Metrics for attribution maps.

* :mod:`~torchattr.metrics.localisation`: agreement of maps with ground-truth boxes
  (:func:`proportional_energy`, :func:`saliency_focus`, :func:`pointing_game`,
  :func:`relevance_rank_accuracy`, :func:`boxes_to_mask`).
* :mod:`~torchattr.metrics.perturbation`: the model's score on perturbed images
  (:func:`noisy_linear_impute`, :func:`road`, :func:`road_masks`, :func:`road_summary`,
  :func:`deletion`, :func:`insertion`, :func:`gaussian_blur`).
* :mod:`~torchattr.metrics.robustness`: stability and faithfulness of explanations
  (:func:`max_sensitivity`, :func:`infidelity`, :func:`faithfulness_correlation`).
"""

from torchattr.metrics.localisation import (
    boxes_to_mask,
    pointing_game,
    proportional_energy,
    relevance_rank_accuracy,
    saliency_focus,
)
from torchattr.metrics.perturbation import (
    CausalCurves,
    RoadSummary,
    deletion,
    gaussian_blur,
    insertion,
    noisy_linear_impute,
    paired_fractions,
    road,
    road_masks,
    road_summary,
)
from torchattr.metrics.robustness import faithfulness_correlation, infidelity, max_sensitivity

__all__ = [
    "CausalCurves",
    "RoadSummary",
    "boxes_to_mask",
    "deletion",
    "faithfulness_correlation",
    "gaussian_blur",
    "infidelity",
    "insertion",
    "max_sensitivity",
    "noisy_linear_impute",
    "paired_fractions",
    "pointing_game",
    "proportional_energy",
    "relevance_rank_accuracy",
    "road",
    "road_masks",
    "road_summary",
    "saliency_focus",
]
