"""Volumes end to end: NIfTI volumes and a 3-D CNN through generate -> evaluate (voxel masks)
-> view, maps checked against direct library calls, NIfTI maps in the input's space."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_support import medical
from cli_support.tiny import run_cli

import torchattr as ta
from torchattr.cli._volumes import draw_outline, mask_localisation
from torchattr.metrics.localisation import squared_distances

nibabel = pytest.importorskip("nibabel")
FACTORY = "cli_support.medical:volume_factory"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One generate run (saliency, IG, Grad-CAM) on three NIfTI volumes."""
    root = tmp_path_factory.mktemp("volumes")
    data = medical.write_nifti_volumes(root / "vols")
    out = root / "maps"
    from torchattr.cli import main

    code = main(
        ["generate", FACTORY, str(root / "vols"), "-m", "saliency,integrated_gradients",
         "-m", "gradcam", "--layer", "features.4", "--steps", "4", "--batch-size", "2",
         "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    return {"root": root, "data": data, "out": out, "masks": root / "vols_masks"}


def _inputs(data: dict[str, np.ndarray]) -> torch.Tensor:
    """[N, 1, D, H, W] as the reader lays NIfTI (i, j, k) out: [k, j, i]."""
    return torch.stack([torch.from_numpy(data[n].transpose(2, 1, 0).copy()) for n in sorted(data)])[
        :, None
    ]


def _volume_normalised(maps: torch.Tensor) -> torch.Tensor:
    flat = maps.flatten(1)
    low, high = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    return ((flat - low) / (high - low)).reshape(maps.shape)


def test_generate_volume_maps_match_direct_calls(run: dict) -> None:
    model = medical.volume_factory()
    x = _inputs(run["data"])
    expected = {
        "saliency": ta.saliency(model, x),
        "integrated_gradients": ta.reduce_channels(
            ta.integrated_gradients(model, x, baseline=torch.zeros_like(x), steps=4)
        ),
        "gradcam": ta.cam(model, x, layer="features.4"),
    }
    for method, maps in expected.items():
        assert maps.shape == (3, 6, 8, 10)
        wanted = _volume_normalised(maps)  # min-max over the whole volume, not per slice
        for k, name in enumerate(sorted(run["data"])):
            saved = np.load(run["out"] / method / f"{name}.npy")
            assert saved.shape == (6, 8, 10)
            np.testing.assert_allclose(saved, wanted[k].numpy(), atol=1e-5, err_msg=method)
            assert saved.min() == 0 and saved.max() == 1


def test_nifti_maps_are_in_the_input_space(run: dict) -> None:
    for name in run["data"]:
        source = nibabel.load(run["root"] / "vols" / f"{name}.nii.gz")
        written = nibabel.load(run["out"] / "saliency" / f"{name}.nii.gz")
        np.testing.assert_array_equal(written.affine, source.affine)
        np.testing.assert_array_equal(written.header.get_sform(), source.header.get_sform())
        assert written.shape == source.shape == medical.SHAPE
        npy = np.load(run["out"] / "saliency" / f"{name}.npy")
        np.testing.assert_array_equal(written.get_fdata(dtype=np.float32), npy.transpose(2, 1, 0))
    record = json.loads((run["out"] / "run.json").read_text())["methods"]["saliency"]
    assert record["status"] == "complete" and record["maps"] == 3


def _brute_force(saliency: np.ndarray, mask: np.ndarray, tolerance: float) -> dict:
    """The four metrics written out on flat voxel arrays (no ties in random maps)."""
    s, m = saliency.ravel(), mask.ravel()
    k = int(m.sum())
    top = np.argsort(-s, kind="stable")[:k]
    peak = np.unravel_index(int(np.argmax(saliency)), saliency.shape)
    points = np.argwhere(mask)
    distance = np.sqrt(((points - np.array(peak)) ** 2).sum(axis=1)).min()
    return {
        "proportional_energy": (s * m).sum() / s.sum(),
        "saliency_focus": (s * m).sum() / k,
        "pointing_game": float(distance <= tolerance),
        "relevance_rank_accuracy": m[top].sum() / k,
    }


@pytest.mark.parametrize("tolerance", [0.0, 1.5, 3.0])
def test_mask_localisation_on_volumes_matches_brute_force(tolerance: float) -> None:
    g = torch.Generator().manual_seed(1)
    for trial in range(4):
        saliency = torch.rand(5, 6, 7, generator=g, dtype=torch.float64)
        mask = torch.zeros(5, 6, 7, dtype=torch.bool)
        mask[1 + trial % 2 : 3, 2:4, 1 + trial : 4 + trial] = True
        got = mask_localisation(saliency, mask, tolerance)
        wanted = _brute_force(saliency.numpy(), mask.numpy(), tolerance)
        assert got["boxes"] == 1
        for key, value in wanted.items():
            assert got[key] == pytest.approx(value, abs=1e-6), (key, trial)
    empty = mask_localisation(saliency, torch.zeros_like(mask), 0)
    assert empty["boxes"] == 0 and empty["pointing_game"] is None


def test_squared_distances_in_3d_brute_force() -> None:
    """The pointing game's voxel distances (the library's, which evaluate uses on volumes)."""
    mask = torch.zeros(4, 5, 6, dtype=torch.bool)
    mask[0, 1, 2] = mask[3, 4, 0] = True
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in mask.shape], indexing="ij"), -1)
    points = np.argwhere(mask.numpy())
    wanted = ((grid[..., None, :] - points) ** 2).sum(-1).min(-1)
    np.testing.assert_array_equal(squared_distances(mask[None])[0].numpy(), wanted)


