"""Tests of torchattr.viz: normalisation, colormaps, overlays, grids, figures and PNG files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from torchattr import viz

ROOT = Path(__file__).resolve().parents[1]
JET_TOP = np.array([0.5, 0.0, 0.0]) * 255  # jet(1): dark red
JET_BOTTOM = np.array([0.0, 0.0, 0.5]) * 255  # jet(0): dark blue


def _blend(image: np.ndarray, colour: np.ndarray, alpha: float) -> np.ndarray:
    return np.rint((1 - alpha) * image.astype(np.float64) + alpha * colour).astype(np.uint8)


def _without(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """Make ``import module`` fail, as if the package were not installed."""
    for name in list(sys.modules):
        if any(name == m or name.startswith(m + ".") for m in modules):
            monkeypatch.setitem(sys.modules, name, None)
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


# ---------------------------------------------------------------- normalize


def test_normalize_modes_by_hand() -> None:
    a = np.array([[1.0, -3.0], [2.0, 0.0]])
    np.testing.assert_allclose(viz.normalize(a), [[0.8, 0.0], [1.0, 0.6]])
    np.testing.assert_allclose(viz.normalize(a, "abs"), [[1 / 3, 1.0], [2 / 3, 0.0]])
    np.testing.assert_allclose(viz.normalize(a, signed=True), [[1 / 3, -1.0], [2 / 3, 0.0]])


def test_normalize_percentile_clips_outliers() -> None:
    # |A| = 0, 1, ..., 100 with one sign flipped: percentiles 10 and 90 are 10 and 90 exactly.
    values = np.arange(101.0).reshape(1, 101)
    values[0, 50] = -50.0
    out = viz.normalize(values, "percentile", percentiles=(10, 90))
    expected = (np.clip(np.arange(101.0), 10, 90) - 10) / 80
    np.testing.assert_allclose(out[0], expected)
    assert out[0, 50] == pytest.approx(0.5)
    np.testing.assert_allclose(
        np.percentile(np.abs(values), [10, 90]), [10, 90]
    )  # the same interpolation as numpy
    # Interpolated percentile: |A| = 0..4, the 90th percentile is 3.6.
    five = np.array([[0.0, 1.0, -2.0, 3.0, 4.0]])
    np.testing.assert_allclose(
        viz.normalize(five, "percentile", percentiles=(0, 90)), [[0, 1 / 3.6, 2 / 3.6, 3 / 3.6, 1]]
    )
    signed = viz.normalize(five, "percentile", percentiles=(0, 90), signed=True)
    np.testing.assert_allclose(signed, [[0, 1 / 3.6, -2 / 3.6, 3 / 3.6, 1]])


def test_normalize_channels_and_batches() -> None:
    a = torch.tensor([[[1.0, -4.0], [0.0, 2.0]], [[-3.0, 1.0], [0.0, 1.0]]])  # [C=2, 2, 2]
    # Unsigned: max over channels of |A| = [[3, 4], [0, 2]], then min-max.
    torch.testing.assert_close(viz.normalize(a), torch.tensor([[0.75, 1.0], [0.0, 0.5]]))
    # Signed: sum over channels = [[-2, -3], [0, 3]], divided by max |.| = 3.
    torch.testing.assert_close(
        viz.normalize(a, signed=True), torch.tensor([[-2 / 3, -1.0], [0.0, 1.0]])
    )
    # [B, C, H, W]: each map its own scale; [B, H, W] with batched=True.
    batch = torch.stack([a, 10 * a])
    out = viz.normalize(batch)
    assert out.shape == (2, 2, 2)
    torch.testing.assert_close(out[0], out[1])
    maps = torch.stack(
        [torch.tensor([[0.0, 1.0], [2.0, 4.0]]), torch.tensor([[5.0, 5.0], [6.0, 9.0]])]
    )
    torch.testing.assert_close(
        viz.normalize(maps, batched=True),
        torch.tensor([[[0.0, 0.25], [0.5, 1.0]], [[0.0, 0.0], [0.25, 1.0]]]),
    )
    assert viz.normalize(maps).shape == (2, 2)  # 3-D without batched: [C, H, W]


@pytest.mark.parametrize("kwargs", [{}, {"mode": "abs"}, {"mode": "percentile"}, {"signed": True}])
def test_normalize_constant_maps_become_zeros(kwargs: dict) -> None:
    maps = torch.stack([torch.full((4, 4), 3.0), torch.zeros(4, 4), torch.full((4, 4), -2.0)])
    out = viz.normalize(maps, batched=True, **kwargs)
    assert torch.equal(out, torch.zeros(3, 4, 4))


def test_normalize_numpy_and_torch_agree_and_keep_their_kind() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2, 3, 5, 5))
    for kwargs in ({}, {"mode": "abs"}, {"mode": "percentile"}, {"signed": True}):
        from_numpy = viz.normalize(a, **kwargs)
        from_torch = viz.normalize(torch.from_numpy(a), **kwargs)
        assert isinstance(from_numpy, np.ndarray) and isinstance(from_torch, torch.Tensor)
        assert from_numpy.dtype == np.float64 and from_torch.dtype == torch.float64
        np.testing.assert_allclose(from_numpy, from_torch.numpy())
        low = -1 if kwargs.get("signed") else 0
        assert from_numpy.min() >= low and from_numpy.max() <= 1
    assert viz.normalize(a.astype(np.float32)).dtype == np.float32
    assert viz.normalize(torch.ones(3, 3, dtype=torch.int64)).dtype == torch.float32
    assert viz.normalize(torch.rand(4, 4, dtype=torch.bfloat16)).dtype == torch.float32


def test_normalize_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown mode 'max'"):
        viz.normalize(np.ones((2, 2)), "max")
    with pytest.raises(ValueError, match="attribution has shape"):
        viz.normalize(np.ones(3))
    with pytest.raises(ValueError, match="attribution has shape"):
        viz.normalize(np.ones((1, 1, 2, 2, 2)))
    with pytest.raises(ValueError, match="attribution has shape"):
        viz.normalize(np.ones((0, 4)))
    with pytest.raises(TypeError, match="batched must be a bool"):
        viz.normalize(np.ones((2, 2)), batched=1)
    with pytest.raises(TypeError, match="attribution must be a tensor"):
        viz.normalize([[1.0, 2.0]])
    with pytest.raises(TypeError, match="attribution must hold real numbers"):
        viz.normalize(torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="attribution holds NaN"):
        viz.normalize(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="percentiles"):
        viz.normalize(np.ones((2, 2)), "percentile", percentiles=(99, 1))
    with pytest.raises(TypeError, match="percentiles"):
        viz.normalize(np.ones((2, 2)), "percentile", percentiles=5)
    with pytest.raises(ValueError, match="signed"):
        viz.normalize(np.ones((2, 2)), "abs", signed=True)


# ---------------------------------------------------------------- colours


def test_builtin_colormaps_match_matplotlib() -> None:
    matplotlib = pytest.importorskip("matplotlib")
    values = np.random.default_rng(0).random(10_000)
    for name in ("jet", "gray"):
        np.testing.assert_array_equal(
            viz.colormap(name), matplotlib.colormaps[name](np.linspace(0, 1, 256))[:, :3]
        )
        expected = np.rint(matplotlib.colormaps[name](values)[:, :3] * 255).astype(np.uint8)
        np.testing.assert_array_equal(viz.colorize(values, name), expected)
    for name in ("viridis", "RdBu_r"):  # built in as 16-bit tables
        reference = matplotlib.colormaps[name](np.linspace(0, 1, 256))[:, :3]
        np.testing.assert_allclose(viz.colormap(name), reference, atol=1e-5)
        expected = np.rint(matplotlib.colormaps[name](values)[:, :3] * 255).astype(int)
        assert np.abs(viz.colorize(values, name).astype(int) - expected).max() <= 1
    plasma = np.rint(matplotlib.colormaps["plasma"](values)[:, :3] * 255).astype(np.uint8)
    np.testing.assert_array_equal(viz.colorize(values, "plasma"), plasma)
    with pytest.raises(ValueError, match="unknown cmap 'nope'"):
        viz.colormap("nope")


def test_colormaps_without_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    _without(monkeypatch, "matplotlib")
    assert viz.colorize(np.array([0.0, 1.0])).tolist() == [[68, 1, 84], [253, 231, 37]]
    assert viz.colorize(np.array([0.0, 1.0]), "jet").tolist() == [[0, 0, 128], [128, 0, 0]]
    # Signed: 0 is the diverging map's (near-)white centre, -1 blue, +1 red.
    low, middle, high = viz.colorize(np.array([-1.0, 0.0, 1.0]), signed=True).astype(int)
    assert low[2] > low[0] and high[0] > high[2] and middle.min() >= 240
    picture = viz.overlay(np.zeros((4, 4)), np.ones((4, 4)), cmap="gray", alpha=1.0)
    assert (picture == 255).all()
    with pytest.raises(ImportError, match=r"cmap 'plasma' needs matplotlib.*torchattr\[viz\]"):
        viz.overlay(np.zeros((4, 4)), np.ones((4, 4)), cmap="plasma")
    with pytest.raises(ImportError, match="matplotlib"):
        viz.plot_attributions(np.zeros((4, 4)), {"a": np.ones((4, 4))})


def test_importing_viz_imports_neither_matplotlib_nor_pillow() -> None:
    code = "import sys, torchattr.viz; assert not {'matplotlib', 'PIL'} & set(sys.modules)"
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": path},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------- overlay


def _scene() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(8, 10), dtype=np.uint8)
    saliency = np.zeros((8, 10))
    saliency[2:4, 3:6] = 0.5
    saliency[3, 4] = 1.0
    saliency[6, 8] = 0.1  # below 0.2 * max
    return image, saliency


def test_overlay_threshold_keeps_image_and_blends_the_top_colour() -> None:
    image, saliency = _scene()
    out = viz.overlay(image, saliency, alpha=0.4, threshold=0.2, cmap="jet")
    rgb = np.repeat(image[..., None], 3, axis=-1)
    assert out.dtype == np.uint8 and out.shape == (8, 10, 3)
    hidden = saliency < 0.2
    np.testing.assert_array_equal(out[hidden], rgb[hidden])  # exactly the image's pixels
    np.testing.assert_array_equal(out[3, 4], _blend(rgb[3, 4], JET_TOP, 0.4))
    colour = viz.colormap("jet")[128] * 255  # 0.5 -> entry floor(0.5 * 256) = 128
    np.testing.assert_array_equal(out[2, 3], _blend(rgb[2, 3], colour, 0.4))


def test_overlay_without_threshold_blends_everywhere() -> None:
    image, saliency = _scene()
    out = viz.overlay(image, saliency, alpha=0.5, cmap="jet")
    rgb = np.repeat(image[..., None], 3, axis=-1)
    np.testing.assert_array_equal(out[0, 0], _blend(rgb[0, 0], JET_BOTTOM, 0.5))
    np.testing.assert_array_equal(viz.overlay(image, saliency, alpha=0.0), rgb)
    # A map outside [0, 1] is min-max scaled first.
    np.testing.assert_array_equal(viz.overlay(image, 10 * saliency - 3, cmap="jet"), out)
    # A zero map with a threshold shows nothing.
    np.testing.assert_array_equal(viz.overlay(image, np.zeros((8, 10)), threshold=0.0), rgb)


def test_overlay_boxes_are_one_pixel_outlines() -> None:
    image = np.full((8, 10), 100, dtype=np.uint8)
    box = torch.tensor([[1, 2, 5, 6]])
    out = viz.overlay(image, np.zeros((8, 10)), alpha=0.0, boxes=box, outline="border")
    drawn = (out == [0, 255, 0]).all(axis=-1)
    expected = np.zeros((8, 10), dtype=bool)
    expected[2, 1:5] = expected[5, 1:5] = expected[2:6, 1] = expected[2:6, 4] = True
    np.testing.assert_array_equal(drawn, expected)
    assert (out[~expected] == 100).all()  # inside and outside the outline: the image


def test_draw_boxes_clips_widens_and_skips() -> None:
    base = np.zeros((6, 6, 3), dtype=np.uint8)
    out = viz.draw_boxes(base, [[-3, -3, 100, 3]], color=(255, 0, 0))
    drawn = out[..., 0] == 255
    expected = np.zeros((6, 6), dtype=bool)
    expected[0, :] = expected[2, :] = expected[:3, 0] = expected[:3, 5] = True
    np.testing.assert_array_equal(drawn, expected)
    assert not base.any()  # drawn on a copy
    widened = viz.draw_boxes(base, np.array([1.5, 1.2, 2.5, 2.8]))  # -> [1, 1, 3, 3]
    np.testing.assert_array_equal(
        widened[..., 1] == 255, np.pad(np.ones((2, 2), bool), [(1, 3)] * 2)
    )
    for nothing in ([], [[7, 7, 9, 9]], [[2, 2, 2, 5]], torch.zeros(0, 4)):
        np.testing.assert_array_equal(viz.draw_boxes(base, nothing), base)


@pytest.mark.parametrize("layout", ["hw", "1hw", "hw1", "3hw", "hw3"])
def test_overlay_layouts(layout: str) -> None:
    grey = np.random.default_rng(2).random((6, 7))
    saliency = np.random.default_rng(3).random((6, 7))
    expected = viz.overlay(np.repeat(grey[..., None], 3, axis=-1), saliency, threshold=0.3)
    image = {
        "hw": grey,
        "1hw": grey[None],
        "hw1": grey[..., None],
        "3hw": np.repeat(grey[None], 3, axis=0),
        "hw3": np.repeat(grey[..., None], 3, axis=-1),
    }[layout]
    np.testing.assert_array_equal(viz.overlay(image, saliency, threshold=0.3), expected)
    as_tensor = viz.overlay(
        torch.from_numpy(image).float(), torch.from_numpy(saliency), threshold=0.3
    )
    assert np.abs(as_tensor.astype(int) - expected).max() <= 1  # float32 rounding


def test_to_rgb_values_and_ambiguous_layout() -> None:
    assert viz.to_rgb(np.array([[0.0, 0.5, 1.0]])).tolist() == [[[0] * 3, [128] * 3, [255] * 3]]
    assert viz.to_rgb(np.array([[-1.0, 0.0, 3.0]]))[0, :, 0].tolist() == [0, 64, 255]
    assert viz.to_rgb(np.array([[7, 7]], dtype=np.uint8))[0, :, 0].tolist() == [7, 7]
    assert viz.to_rgb(torch.tensor([[7, 7]], dtype=torch.uint8))[0, :, 0].tolist() == [7, 7]
    assert viz.to_rgb(np.full((2, 2), 5.0)).max() == 0  # constant outside [0, 1]: black
    rgb = np.zeros((3, 3, 3))
    rgb[0] = 1.0  # channels first: the first channel (red) is 1; channels last: the first row
    assert viz.to_rgb(rgb)[..., 0].min() == 255  # a 3 x 3 x 3 image is read channels first
    ambiguous = np.zeros((3, 4, 3))
    ambiguous[0] = 1.0
    chw = viz.to_rgb(ambiguous, size=(4, 3))  # [3, 4, 3] read as C, H=4, W=3
    hwc = viz.to_rgb(ambiguous, size=(3, 4))  # read as H=3, W=4, C
    assert chw.shape == (4, 3, 3) and hwc.shape == (3, 4, 3)


def test_overlay_bad_input_names_the_argument() -> None:
    image = np.zeros((8, 10))
    with pytest.raises(ValueError, match="saliency has shape"):
        viz.overlay(image, np.zeros((1, 8, 10)))
    with pytest.raises(ValueError, match=r"image has shape \[8, 10\] but saliency has \[8, 9\]"):
        viz.overlay(image, np.zeros((8, 9)))
    with pytest.raises(ValueError, match="image has shape"):
        viz.overlay(np.zeros((2, 8, 10)), np.zeros((8, 10)))
    with pytest.raises(ValueError, match="image has shape"):
        viz.overlay(np.zeros((1, 1, 8, 10)), np.zeros((8, 10)))
    with pytest.raises(TypeError, match="image must hold real numbers"):
        viz.overlay(np.zeros((8, 10), dtype=bool), np.zeros((8, 10)))
    with pytest.raises(ValueError, match="saliency holds NaN"):
        viz.overlay(image, np.full((8, 10), np.nan))
    with pytest.raises(ValueError, match="unknown cmap"):
        viz.overlay(image, np.zeros((8, 10)), cmap="no_such_map")
    with pytest.raises(TypeError, match="cmap must be"):
        viz.overlay(image, np.zeros((8, 10)), cmap=3)
    with pytest.raises(ValueError, match="alpha must lie in"):
        viz.overlay(image, np.zeros((8, 10)), alpha=1.5)
    with pytest.raises(ValueError, match="threshold must lie in"):
        viz.overlay(image, np.zeros((8, 10)), threshold=-0.1)
    with pytest.raises(ValueError, match="boxes has shape"):
        viz.overlay(image, np.zeros((8, 10)), boxes=[[1, 2, 3]])
    with pytest.raises(ValueError, match="color must be three integers"):
        viz.overlay(image, np.zeros((8, 10)), boxes=[[1, 2, 3, 4]], box_color=(0, 300, 0))


# ---------------------------------------------------------------- grid, figures, files


def test_grid_layout_and_labels() -> None:
    pictures = [np.full((5, 6, 3), i * 40, dtype=np.uint8) for i in range(5)]
    out = viz.grid(pictures, ncols=2, pad=1, scale=2)
    assert out.shape == (3 * 10 + 4, 2 * 12 + 3, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[1:11, 1:13], np.full((10, 12, 3), 0))
    np.testing.assert_array_equal(out[12:22, 14:26], np.full((10, 12, 3), 120))
    assert (out[23:33, 14:26] == 255).all()  # the sixth cell is empty
    pytest.importorskip("PIL")
    labelled = viz.grid(pictures[:3], labels=["a", "bb", "ccc"], label_height=12, pad=2)
    assert labelled.shape == (12 + 5 + 2 * 2, 3 * 6 + 4 * 2, 3)
    assert (labelled[2:14, 2:8] < 255).any()  # some text was drawn
    np.testing.assert_array_equal(labelled[14:19, 10:16], pictures[1])
    grey = viz.grid([np.zeros((2, 2), dtype=np.uint8)], pad=0)
    assert grey.shape == (2, 2, 3)


def test_grid_bad_input() -> None:
    with pytest.raises(TypeError, match="images must be a non-empty list"):
        viz.grid([])
    with pytest.raises(TypeError, match=r"images\[0\] must be a uint8"):
        viz.grid([np.zeros((2, 2))])
    with pytest.raises(ValueError, match=r"images\[1\] has shape \[3, 2, 3\] but images\[0\]"):
        viz.grid([np.zeros((2, 2, 3), np.uint8), np.zeros((3, 2, 3), np.uint8)])
    with pytest.raises(ValueError, match="labels must be 1 strings"):
        viz.grid([np.zeros((2, 2, 3), np.uint8)], labels=["a", "b"])
    with pytest.raises(ValueError, match="ncols must be >= 1"):
        viz.grid([np.zeros((2, 2, 3), np.uint8)], ncols=0)


def test_save_png_round_trip(tmp_path: Path) -> None:
    image_module = pytest.importorskip("PIL.Image")
    rgb = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    path = viz.save_png(tmp_path / "sub" / "picture", rgb)
    assert path == tmp_path / "sub" / "picture.png"
    with image_module.open(path) as loaded:
        assert loaded.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(loaded), rgb)
    grey = viz.save_png(tmp_path / "grey.png", torch.arange(12, dtype=torch.uint8).reshape(3, 4))
    with image_module.open(grey) as loaded:
        assert loaded.mode == "L" and np.asarray(loaded).tolist() == [
            [0, 1, 2, 3],
            [4, 5, 6, 7],
            [8, 9, 10, 11],
        ]
    viz.save_png(path, np.zeros((5, 7, 3), np.uint8))  # replaces the file
    with image_module.open(path) as loaded:
        assert not np.asarray(loaded).any()
    assert not list(tmp_path.rglob("*.tmp"))
    with pytest.raises(TypeError, match="image must be a uint8 array or a Figure"):
        viz.save_png(tmp_path / "bad.png", np.zeros((2, 2)))
    with pytest.raises(ValueError, match="image has shape"):
        viz.save_png(tmp_path / "bad.png", np.zeros((2, 2, 2), np.uint8))
    assert not (tmp_path / "bad.png").exists()


def test_save_png_without_pillow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _without(monkeypatch, "PIL")
    with pytest.raises(ImportError, match=r"Pillow.*torchattr\[viz\]"):
        viz.save_png(tmp_path / "x.png", np.zeros((2, 2, 3), np.uint8))
    assert not list(tmp_path.iterdir())


def test_plot_attributions_figure(tmp_path: Path) -> None:
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    image = torch.rand(3, 12, 16)  # RGB, channels first
    maps = {
        "saliency": torch.rand(12, 16),
        "integrated_gradients": np.random.default_rng(0).random((12, 16)),
        "c_d": torch.randn(3, 12, 16),
    }
    figure = viz.plot_attributions(image, maps, boxes=[[2, 2, 6, 6]], threshold=0.2, title="x")
    assert isinstance(figure, Figure)
    panels = [axes for axes in figure.axes if axes.get_title()]
    titles = [axes.get_title() for axes in panels]
    assert titles == ["image", "Saliency", "Integrated Gradients", "c d"]
    assert len(figure.axes) == 4 + 3  # one colour bar per map
    assert "20 % of its maximum" in figure.get_supxlabel()
    # Ten maps wrap into rows of at most 4 panels.
    many = viz.plot_attributions(image, {f"m{i}": torch.rand(12, 16) for i in range(10)})
    starts = {a.get_subplotspec().rowspan.start for a in many.axes if a.get_title()}
    assert starts == {0, 1, 2}
    grid_figure = viz.plot_attributions(image.permute(1, 2, 0).numpy(), maps, ncols=3)
    panels = [axes for axes in grid_figure.axes if axes.get_title()]
    assert panels[3].get_subplotspec().rowspan.start == 1  # second row
    path = viz.save_png(tmp_path / "figure.png", figure, dpi=50)
    image_module = pytest.importorskip("PIL.Image")
    with image_module.open(path) as loaded:
        assert loaded.format == "PNG" and loaded.size[0] > loaded.size[1]
    with pytest.raises(ValueError, match=r"maps\['a'\]"):
        viz.plot_attributions(image, {"a": torch.rand(5, 5)})
    with pytest.raises(ValueError, match=r"maps\['a'\] has shape"):
        viz.plot_attributions(image, {"a": torch.rand(12)})
    with pytest.raises(TypeError, match="maps must be a non-empty dict"):
        viz.plot_attributions(image, {})


def test_plot_attributions_suptitle_does_not_overlap_panel_titles() -> None:
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    maps = {"a": torch.rand(8, 8), "b": torch.rand(8, 8)}
    figure = viz.plot_attributions(torch.rand(8, 8), maps, title="a long figure title")
    _agg(figure).draw()
    renderer = figure.canvas.get_renderer()
    suptitle = figure._suptitle.get_window_extent(renderer)
    for axes in figure.axes:
        if axes.get_title():
            assert not suptitle.overlaps(axes.title.get_window_extent(renderer))


def _agg(figure: object) -> object:
    """Attach an Agg canvas (figures made without pyplot have none that renders)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    return FigureCanvasAgg(figure)


