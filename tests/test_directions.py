"""Tests of torchattr.metrics.directions and its use by the command line."""

from __future__ import annotations

import pytest
import torch

from torchattr import metrics
from torchattr.cli.compare import METRICS as COMPARED
from torchattr.cli.demo import METRICS as DEMO_METRICS
from torchattr.cli.evaluate import metric_direction
from torchattr.metrics import DIRECTIONS, direction


def test_every_metric_function_and_cli_column_has_a_direction() -> None:
    scoring = {
        "proportional_energy", "saliency_focus", "pointing_game", "relevance_rank_accuracy",
        "road", "deletion", "insertion", "max_sensitivity", "infidelity",
        "faithfulness_correlation",
    }  # fmt: skip
    assert scoring <= set(DIRECTIONS)
    for name in (*COMPARED, *DEMO_METRICS, "road_morf_20", "road_lerf_80"):
        assert metric_direction(name) in DIRECTIONS.values()
    assert direction("road_score") is DIRECTIONS["road"]
    assert metric_direction("road_morf_20").word == "lower"
    assert metric_direction("road_lerf_80").word == "higher"


def test_directions_agree_with_the_metrics_on_hand_cases() -> None:
    # A map inside the box beats a map outside it for every localisation metric, in the
    # direction the registry states.
    inside, outside = torch.zeros(1, 6, 6), torch.zeros(1, 6, 6)
    inside[0, 1, 1], outside[0, 4, 4] = 1.0, 1.0
    boxes = [[[0, 0, 3, 3]]]
    for name in ("proportional_energy", "saliency_focus", "pointing_game"):
        good, bad = (float(getattr(metrics, name)(m, boxes)[0]) for m in (inside, outside))
        assert direction(name).best([good, bad]) == good and good != bad, name
    assert direction("deletion").best([0.2, 0.7]) == 0.2
    assert direction("insertion").best([0.2, 0.7]) == 0.7


def test_saliency_focus_notes_that_it_rewards_diffuse_maps() -> None:
    box = [[[0, 0, 3, 3]]]
    sharp = torch.zeros(1, 6, 6)
    sharp[0, 1, 1] = 1.0
    noise = torch.rand(1, 6, 6, generator=torch.Generator().manual_seed(0))
    focus = metrics.saliency_focus(torch.cat([sharp, noise, torch.ones(1, 6, 6)]), box * 3)
    assert focus[0] < focus[1] < focus[2]  # the diffuse maps win
    assert "diffuse" in direction("saliency_focus").note
    assert direction("saliency_focus").caveat


def test_unknown_names_are_refused() -> None:
    with pytest.raises(ValueError, match=r"unknown metric 'auc'.*proportional_energy"):
        direction("auc")
    with pytest.raises(TypeError, match="name"):
        direction(3)  # type: ignore[arg-type]