def test_evaluate_volumes_with_voxel_masks(run: dict, capsys) -> None:
    out = run["root"] / "eval"
    code, _, err = run_cli(
        ["evaluate", FACTORY, run["root"] / "vols", run["out"] / "saliency", "--masks",
         run["masks"], "--no-road", "--tolerance", "2", "--out", out],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    rows = {r["image"]: r for r in json.loads((out / "per_image.json").read_text())["images"]}
    assert sorted(rows) == sorted(run["data"])
    for name in run["data"]:
        saliency = np.load(run["out"] / "saliency" / f"{name}.npy")
        label = nibabel.load(run["masks"] / f"{name}.nii.gz").get_fdata().transpose(2, 1, 0)
        wanted = _brute_force(saliency.astype(np.float64), label > 0, 2.0)
        for key, value in wanted.items():
            assert rows[name][key] == pytest.approx(value, abs=1e-5), (name, key)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["masks"] == str(run["masks"].resolve())
    assert summary["metrics"]["proportional_energy"]["n"] == 3
    # and compare: the evaluations of two methods side by side
    other = run["root"] / "eval_ig"
    code, _, err = run_cli(
        ["evaluate", FACTORY, run["root"] / "vols", run["out"] / "integrated_gradients",
         "--masks", run["masks"], "--no-road", "--out", other],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    code, printed, err = run_cli(["compare", out, other, "--out", run["root"] / "cmp"], capsys)
    assert code == 0, err
    assert "integrated_gradients" in printed and "proportional_energy" in printed


def test_evaluate_volumes_refuses_boxes_and_road_is_checked(run: dict, capsys) -> None:
    boxes = run["root"] / "boxes.json"
    boxes.write_text(json.dumps({"vol_0": [[0, 0, 4, 4]]}))
    code, _, err = run_cli(
        ["evaluate", FACTORY, run["root"] / "vols", run["out"] / "saliency", "--boxes", boxes,
         "--no-road", "--out", run["root"] / "eval_boxes"],
        capsys,
    )  # fmt: skip
    assert code == 1 and "voxel label mask" in err and len(err.strip().splitlines()) == 1
    # ROAD on volumes: the library's 3-D ROAD (26-neighbour imputation), per image
    out = run["root"] / "eval_road"
    code, _, err = run_cli(
        ["evaluate", FACTORY, run["root"] / "vols", run["out"] / "saliency", "--fractions",
         "25", "75", "--out", out],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    from torchattr import metrics
    from torchattr.data.seeding import derive_seed

    model = medical.volume_factory()
    rows = {r["image"]: r for r in json.loads((out / "per_image.json").read_text())["images"]}
    x = _inputs(run["data"])
    for k, name in enumerate(sorted(run["data"])):
        heat = torch.from_numpy(np.load(run["out"] / "saliency" / f"{name}.npy"))[None]
        target = int(model(x[k : k + 1]).argmax(1)[0])
        morf = metrics.road(
            model, x[k : k + 1], heat, target, fractions=(0.25, 0.75), order="morf",
            sigma=0.01, generator=torch.Generator().manual_seed(derive_seed(0, f"road/{name}")),
        )  # fmt: skip
        np.testing.assert_allclose(rows[name]["road_morf"], morf[0].tolist(), atol=1e-5)


def test_view_volumes_with_mask_outline(run: dict, capsys) -> None:
    from PIL import Image

    out = run["root"] / "view"
    code, printed, err = run_cli(
        ["view", run["root"] / "vols", run["out"] / "saliency", "--masks", run["masks"],
         "--out", out],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "3 overlays" in printed
    picture = np.asarray(Image.open(out / "vol_0.png"))
    # axial [H, W] = 8 x 10, coronal [D, W] = 6 x 10, sagittal [D, H] = 6 x 8, MIP 8 x 10
    assert picture.shape == (8, 10 + 10 + 8 + 10 + 3 * 2, 3)
    green = (picture == np.array([0, 255, 0], dtype=np.uint8)).all(-1)
    assert green[:, 10 + 2 + 10 + 2 + 8 + 2 :].any()  # the MIP panel shows the mask outline
    # the outline: mask pixels with a 4-neighbour outside the mask
    mask = np.zeros((5, 5), dtype=bool)
    mask[1:4, 1:4] = True
    drawn = draw_outline(np.zeros((5, 5, 3), np.uint8), mask)
    ring = (drawn == [0, 255, 0]).all(-1)
    assert ring.sum() == 8 and not ring[2, 2]


def test_view_refuses_out_of_volume_masks(run: dict, tmp_path: Path, capsys) -> None:
    masks = tmp_path / "masks"
    masks.mkdir()
    np.save(masks / "vol_0.npy", np.ones((6, 8, 9), dtype=np.uint8))
    code, _, err = run_cli(
        ["view", run["root"] / "vols", run["out"] / "saliency", "--masks", masks,
         "--out", tmp_path / "v"],
        capsys,
    )  # fmt: skip
    assert code == 1 and "shape [6, 8, 9]" in err


def test_tensor_volumes_match_direct_calls(tmp_path: Path, capsys) -> None:
    volumes = torch.rand(2, 1, 4, 6, 6, generator=torch.Generator().manual_seed(3))
    np.save(tmp_path / "vols.npy", volumes.numpy())
    out = tmp_path / "out"
    code, _, err = run_cli(
        ["generate", FACTORY, tmp_path / "vols.npy", "-m", "input_x_gradient", "--out", out],
        capsys,
    )
    assert code == 0, err
    model = medical.volume_factory()
    wanted = _volume_normalised(ta.reduce_channels(ta.input_x_gradient(model, volumes)))
    for k in range(2):
        saved = np.load(out / "input_x_gradient" / f"vols_{k:05d}.npy")
        np.testing.assert_allclose(saved, wanted[k].numpy(), atol=1e-5)
    assert not list((out / "input_x_gradient").glob("*.nii.gz"))  # NIfTI inputs only


def test_resume_keeps_volume_maps_and_clears_stale_nifti_temporaries(run: dict, capsys) -> None:
    folder = run["out"] / "saliency"
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    stale = [folder / ".vol_0.nii.gz.99999999.ab12.tmp", folder / ".vol_1.npy.99999999.cd34.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")
    code, printed, err = run_cli(
        ["generate", FACTORY, run["root"] / "vols", "-m", "saliency", "--out", run["out"]], capsys
    )
    assert code == 0, err
    assert "0 written, 3 already there" in printed
    assert "removed 2 leftover temporary files" in err
    assert not any(path.exists() for path in stale)
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before


def test_volume_view_threshold_is_a_fraction_of_the_whole_volume() -> None:
    """A voxel at 5% of the volume's maximum is not coloured at threshold 0.5, even where it is
    the maximum of its own slice (the axial mid-slice) or of its projection."""
    from torchattr import viz
    from torchattr.cli import _volumes

    pixels = torch.rand(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    heat = np.zeros((4, 8, 8), np.float32)
    heat[0, 1, 1] = 1.0
    weak = heat.copy()
    weak[2, 5, 5] = 0.05  # z = D // 2: on the axial mid-slice, alone there
    options = {"cmap": "viridis", "alpha": 0.5, "threshold": 0.5}
    shown = _volumes.volume_view(viz, pixels, weak, None, **options)
    np.testing.assert_array_equal(shown, _volumes.volume_view(viz, pixels, heat, None, **options))
    low = _volumes.volume_view(viz, pixels, weak, None, **{**options, "threshold": 0.01})
    assert (low != shown).any()  # below 5% the voxel is coloured: the test can fail