def _figure_pixels(figure: object, dpi: int = 100) -> np.ndarray:
    figure.set_dpi(dpi)
    canvas = _agg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3]


def _pixel_at(figure: object, axes: object, picture: np.ndarray, row: int, col: int) -> np.ndarray:
    """The figure's RGB at the centre of ``picture[row, col]`` shown in ``axes``."""
    rendered = _figure_pixels(figure)
    x, y = axes.transData.transform((col, row))  # imshow: pixel centres at integer coordinates
    height = rendered.shape[0]
    return rendered[round(height - y), round(x)].astype(int)


def test_figure_pixels_where_the_map_is_zero_maximal_and_under_the_outline() -> None:
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    image = np.full((16, 16), 0.5)
    saliency = np.zeros((16, 16))
    saliency[4:12, 4:12] = 0.3
    saliency[4, 4] = 1.0  # the maximum, on the box's own border row and column
    box = [[4, 4, 12, 12]]
    figure = viz.plot_attributions(image, {"m": saliency}, boxes=box, threshold=0.2, alpha=0.5)
    panel = next(a for a in figure.axes if a.get_title() == "m")
    picture = viz.overlay(image, saliency, boxes=box, threshold=0.2, alpha=0.5, outline="outside")
    grey = np.array([128, 128, 128])
    top = np.rint(0.5 * 128 + 0.5 * 255 * viz.colormap()[-1]).astype(int)
    # The picture: zero map -> the image; maximum -> the colormap's top, not hidden by the
    # outline; the ring just outside the box -> the outline colour.
    np.testing.assert_array_equal(picture[0, 0], grey)
    np.testing.assert_array_equal(picture[4, 4], top)
    np.testing.assert_array_equal(picture[3, 3], [0, 255, 0])
    np.testing.assert_array_equal(picture[12, 8], [0, 255, 0])
    assert not (picture[4:12, 4:12] == [0, 255, 0]).all(axis=-1).any()
    # The same pixels in the rendered figure (nearest-neighbour, so colours survive).
    for (row, col), expected in (((0, 0), grey), ((4, 4), top), ((3, 3), [0, 255, 0])):
        found = _pixel_at(figure, panel, picture, row, col)
        assert np.abs(found - np.asarray(expected)).max() <= 2, (row, col, found)


