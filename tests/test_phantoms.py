"""Tests of torchattr.data.make_phantoms: determinism, shapes, ranges, lesion boxes."""

from __future__ import annotations

import pytest
import torch

from torchattr.data import PhantomNet, derive_seed, lesion_box, make_phantoms


def test_shapes_dtypes_and_range() -> None:
    images, labels, boxes = make_phantoms(12, size=48, seed=3)
    assert images.shape == (12, 1, 48, 48) and images.dtype == torch.float32
    assert labels.shape == (12,) and labels.dtype == torch.long
    assert images.min() >= 0 and images.max() <= 1
    assert len(boxes) == 12
    for label, box in zip(labels.tolist(), boxes, strict=True):
        assert box.dtype == torch.long and box.ndim == 2 and box.shape[1] == 4
        assert box.shape[0] == label  # one box per positive, none per negative


def test_positive_fraction_counts() -> None:
    assert make_phantoms(10, positive_fraction=0.3)[1].sum() == 3
    assert make_phantoms(7, positive_fraction=0.0)[1].sum() == 0
    assert make_phantoms(7, positive_fraction=1.0)[1].sum() == 7


def test_same_seed_bit_identical_other_seed_differs() -> None:
    a = make_phantoms(8, seed=5)
    b = make_phantoms(8, seed=5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert all(torch.equal(x, y) for x, y in zip(a[2], b[2], strict=True))
    assert not torch.equal(a[0], make_phantoms(8, seed=6)[0])


def test_global_rng_untouched() -> None:
    state = torch.get_rng_state()
    make_phantoms(4, seed=0)
    assert torch.equal(state, torch.get_rng_state())


def test_lesion_is_bright_and_confined_to_its_box() -> None:
    # The random stream does not depend on the labels: with the same seed, all-positive and
    # all-negative sets share the anatomy and noise, so their difference is the lesion alone.
    size = 64
    positives, _, boxes = make_phantoms(20, size=size, positive_fraction=1.0, seed=11)
    negatives, _, empty = make_phantoms(20, size=size, positive_fraction=0.0, seed=11)
    assert all(b.shape == (0, 4) for b in empty)
    lesion = (positives - negatives)[:, 0]
    for i, box in enumerate(boxes):
        x1, y1, x2, y2 = box[0].tolist()
        assert 0 <= x1 < x2 <= size and 0 <= y1 < y2 <= size
        assert 3 <= x2 - x1 <= 9 and 3 <= y2 - y1 <= 9  # radius 2..4 pixels at 64 x 64
        inside = torch.zeros(size, size, dtype=torch.bool)
        inside[y1:y2, x1:x2] = True
        assert torch.all(lesion[i][~inside] == 0)
        assert lesion[i][inside].max() > 0.15
        assert positives[i, 0][inside].mean() > negatives[i, 0][inside].mean() + 0.05


def test_lesion_lies_in_a_dark_lung_field() -> None:
    # Without the lesion, its box is darker than the mediastinum (the strip between the lungs).
    images, _, _ = make_phantoms(50, positive_fraction=0.0, seed=2)
    _, _, lesion_boxes = make_phantoms(50, positive_fraction=1.0, seed=2)
    for image, box in zip(images[:, 0], lesion_boxes, strict=True):
        x1, y1, x2, y2 = box[0].tolist()
        assert image[y1:y2, x1:x2].mean() < image[20:44, 30:34].mean() - 0.1


def test_lesion_box_exclusive_ends() -> None:
    # Pixel centres strictly within R of c: x in (3.5 - 2, 3.5 + 2) -> 2..5; y in (1, 5) -> 2..4.
    box = lesion_box(torch.tensor([3.5, 3.0]), 2.0, 64)
    assert box.tolist() == [2, 2, 6, 5]
    assert lesion_box(torch.tensor([0.5, 62.8]), 3.0, 64).tolist() == [0, 60, 4, 64]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"n": 0}, ValueError),
        ({"n": 2.5}, TypeError),
        ({"n": 4, "size": 8}, ValueError),
        ({"n": 4, "positive_fraction": 1.5}, ValueError),
        ({"n": 4, "positive_fraction": "half"}, TypeError),
        ({"n": 4, "seed": 1.0}, TypeError),
    ],
)
def test_bad_arguments(kwargs: dict, error: type[Exception]) -> None:
    with pytest.raises(error):
        make_phantoms(**kwargs)


def test_shuffling_with_the_same_seed_does_not_sort_by_label() -> None:
    # Regression: labels used to be drawn with torch.randperm on Generator().manual_seed(seed),
    # so a training loop shuffling with the same seed met all positives first.
    _, labels, _ = make_phantoms(100, seed=4)
    order = torch.randperm(100, generator=torch.Generator().manual_seed(4))
    assert 0 < labels[order[:50]].sum() < 50


def test_derive_seed_streams() -> None:
    assert derive_seed(0, "train") == derive_seed(0, "train")
    seeds = {derive_seed(s, name) for s in (0, 1) for name in ("train", "test")}
    assert len(seeds) == 4 and all(0 <= s < 2**63 for s in seeds)
    with pytest.raises(TypeError):
        derive_seed(1.5, "train")


def test_phantomnet_shapes() -> None:
    model = PhantomNet().eval()
    images = make_phantoms(3, seed=0)[0]
    assert model(images).shape == (3, 1)
    assert model.logit_map(images).shape == (3, 1, 16, 16)
    torch.testing.assert_close(model(images)[:, 0], model.logit_map(images).flatten(1).amax(1))
