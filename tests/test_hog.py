"""HOG and the "hog" similarity of the sanity checks: against scikit-image's ``hog`` (optional
oracle), a hand-made edge, and the similarity's behaviour on identical and constant maps; the
data randomisation test."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import torchattr as ta
from torchattr.metrics import (
    data_randomisation,
    model_randomisation,
    permuted_labels,
    random_logit,
)
from torchattr.metrics.sanity import hog, similarities


@pytest.mark.parametrize(
    ("shape", "orientations", "cell", "block"),
    [((24, 24), 9, 8, 3), ((37, 50), 9, 8, 3), ((20, 17), 6, 4, 2), ((16, 16), 4, 3, 1)],
)
def test_hog_matches_scikit_image(shape, orientations, cell, block) -> None:
    feature = pytest.importorskip("skimage.feature")
    maps = torch.rand(3, *shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    maps[1] = maps[1].round(decimals=1)  # ties and exact horizontal / vertical gradients
    ours = hog(maps, orientations=orientations, cell=cell, block=block)
    for b in range(3):
        expected = feature.hog(
            maps[b].numpy(),
            orientations=orientations,
            pixels_per_cell=(cell, cell),
            cells_per_block=(block, block),
            block_norm="L2-Hys",
            feature_vector=False,
        )
        # scikit-image sums each cell in C float (single precision): agreement to ~1e-7
        torch.testing.assert_close(ours[b], torch.from_numpy(expected), atol=1e-6, rtol=0)


def test_hog_of_a_vertical_edge_votes_in_the_horizontal_bin_only() -> None:
    maps = torch.zeros(1, 24, 24, dtype=torch.float64)
    maps[:, :, 12:] = 1.0  # g_x = 1 in columns 11 and 12, g_y = 0: theta = 0, bin 0
    out = hog(maps)  # one block of 3 x 3 cells; the edge lies in the middle column of cells
    assert out.shape == (1, 1, 1, 3, 3, 9)
    assert torch.equal(out[..., 1:], torch.zeros_like(out[..., 1:]))
    middle = out[0, 0, 0, :, 1, 0]
    assert torch.equal(out[0, 0, 0, :, [0, 2], 0], torch.zeros(3, 2, dtype=torch.float64))
    # 3 cells of 2 x 8 voting pixels of magnitude 1 each: 3 equal entries, L2-Hys of [a, a, a]
    # is clipped at 0.2 then renormalised: 1/sqrt(3) each.
    torch.testing.assert_close(middle, torch.full((3,), 1 / math.sqrt(3), dtype=torch.float64))


def test_hog_similarity_is_one_for_the_same_map_and_nan_for_constant_maps() -> None:
    g = torch.Generator().manual_seed(1)
    phi = torch.randn(2, 3, 32, 32, generator=g)
    same = similarities(phi, 2 * phi, ["hog"])["hog"]  # scaled maps: the same HOG
    torch.testing.assert_close(same, torch.ones(2))
    other = similarities(phi, torch.randn(2, 3, 32, 32, generator=g), ["hog"])["hog"]
    assert bool((other < 0.9).all())
    constant = similarities(phi, torch.ones(2, 3, 32, 32), ["hog"])["hog"]
    assert bool(constant.isnan().all())  # no gradient at all: undefined, never 0


def test_hog_similarity_in_the_randomisation_checks() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 24 * 24, 3)
    ).double()
    images = torch.rand(2, 1, 24, 24, dtype=torch.float64)

    def explain(m, x, t):
        return ta.saliency(m, x, t)

    def edges(m, x, t):  # ignores the model: the input itself
        return x

    out = model_randomisation(explain, model, images, similarity="hog")
    assert out.similarity["hog"].shape == (2, 2)
    assert bool((out.similarity["hog"] < 0.99).all())
    ignored = model_randomisation(edges, model, images, similarity=("hog", "ssim"))
    torch.testing.assert_close(ignored.similarity["hog"], torch.ones(2, 2, dtype=torch.float64))
    logit = random_logit(explain, model, images, similarity="hog")
    assert logit.similarity["hog"].shape == (2,)


def test_hog_refuses_small_maps_and_bad_parameters() -> None:
    with pytest.raises(ValueError, match="at least block \\* cell = 24 pixels"):
        hog(torch.rand(1, 20, 30))
    with pytest.raises(ValueError, match="cell must be a positive int"):
        hog(torch.rand(1, 30, 30), cell=0)
    with pytest.raises(ValueError, match="needs maps \\[B, H, W\\]"):
        hog(torch.rand(30, 30))
    with pytest.raises(ValueError, match="'hog' needs 2-D maps"):
        similarities(torch.rand(2, 5), torch.rand(2, 5), ["hog"])


# --- data randomisation ---------------------------------------------------------------------


def _cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)
    ).double()


def test_data_randomisation_compares_the_two_models_without_changing_them() -> None:
    from model_state import assert_unchanged, snapshot

    model, other = _cnn(0), _cnn(1)
    other.train()  # a mode of the user's that must survive
    images = torch.rand(3, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    before = [snapshot(model), snapshot(other)]

    def explain(m, x, t):
        return ta.saliency(m, x, t)

    out = data_randomisation(explain, model, other, images, similarity=("spearman", "ssim"))
    assert_unchanged(model, before[0])
    assert_unchanged(other, before[1])
    assert other.training
    classes = model(images).argmax(1)
    assert torch.equal(out.classes, classes)  # the trained model's prediction, held
    torch.testing.assert_close(out.original, explain(model, images, classes))
    torch.testing.assert_close(out.randomised, explain(other.eval(), images, classes))
    assert out.similarity["spearman"].shape == (3,)
    assert bool((out.similarity["spearman"] < 0.99).all())
    same = data_randomisation(explain, model, copy.deepcopy(model), images, similarity="spearman")
    torch.testing.assert_close(same.similarity["spearman"], torch.ones(3, dtype=torch.float64))
    ignores = data_randomisation(lambda m, x, t: x, model, other, images, similarity="ssim")
    torch.testing.assert_close(ignores.similarity["ssim"], torch.ones(3, dtype=torch.float64))


def test_data_randomisation_refuses_other_outputs_and_permuted_labels_permute() -> None:
    images = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    wider = nn.Sequential(nn.Flatten(), nn.Linear(64, 5)).double()
    with pytest.raises(ValueError, match="same architecture and classes"):
        data_randomisation(lambda m, x, t: x, _cnn(0), wider, images)
    with pytest.raises(ValueError, match="one class index per sample"):
        data_randomisation(lambda m, x, t: x, _cnn(0), _cnn(1), images, target=lambda out: out)
    labels = torch.arange(50) % 7
    shuffled = permuted_labels(labels, torch.Generator().manual_seed(0))
    assert torch.equal(shuffled.sort().values, labels.sort().values)
    assert not torch.equal(shuffled, labels)
    again = permuted_labels(labels, torch.Generator().manual_seed(0))
    assert torch.equal(shuffled, again)