def test_overlay_outline_outside_keeps_the_region_visible() -> None:
    image = np.full((8, 10), 100, dtype=np.uint8)
    out = viz.overlay(image, np.zeros((8, 10)), alpha=0.0, boxes=[[2, 2, 5, 6]], outline="outside")
    drawn = (out == [0, 255, 0]).all(axis=-1)
    inside = np.zeros((8, 10), dtype=bool)
    inside[2:6, 2:5] = True
    ring = np.zeros((8, 10), dtype=bool)
    ring[1:7, 1:6] = True
    np.testing.assert_array_equal(drawn, ring & ~inside)
    mask = np.zeros((8, 10))
    mask[0:2, 0:2] = 1  # at the corner: the ring is clipped to the image
    masked = viz.overlay(image, np.zeros((8, 10)), alpha=0.0, mask=mask)
    expected = np.zeros((8, 10), dtype=bool)
    expected[0:3, 0:3] = True
    expected[0:2, 0:2] = False
    np.testing.assert_array_equal((masked == [0, 255, 0]).all(axis=-1), expected)
    with pytest.raises(ValueError, match="mask has shape"):
        viz.overlay(image, np.zeros((8, 10)), mask=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="outline"):
        viz.overlay(image, np.zeros((8, 10)), outline="thick")


