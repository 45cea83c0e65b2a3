"""Which way is better, for every metric: the one place the command line, plots and reports read.

``DIRECTIONS[name]`` is a :class:`Direction`: ``higher_is_better`` and, where the metric can
mislead, a ``note`` (a sentence) and a short ``caveat`` for plot titles. Names are the metric
functions' (``"road"`` is the ROAD summary score ``(LeRF(1 - p) - MoRF(p)) / 2`` of
:func:`~torchattr.metrics.road_summary`; ``"road_morf"`` / ``"road_lerf"`` the curves);
:func:`direction` also takes the command line's column names (``"road_score"``).

Example::

    from torchattr.metrics import DIRECTIONS, direction
    direction("deletion").higher_is_better            # False: a lower AUC is better
    best = min(values) if not direction(name).higher_is_better else max(values)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from types import MappingProxyType

__all__ = ["ALIASES", "DIRECTIONS", "Direction", "direction"]


@dataclass(frozen=True)
class Direction:
    """A metric's direction: ``higher_is_better``; a ``note`` / short ``caveat`` if it misleads.

    Example::

        ta.metrics.direction("road").best([0.1, 0.3])   # 0.3: higher is better
    """

    higher_is_better: bool
    note: str = ""
    caveat: str = ""

    @property
    def word(self) -> str:
        """``"higher"`` or ``"lower"``."""
        return "higher" if self.higher_is_better else "lower"

    def best(self, values: Iterable[float]) -> float:
        """The best of ``values``: their max (higher is better) or min (lower is better)."""
        return max(values) if self.higher_is_better else min(values)


DIRECTIONS = MappingProxyType(
    {
        # localisation
        "proportional_energy": Direction(
            True, "a uniform map scores the boxes' area fraction: compare with that, not with 0"
        ),
        "saliency_focus": Direction(
            True,
            "rewards diffuse maps: it is the mean map value in the boxes, not normalised by the "
            "map's mass, so a map of ones scores 1 and uniform noise in [0, 1] scores 0.5, more "
            "than most methods; rank methods by proportional_energy or "
            "relevance_rank_accuracy instead",
            "rewards diffuse maps",
        ),
        "pointing_game": Direction(
            True, "the share of the map's maxima in reach of the boxes (ties: expected value)"
        ),
        "relevance_rank_accuracy": Direction(
            True, "a constant map scores the boxes' area fraction (ties: expected value)"
        ),
        # perturbation
        "road": Direction(True, "(LeRF(1 - p) - MoRF(p)) / 2: 0 for a random map, by construction"),
        "road_morf": Direction(False, "the score after imputing the most relevant pixels"),
        "road_lerf": Direction(True, "the score after imputing the least relevant pixels"),
        "deletion": Direction(False, "area under the deletion curve"),
        "insertion": Direction(True, "area under the insertion curve"),
        # robustness and faithfulness
        "max_sensitivity": Direction(False),
        "infidelity": Direction(False),
        "faithfulness_correlation": Direction(True),
        "sensitivity_n": Direction(True, "faithfulness correlation over subsets of size n"),
        "monotonicity": Direction(True, "True where the score never falls as features return"),
        "average_drop": Direction(False, "percent of the score lost on the map-masked image"),
        "increase_in_confidence": Direction(True, "True where the map-masked image scores more"),
        "completeness": Direction(
            False, "|sum Phi - (f(x) - f(baseline))|: 0 for complete methods"
        ),
        "input_invariance": Direction(False, "0 for an explanation invariant to an input shift"),
        # complexity
        "sparseness": Direction(True, "Gini index of |Phi|"),
        "complexity": Direction(False, "entropy of |Phi| / sum |Phi|"),
        # codes and tokens
        "comprehensiveness": Direction(True, "score lost without the top tokens (AOPC)"),
        "sufficiency": Direction(False, "score lost keeping only the top tokens (AOPC)"),
        # sanity checks: an explanation should change when the model does
        "model_randomisation": Direction(
            False, "similarity to the explanation of the randomised model: 1 if it ignores it"
        ),
        "random_logit": Direction(False, "similarity to the explanation of another class"),
        "data_randomisation": Direction(
            False, "similarity to the explanation of a model trained on permuted labels"
        ),
    }
)

# Other names of the same metrics (the command line's columns).
ALIASES = MappingProxyType({"road_score": "road"})


def direction(name: str) -> Direction:
    """The :class:`Direction` of metric ``name`` (a key of :data:`DIRECTIONS` or an alias).

    Raises a ValueError naming the known metrics for an unknown name. Definition:
    ``DIRECTIONS[ALIASES.get(name, name)]``.

    Example::

        ta.metrics.direction("deletion").higher_is_better   # False: lower is better
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a metric name (str), got {type(name).__name__}")
    key = ALIASES.get(name, name)
    if key not in DIRECTIONS:
        known = ", ".join(sorted({*DIRECTIONS, *ALIASES}))
        raise ValueError(f"unknown metric {name!r}: expected one of {known}")
    return DIRECTIONS[key]
