"""Metrics for attribution maps.

* :mod:`~torchattr.metrics.localisation`: agreement of maps with ground-truth boxes
  (:func:`proportional_energy`, :func:`saliency_focus`, :func:`pointing_game`,
  :func:`relevance_rank_accuracy`, :func:`boxes_to_mask`).
* :mod:`~torchattr.metrics.perturbation`: the model's score on perturbed images
  (:func:`noisy_linear_impute`, :func:`road`, :func:`road_masks`, :func:`road_summary`,
  :func:`deletion`, :func:`insertion`, :func:`gaussian_blur`).
* :mod:`~torchattr.metrics.robustness`: stability and faithfulness of explanations
  (:func:`max_sensitivity`, :func:`infidelity`, :func:`faithfulness_correlation`).
* :mod:`~torchattr.metrics.directions`: :data:`DIRECTIONS`, whether higher or lower is better
  for every metric (and a note where it misleads), read by the command line and the plots.

Every metric that calls the model takes ``score=``: ``"softmax"`` (over the classes; a sigmoid
for a single logit), ``"sigmoid"`` (per output, for multi-label models) or ``"logit"``
(``"probability"``: the deprecated name of ``"softmax"``). The perturbation curves (:func:`road`,
:func:`deletion`, :func:`insertion`) default to ``"softmax"``, as their papers report
probabilities; :func:`infidelity` and :func:`faithfulness_correlation`, defined on the model's
function, default to ``"logit"``, as Captum.
"""

from torchattr.metrics.directions import DIRECTIONS, Direction, direction
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
    "DIRECTIONS",
    "CausalCurves",
    "Direction",
    "RoadSummary",
    "boxes_to_mask",
    "deletion",
    "direction",
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

# New metric families (issue 14): complexity, faithfulness / axiomatic, codes and tokens.
from torchattr.metrics.complexity import complexity, sparseness
from torchattr.metrics.faithfulness import (
    average_drop,
    completeness,
    increase_in_confidence,
    input_invariance,
    monotonicity,
    sensitivity_n,
)
from torchattr.metrics.sanity import (
    DataRandomisation,
    Randomisation,
    RandomLogit,
    data_randomisation,
    model_randomisation,
    permuted_labels,
    random_logit,
)
from torchattr.metrics.tokens import TokenCurves, comprehensiveness, sufficiency

__all__ += [
    "TokenCurves",
    "average_drop",
    "completeness",
    "complexity",
    "comprehensiveness",
    "increase_in_confidence",
    "input_invariance",
    "monotonicity",
    "sensitivity_n",
    "sparseness",
    "sufficiency",
]


__all__ += ["RandomLogit", "Randomisation", "model_randomisation", "random_logit"]
__all__ += ["DataRandomisation", "data_randomisation", "permuted_labels"]