def test_overlay_signed_is_centred_at_zero() -> None:
    image = np.zeros((2, 3), dtype=np.uint8)
    saliency = np.array([[-4.0, 0.0, 4.0], [2.0, -0.5, 0.5]])
    out = viz.overlay(image, saliency, alpha=1.0, signed=True).astype(int)
    table = viz.colormap("RdBu_r") * 255
    np.testing.assert_array_equal(out[0, 0], np.rint(table[0]))  # -max -> the blue end
    np.testing.assert_array_equal(out[0, 2], np.rint(table[-1]))  # +max -> the red end
    np.testing.assert_array_equal(out[0, 1], np.rint(table[128]))  # 0 -> the centre
    # The threshold is on |S|: -0.5 and 0.5 (1/8 of the maximum 4) are hidden at 0.2.
    thresholded = viz.overlay(image, saliency, alpha=1.0, signed=True, threshold=0.2)
    assert not thresholded[1, 1:].any() and thresholded[1, 0].any()


def test_volume_panels_slices_and_mips() -> None:
    volume = np.random.default_rng(0).random((6, 8, 10))
    saliency = np.zeros((6, 8, 10))
    saliency[2, 3, 4] = 1.0
    saliency[5, 0, 0] = 0.5
    panels = viz.volume_panels(volume, saliency, alpha=1.0, threshold=0.1)
    assert list(panels) == [
        "axial z=2",
        "coronal y=3",
        "sagittal x=4",
        "MIP axial",
        "MIP coronal",
        "MIP sagittal",
    ]
    shapes = [p.shape[:2] for p in panels.values()]
    assert shapes == [(8, 10), (6, 10), (6, 8), (8, 10), (6, 10), (6, 8)]
    top = np.rint(viz.colormap()[-1] * 255)
    np.testing.assert_array_equal(panels["axial z=2"][3, 4], top)
    np.testing.assert_array_equal(panels["MIP axial"][3, 4], top)
    half = np.rint(viz.colormap()[128] * 255)
    np.testing.assert_array_equal(panels["MIP axial"][0, 0], half)  # from slice 5
    assert not (panels["axial z=2"][0, 0] == half).all()  # not in slice 2
    with pytest.raises(ValueError, match="one volume"):
        viz.volume_panels(volume, saliency[0])


