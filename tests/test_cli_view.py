"""End-to-end tests of ``torchattr view``: overlays of maps on their images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cli_support import tiny
from cli_support.tiny import run_cli
from PIL import Image

from torchattr.io import save_map

VIRIDIS_TOP = np.array([0.993248, 0.906157, 0.143936])  # matplotlib's viridis at 1.0: yellow


@pytest.fixture
def data(tmp_path: Path) -> dict:
    names = tiny.write_png_folder(tmp_path / "images", count=3)
    maps = tmp_path / "maps" / "saliency"
    for name in names:
        heat = np.zeros((16, 16), np.float32)
        heat[2:6, 3:7] = 1.0  # shown
        heat[10, 10] = 0.1  # below the 0.2 threshold: not shown
        save_map(maps / f"{name}.npy", heat)
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"img_01": [[8, 8, 14, 13]]}))
    return {"root": tmp_path, "names": names, "maps": maps, "boxes": boxes}


def test_overlay_pixels(data: dict, capsys) -> None:
    out = data["root"] / "view"
    argv = ["view", data["root"] / "images", data["maps"], "--out", out, "--boxes", data["boxes"]]
    code, printed, _ = run_cli(argv, capsys)
    assert code == 0 and "wrote 3 overlays" in printed
    assert sorted(p.name for p in out.iterdir()) == [f"{n}.png" for n in data["names"]]
    for name in data["names"]:
        image = np.asarray(Image.open(data["root"] / "images" / f"{name}.png")).astype(float)
        picture = np.asarray(Image.open(out / f"{name}.png"))
        assert picture.shape == (16, 16, 3) and picture.dtype == np.uint8
        shown = np.zeros((16, 16), bool)
        shown[2:6, 3:7] = True
        framed = np.zeros((16, 16), bool)
        if name == "img_01":  # the ring just outside the box [8:13, 8:14]: rows 7 and 13,
            framed[[7, 13], 7:15] = True  # columns 7 and 14, corners included; the box's own
            framed[7:14, [7, 14]] = True  # pixels keep the map
            assert not (framed & shown).any()
        plain = ~shown & ~framed
        np.testing.assert_array_equal(picture[plain], image[plain])  # map zero or below 0.2
        blended = np.rint(0.5 * image[shown] + 0.5 * 255 * VIRIDIS_TOP)
        np.testing.assert_array_equal(picture[shown], blended)
        if framed.any():
            assert (picture[framed] == [0, 255, 0]).all()


def test_alpha_threshold_cmap_and_grey_images(data: dict, capsys) -> None:
    folder = data["root"] / "grey"
    folder.mkdir()
    grey = (np.arange(256).reshape(16, 16)).astype(np.uint8)
    Image.fromarray(grey).save(folder / "img_00.png")
    out = data["root"] / "view"
    argv = ["view", folder, data["maps"], "--out", out, "--threshold", "0", "--alpha", "1"]
    argv += ["--cmap", "gray", "--on-error", "skip"]
    code, _, err = run_cli(argv, capsys)
    assert code == 0 and "maps of images not in DATA: img_01, img_02" in err
    picture = np.asarray(Image.open(out / "img_00.png"))
    assert (picture[2:6, 3:7] == 255).all()  # alpha 1, gray colormap at 1: white
    assert (picture[10, 10] == 25).all()  # threshold 0: 0.1 is shown (LUT entry 25 of 255)
    np.testing.assert_array_equal(picture[0, 0], [0, 0, 0])  # map zero: the grey image
    np.testing.assert_array_equal(picture[15, 15], [255, 255, 255])


def test_several_methods_side_by_side(data: dict, capsys) -> None:
    other = data["root"] / "maps" / "integrated_gradients"
    for name in data["names"]:
        save_map(other / f"{name}.npy", np.random.default_rng(0).random((16, 16)))
    out = data["root"] / "view"
    argv = ["view", data["root"] / "images", data["maps"], other, "--out", out]
    code, printed, _ = run_cli(argv, capsys)
    assert code == 0 and "wrote 6 overlays" in printed
    assert sorted(p.name for p in out.iterdir()) == [
        "integrated_gradients",
        "saliency",
        "side_by_side",
    ]
    assert len(list((out / "side_by_side").glob("*.png"))) == 3
    assert not list(out.rglob("*.tmp"))


def test_bad_inputs(data: dict, capsys) -> None:
    root = data["root"]
    images, maps = root / "images", data["maps"]
    save_map(root / "small" / "img_00.npy", np.zeros((8, 8)))
    (root / "unknown.json").write_text(json.dumps({"img_09": [[0, 0, 2, 2]]}))
    extra = root / "extra"
    save_map(extra / "ghost.npy", np.zeros((16, 16)))
    cases = [
        (["view", images, root / "nowhere"], "MAPS"),
        (["view", images, root / "small"], "has shape [8, 8] but the image is 16x16"),
        (["view", images, maps, "--boxes", root / "unknown.json"], "not in DATA: img_09"),
        (["view", images, maps, "--boxes", root / "none.csv"], "no such file"),
        (["view", images, maps, "--cmap", "no_such_map"], "--cmap"),
        (["view", images, extra], "maps of images not in DATA: ghost"),
        (["view", root / "nothing", maps], "DATA"),
    ]
    for k, (argv, message) in enumerate(cases):
        out = root / f"out_{k}"
        code, _, err = run_cli([*argv, "--out", out], capsys)
        assert code == 1 and "torchattr view: error:" in err and message in err, (argv, err)
        assert not list(out.rglob("*.png"))
