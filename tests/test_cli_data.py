"""Tests of the command line's inputs: boxes, image reading, names, models, shards, help."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_support import tiny
from cli_support.tiny import run_cli
from PIL import Image

from torchattr.cli import build_parser, main
from torchattr.cli._common import CommandError, Reporter
from torchattr.cli._data import (
    ExportedBatches,
    Preprocess,
    check_box_names,
    load_boxes,
    load_model,
    open_images,
)
from torchattr.cli._dist import Distributed, setup
from torchattr.cli._progress import progress


def test_boxes_json_layouts(tmp_path: Path) -> None:
    path = tmp_path / "boxes.json"
    path.write_text(
        json.dumps(
            {
                "a.png": [[1, 2, 5, 6], {"box": [0, 0, 2, 2], "label": "nodule"}],
                "b": [3, 3, 4, 4],
                "c": [{"x1": 1.5, "y1": 0.2, "x2": 2.5, "y2": 3.0}],
                "d": [],
            }
        )
    )
    assert load_boxes(path) == {
        "a": [(1, 2, 5, 6, None), (0, 0, 2, 2, "nodule")],
        "b": [(3, 3, 4, 4, None)],
        "c": [(1, 0, 3, 3, None)],  # fractional corners widened to whole pixels
        "d": [],
    }
    path.write_text(json.dumps([{"name": "a", "bbox": [0, 0, 1, 1]}, {"image": "e"}]))
    assert load_boxes(path) == {"a": [(0, 0, 1, 1, None)], "e": []}


def test_boxes_csv_with_and_without_header(tmp_path: Path) -> None:
    path = tmp_path / "boxes.csv"
    path.write_text("label,x2,y2,x1,y1,image\nlesion,5,6,1,2,a.jpg\n,9,9,7,7,a.jpg\n,,,,,b\n")
    assert load_boxes(path) == {"a": [(1, 2, 5, 6, "lesion"), (7, 7, 9, 9, None)], "b": []}
    path.write_text("a,1,2,5,6\na,0,0,1,1,second\nc\n")
    assert load_boxes(path) == {"a": [(1, 2, 5, 6, None), (0, 0, 1, 1, "second")], "c": []}


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("b.json", "{not json", "not valid JSON"),
        ("b.json", '{"a": [[1, 2, 3]]}', "4 coordinates"),
        ("b.json", '{"a": [["x", 0, 1, 1]]}', "must be numbers"),
        ("b.json", '{"a": [[5, 5, 1, 1]]}', "not x, y, width, height"),
        ("b.json", '[{"x1": 1}]', "no image name"),
        ("b.csv", "", "empty"),
        ("b.csv", "a,1,2,,4\n", "line 1"),
        ("b.csv", "name,left,top\n", "needs columns image, x1, y1, x2, y2"),
        ("b.xml", "<boxes/>", ".json or .csv"),
    ],
)
def test_bad_boxes(tmp_path: Path, name: str, text: str, message: str) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(CommandError, match=message):
        load_boxes(tmp_path / name)


def test_box_names_must_be_known(capsys) -> None:
    boxes = {"a": [], "zz": [(0, 0, 1, 1, None)]}
    with pytest.raises(CommandError, match=r"1 image.* not in DATA: zz"):
        check_box_names(boxes, ["a", "b"], "f.json", "stop", Reporter("x"))
    assert check_box_names(boxes, ["a"], "f.json", "skip", Reporter("x")) == {"a": []}
    assert "warning" in capsys.readouterr().err


def test_image_modes_are_read_as_floats_in_unit_range(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    deep = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    Image.fromarray(deep).save(folder / "deep.png")  # 16-bit grey
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 10
    Image.fromarray(rgba).save(folder / "rgba.png")
    Image.fromarray(np.full((8, 8), 51, np.uint8)).convert("P").save(folder / "palette.png")
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(folder / "photo.JPG", quality=100)
    images = open_images(folder)
    assert images.names == ["deep", "palette", "photo", "rgba"]
    assert images.channels == {"deep": 1, "palette": 3, "photo": 3, "rgba": 3}
    np.testing.assert_allclose(images.load("deep")[0].numpy(), deep / 65535, rtol=1e-6)
    assert torch.equal(
        images.load("rgba"), torch.tensor([1.0, 0, 0])[:, None, None].expand(3, 8, 8)
    )
    assert images.load("palette").shape == (3, 8, 8)
    assert abs(float(images.load("photo").mean()) - 200 / 255) < 0.01
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "deep.jpeg")
    with pytest.raises(CommandError, match="two images are named 'deep'"):
        open_images(folder)


def test_tensor_data_scaling_names_and_checks(tmp_path: Path) -> None:
    np.save(tmp_path / "u8.npy", np.full((2, 1, 4, 4), 255, np.uint8))
    images = open_images(tmp_path / "u8.npy")
    assert images.names == ["u8_00000", "u8_00001"] and images.sizes["u8_00001"] == (4, 4)
    assert torch.equal(images.load("u8_00000"), torch.ones(1, 4, 4))
    bad = np.zeros((2, 4, 4), np.float32)
    bad[1, 0, 0] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    images = open_images(tmp_path / "nan.npy")
    with pytest.raises(Exception, match="NaN or inf"):
        images.load("nan_00001")
    torch.save({"pixels": torch.zeros(2, 4, 4)}, tmp_path / "dict.pt")
    torch.save({"images": torch.zeros(2, 4, 4), "names": ["a", "a"]}, tmp_path / "dup.pt")
    torch.save({"images": torch.zeros(1, 4, 4), "names": ["../x"]}, tmp_path / "path.pt")
    np.save(tmp_path / "flat.npy", np.zeros((4, 4)))
    (tmp_path / "n.txt").write_text("a\n")
    for path, names, message in (
        ("dict.pt", None, "without an 'images' entry"),
        ("dup.pt", None, "repeated: a"),
        ("path.pt", None, "not allowed"),
        ("flat.npy", None, r"shape \[4, 4\]"),
        ("u8.npy", "n.txt", "lists 1 names for 2 images"),
        ("u8.txt", None, "no such file"),
    ):
        with pytest.raises(CommandError, match=message):
            open_images(tmp_path / path, None if names is None else str(tmp_path / names))
    with pytest.raises(CommandError, match="tensor DATA only"):
        open_images(tmp_path, str(tmp_path / "n.txt"))


def test_preprocess_order_and_baseline() -> None:
    grey = torch.rand(1, 6, 6)
    prep = Preprocess(resize=(3, 3), mean=(0.5,), std=(0.25, 0.5, 1.0), grayscale_to_rgb=True)
    out = prep(grey)
    small = torch.nn.functional.interpolate(
        grey[None], size=(3, 3), mode="bilinear", antialias=True
    )[0]
    expected = (small.expand(3, -1, -1) - 0.5) / torch.tensor([0.25, 0.5, 1.0])[:, None, None]
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(prep.baseline(0.0, 3).flatten(), torch.tensor([-2.0, -1.0, -0.5]))
    with pytest.raises(CommandError, match="--std has 3 values but the images have 1"):
        Preprocess(std=(1.0, 1.0, 1.0))(grey)


def test_exported_batches_pad_and_split() -> None:
    seen = []

    def program(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.shape[0])
        assert x.shape[0] == 4
        return x.flatten(1).sum(dim=1, keepdim=True) * torch.arange(1, 3)

    wrapped = ExportedBatches(program, 4, 4)  # type: ignore[arg-type]
    x = torch.rand(9, 2, requires_grad=True)
    out = wrapped(x)
    assert seen == [4, 4, 4] and out.shape == (9, 2)
    torch.testing.assert_close(out, x.sum(dim=1, keepdim=True) * torch.arange(1, 3))
    out.sum().backward()
    torch.testing.assert_close(x.grad, torch.full((9, 2), 3.0))  # padded rows add nothing


def test_static_export_is_wrapped_and_checked(tmp_path: Path) -> None:
    loaded = load_model(str(tiny.save_export(tmp_path / "m.pt2", dynamic=False)), "cpu")
    assert isinstance(loaded.module, ExportedBatches) and loaded.kind == "export"
    assert loaded.module(torch.rand(5, 3, 16, 16)).shape == (5, 3)
    with pytest.raises(CommandError, match=r"takes inputs \['B', 3, 16, 16\]"):
        loaded.check_input((1, 16, 16))


def test_shards_are_disjoint_and_complete() -> None:
    names = [f"n{i}" for i in range(11)]
    shards = [Distributed(rank=r, world=3).shard(names) for r in range(3)]
    assert (
        sorted(n for shard in shards for n in shard) == sorted(names) and shards[1] == names[1::3]
    )
    single = setup("cpu")  # no torchrun variables: one process, nothing initialised
    assert (single.rank, single.world, single.active, str(single.device)) == (0, 1, False, "cpu")
    assert single.gather({"x": 1}) == [{"x": 1}]
    with pytest.raises(CommandError, match="not a device"):
        setup("gpu0")


def test_progress_is_silent_without_a_terminal(capsys) -> None:
    with progress(5, "x") as bar:
        bar.update(5)
    assert capsys.readouterr().err == ""


def test_help_of_every_command(capsys) -> None:
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert {"generate", "view", "evaluate", "compare", "demo"} <= set(commands)
    for command in ("generate", "view", "evaluate", "compare"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert f"usage: torchattr {command}" in capsys.readouterr().out
    assert main([]) == 2


def test_data_package_reads_by_kind(tmp_path: Path) -> None:
    """Names of every format reduce to the stem (``.nii.gz`` as one suffix); volumes of
    different sizes cannot be batched, and the message says so."""
    from torchattr.cli._data.base import file_stem, image_name
    from torchattr.cli._data.images import check_uniform_size

    assert file_stem(Path("ct_01.nii.gz")) == "ct_01" and image_name("x.dcm") == "x"
    assert image_name("a.b") == "a.b"  # not a known format: kept as written
    boxes = tmp_path / "b.json"
    boxes.write_text(json.dumps({"ct_01.nii.gz": [[0, 0, 2, 2]]}))
    assert list(load_boxes(boxes)) == ["ct_01"]

    from types import SimpleNamespace

    volumes = SimpleNamespace(path=tmp_path, sizes={"a": (4, 8, 8), "b": (5, 8, 8)})
    with pytest.raises(CommandError, match="volumes are given to the model at their own size"):
        check_uniform_size(volumes, ["a", "b"], resize=(8, 8))


def test_evaluate_with_png_masks_matches_the_metrics(tmp_path: Path, capsys) -> None:
    from PIL import Image

    from torchattr import metrics

    names = tiny.write_png_folder(tmp_path / "images", count=3)
    maps = tmp_path / "maps"
    code, _, err = run_cli(
        ["generate", "cli_support.tiny:factory", tmp_path / "images", "-m", "saliency",
         "--out", maps],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    masks = tmp_path / "masks"
    masks.mkdir()
    wanted = {}
    for name, (x1, y1, x2, y2) in zip(names[:2], tiny.lesion_boxes(3)):
        label = np.zeros((tiny.SIZE, tiny.SIZE), dtype=np.uint8)
        label[y1:y2, x1:x2] = 3
        label[0, 0] = 1  # several labels: all of them are foreground
        Image.fromarray(label).save(masks / f"{name}.png")
        saliency = torch.from_numpy(np.load(maps / "saliency" / f"{name}.npy"))[None]
        region = torch.from_numpy(label > 0)[None]
        wanted[name] = {
            "proportional_energy": float(metrics.proportional_energy(saliency, region)[0]),
            "pointing_game": float(metrics.pointing_game(saliency, region, tolerance=1)[0]),
            "relevance_rank_accuracy": float(metrics.relevance_rank_accuracy(saliency, region)[0]),
        }
    out = tmp_path / "eval"
    code, _, err = run_cli(
        ["evaluate", "cli_support.tiny:factory", tmp_path / "images", maps / "saliency",
         "--masks", masks, "--no-road", "--tolerance", "1", "--out", out],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    rows = {r["image"]: r for r in json.loads((out / "per_image.json").read_text())["images"]}
    for name, values in wanted.items():
        for key, value in values.items():
            assert rows[name][key] == pytest.approx(value, abs=1e-6)
    assert rows[names[2]]["boxes"] == 0 and rows[names[2]]["pointing_game"] is None
    code, _, err = run_cli(
        ["evaluate", "cli_support.tiny:factory", tmp_path / "images", maps / "saliency",
         "--masks", masks, "--boxes", masks / "x.json", "--out", out],
        capsys,
    )  # fmt: skip
    assert code == 1 and "give one ground truth" in err