def test_save_figure_formats(tmp_path: Path) -> None:
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    image_module = pytest.importorskip("PIL.Image")
    figure = viz.plot_attributions(torch.rand(8, 8), {"saliency": torch.rand(8, 8)})
    assert viz.save_figure(tmp_path / "f.svg", figure).read_text().lstrip().startswith("<?xml")
    assert (tmp_path / "f.pdf").exists() is False
    assert viz.save_figure(tmp_path / "f.pdf", figure).read_bytes().startswith(b"%PDF")
    small, large = (viz.save_figure(tmp_path / f"f{d}.png", figure, dpi=d) for d in (50, 100))
    with image_module.open(small) as a, image_module.open(large) as b:
        assert abs(b.size[0] - 2 * a.size[0]) <= 2
    with pytest.raises(ValueError, match=r"\.png, \.svg or \.pdf"):
        viz.save_figure(tmp_path / "f.jpg", figure)


def test_display_names() -> None:
    assert viz.display_name("integrated_gradients") == "Integrated Gradients"
    assert viz.display_name("gradcam++") == "Grad-CAM++"
    assert viz.display_name("my_method") == "my method"


def test_colour_bars_show_the_map_units_and_the_threshold() -> None:
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    half = np.zeros((6, 6))
    half[1, 1] = 0.5  # a map in [0, 1] is shown as it is: the threshold is 0.2 * 0.5
    raw = np.linspace(-2, 6, 36).reshape(6, 6)  # min-max scaled: the bar spans [-2, 6]
    signed = np.linspace(-4, 2, 36).reshape(6, 6)
    expected = {"half": ((0, 1), [0.1]), "raw": ((-2, 6), [-2 + 0.2 * 8])}
    figure = viz.plot_attributions(np.zeros((6, 6)), {"half": half, "raw": raw}, threshold=0.2)
    signed_figure = viz.plot_attributions(
        np.zeros((6, 6)), {"signed": signed}, threshold=0.2, signed=True
    )
    bars = [a for a in figure.axes if not a.get_title()]
    bars += [a for a in signed_figure.axes if not a.get_title()]
    expected["signed"] = ((-4, 4), [-0.8, 0.8])
    for bar, (limits, levels) in zip(bars, expected.values(), strict=True):
        np.testing.assert_allclose(bar.get_ylim(), limits)
        np.testing.assert_allclose(sorted(line.get_ydata()[0] for line in bar.lines), levels)


def test_plot_volume_figure() -> None:
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    volume = np.random.default_rng(0).random((5, 6, 7))
    figure = viz.plot_volume(volume, volume, threshold=0.5, title="CT")
    titles = [a.get_title() for a in figure.axes if a.get_title()]
    assert len(titles) == 6 and titles[3:] == ["MIP axial", "MIP coronal", "MIP sagittal"]
    assert len(figure.axes) == 12  # a colour bar per panel


def test_volume_panels_threshold_is_a_fraction_of_the_whole_volume():
    """A voxel at 5% of the volume's maximum stays uncoloured at threshold 0.5, even on a slice
    where it is the slice's own maximum."""
    heat = np.zeros((4, 8, 8))
    heat[0, 2, 2] = 1.0
    heat[3, 5, 5] = 0.05
    image = np.random.default_rng(0).random((4, 8, 8))
    panels = viz.volume_panels(image, heat, threshold=0.5, at=(3, 5, 5))
    plain = viz.volume_panels(image, np.zeros_like(heat), threshold=0.5, at=(3, 5, 5))
    np.testing.assert_array_equal(panels["axial z=3"], plain["axial z=3"])
    coloured = viz.volume_panels(image, heat, threshold=0.5, at=(0, 2, 2))
    unmarked = viz.volume_panels(image, np.zeros_like(heat), threshold=0.5, at=(0, 2, 2))
    assert (coloured["axial z=0"] != unmarked["axial z=0"]).any()
