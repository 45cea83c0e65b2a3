"""End-to-end tests of ``torchattr generate`` (through torchattr.cli.main and a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_support import tiny
from cli_support.tiny import run_cli, subprocess_env

import torchattr as ta
from torchattr.cli.generate import finish_map, lrp_function
from torchattr.io import load_maps, normalize_map

FACTORY = "cli_support.tiny:factory"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("generate")
    names = tiny.write_png_folder(root / "images")
    return {
        "root": root,
        "names": names,
        "images": root / "images",
        "script": tiny.save_torchscript(root / "model.pt"),
        "export": tiny.save_export(root / "model.pt2"),
    }


def _pixels(folder: Path, names: list[str]) -> torch.Tensor:
    from PIL import Image

    arrays = [np.asarray(Image.open(folder / f"{n}.png"), dtype=np.float32) / 255 for n in names]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def test_png_folder_torchscript_maps_match_direct_calls(setup: dict, capsys) -> None:
    out = setup["root"] / "out"
    code, printed, _ = run_cli(
        [
            "generate", setup["script"], setup["images"], "--method",
            "saliency,input_x_gradient", "-m", "integrated_gradients", "--steps", "6",
            "--out", out, "--batch-size", "4",
        ],
        capsys,
    )  # fmt: skip
    assert code == 0
    assert "saliency: 6/6 maps" in printed and "run.json" in printed
    model = tiny.factory()
    x = _pixels(setup["images"], setup["names"])
    expected = {
        "saliency": ta.saliency(model, x),
        "input_x_gradient": ta.reduce_channels(ta.input_x_gradient(model, x)),
        "integrated_gradients": ta.reduce_channels(ta.integrated_gradients(model, x, steps=6)),
    }
    for method, raw in expected.items():
        maps = load_maps(out / method)
        assert list(maps) == setup["names"]
        for i, name in enumerate(setup["names"]):
            saved = maps[name]
            assert saved.dtype == np.float32 and saved.shape == (16, 16)
            assert saved.min() == 0 and saved.max() == 1
            np.testing.assert_allclose(saved, normalize_map(raw[i]).numpy(), atol=1e-5)
    record = json.loads((out / "run.json").read_text())["methods"]
    assert set(record) == set(expected)
    ig = record["integrated_gradients"]
    assert ig["status"] == "complete" and ig["maps"] == 6 and ig["written"] == 6
    assert ig["options"] == {"steps": 6, "rule": "gausslegendre", "baseline": 0.0}
    assert ig["model"]["kind"] == "torchscript" and len(ig["model"]["sha256"]) == 64
    assert ig["target"] == "argmax" and ig["data"]["images"] == 6
    assert not list(out.rglob("*.tmp"))


def test_tensor_files_resize_normalise_and_names(tmp_path: Path, capsys) -> None:
    data = tiny.write_tensor(tmp_path / "scans.npy", count=5)
    model_path = tiny.save_torchscript(tmp_path / "m.pt")
    mean, std = [0.2, 0.3, 0.4], [0.5, 0.6, 0.7]
    out = tmp_path / "out"
    argv = ["generate", model_path, tmp_path / "scans.npy", "-m", "saliency", "--out", out]
    argv += ["--resize", "24", "20", "--mean", *map(str, mean), "--std", *map(str, std)]
    assert run_cli([*argv, "--target", "1"], capsys)[0] == 0
    maps = load_maps(out / "saliency")
    assert list(maps) == [f"scans_{i:05d}" for i in range(5)]
    resized = torch.nn.functional.interpolate(
        data, size=(24, 20), mode="bilinear", align_corners=False, antialias=True
    )
    inputs = (resized - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    raw = ta.saliency(tiny.factory(), inputs, 1)
    for i, saved in enumerate(maps.values()):
        assert saved.shape == (16, 16)  # the image's own size
        np.testing.assert_allclose(saved, finish_map(raw[i], (16, 16)).numpy(), atol=1e-5)
    record = json.loads((out / "run.json").read_text())["methods"]["saliency"]
    assert record["preprocessing"]["resize"] == [24, 20] and record["target"] == 1

    # a .pt dict with names, grey [N, H, W] images repeated over RGB
    grey = torch.rand(3, 16, 16)
    torch.save({"images": grey, "names": ["c", "a", "b"]}, tmp_path / "grey.pt")
    out2 = tmp_path / "out2"
    argv = ["generate", model_path, tmp_path / "grey.pt", "-m", "saliency", "--out", out2]
    assert run_cli([*argv, "--grayscale-to-rgb"], capsys)[0] == 0
    maps = load_maps(out2 / "saliency")
    expected = normalize_map(ta.saliency(tiny.factory(), grey[:, None].expand(-1, 3, -1, -1)))
    assert list(maps) == ["a", "b", "c"]
    for name, index in (("c", 0), ("a", 1), ("b", 2)):
        np.testing.assert_allclose(maps[name], expected[index].numpy(), atol=1e-5)

    # --names for a tensor file
    (tmp_path / "names.txt").write_text("p1\np2\np3\n")
    torch.save(grey, tmp_path / "plain.pt")
    argv = ["generate", model_path, tmp_path / "plain.pt", "-m", "saliency", "--out", out2]
    argv += ["--grayscale-to-rgb", "--names", tmp_path / "names.txt"]
    assert run_cli(argv, capsys)[0] == 0
    assert {"p1", "p2", "p3"} <= set(load_maps(out2 / "saliency"))


def test_factory_cam_smoothgrad_and_static_export(setup: dict, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    argv = ["generate", FACTORY, setup["images"], "-m", "cam", "--cam-method", "gradcam++"]
    argv += ["-m", "smoothgrad", "--samples", "3", "--layer", "features.2", "--out", out]
    assert run_cli([*argv, "--batch-size", "4"], capsys)[0] == 0
    x = _pixels(setup["images"], setup["names"])
    cams = ta.cam(tiny.factory(), x, layer="features.2", method="gradcam++")
    maps = load_maps(out / "gradcam++")
    for i, name in enumerate(setup["names"]):
        np.testing.assert_allclose(maps[name], normalize_map(cams[i]).numpy(), atol=1e-5)
    # SmoothGrad draws per image: the same maps whatever the batch size
    again = tmp_path / "again"
    argv = ["generate", FACTORY, setup["images"], "-m", "smoothgrad", "--samples", "3"]
    assert run_cli([*argv, "--out", again, "--batch-size", "1"], capsys)[0] == 0
    first, second = load_maps(out / "smoothgrad"), load_maps(again / "smoothgrad")
    for name in first:
        np.testing.assert_allclose(first[name], second[name], atol=1e-6)

    # an export with a fixed batch of 2 takes batches of 4 and a last batch of 1 (6 images)
    static = tiny.save_export(tmp_path / "static.pt2", dynamic=False)
    argv = ["generate", static, setup["images"], "-m", "saliency,integrated_gradients"]
    assert (
        run_cli([*argv, "--steps", "3", "--out", tmp_path / "e", "--batch-size", "5"], capsys)[0]
        == 0
    )
    argv = ["generate", setup["export"], setup["images"], "-m", "saliency"]
    assert run_cli([*argv, "--out", tmp_path / "d"], capsys)[0] == 0
    reference = normalize_map(ta.saliency(tiny.factory(), x))
    for folder in (tmp_path / "e", tmp_path / "d"):
        for i, saved in enumerate(load_maps(folder / "saliency").values()):
            np.testing.assert_allclose(saved, reference[i].numpy(), atol=1e-5)


def test_lrp_method(setup: dict, tmp_path: Path, capsys) -> None:
    argv = ["generate", FACTORY, setup["images"], "-m", "lrp", "--out", tmp_path]
    code, _, err = run_cli(argv, capsys)
    if lrp_function() is None:
        assert code == 1 and "torchattr.lrp is missing" in err
    else:
        assert code == 0, err
        maps = load_maps(tmp_path / "lrp")
        assert len(maps) == 6 and all(m.shape == (16, 16) for m in maps.values())
        assert all(m.min() >= 0 and m.max() <= 1 for m in maps.values())


def test_lrp_on_an_exported_program_equals_the_factory_model(setup, tmp_path, capsys) -> None:
    factory = tmp_path / "factory"
    exported = tmp_path / "exported"
    for model, out in ((FACTORY, factory), (setup["export"], exported)):
        code, _, err = run_cli(["generate", model, setup["images"], "-m", "lrp", "--out", out],
                               capsys)  # fmt: skip
        assert code == 0, err
    ours, theirs = load_maps(factory / "lrp"), load_maps(exported / "lrp")
    assert ours.keys() == theirs.keys()
    for name in ours:
        np.testing.assert_allclose(ours[name], theirs[name], atol=1e-5)


def test_lrp_on_torchscript_is_refused_in_one_line(setup, tmp_path, capsys) -> None:
    argv = ["generate", setup["script"], setup["images"], "-m", "lrp", "--out", tmp_path]
    code, _, err = run_cli(argv, capsys)
    assert code in (1, 2) and "TorchScript" in err and "Traceback" not in err


def test_resume_after_interruption(setup: dict, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    argv = ["generate", setup["script"], setup["images"], "-m", "saliency", "--out", out]
    assert run_cli(argv, capsys)[0] == 0
    folder = out / "saliency"
    before = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.npy")}
    # an interruption: one map never written, one half-written by a non-atomic copy, and
    # the temporary file of a killed write
    (folder / "img_01.npy").unlink()
    whole = (folder / "img_04.npy").read_bytes()
    (folder / "img_04.npy").write_bytes(whole[: len(whole) // 2])
    (folder / ".img_01.npy.999999999.abcd1234.tmp").write_bytes(whole[:50])
    os.utime(folder / "img_04.npy", ns=(before["img_04.npy"], before["img_04.npy"]))
    code, printed, err = run_cli(argv, capsys)
    assert code == 0
    assert "(2 written, 4 already there)" in printed
    assert "removed 1 leftover temporary file" in err
    after = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.npy")}
    assert sorted(after) == sorted(before)
    changed = {n for n in after if after[n] != before.get(n)}
    assert changed == {"img_01.npy", "img_04.npy"}
    assert not list(folder.rglob("*.tmp"))
    assert sorted(p.name for p in (folder / ".records").iterdir()) == [
        f"{n}.json" for n in setup["names"]
    ]
    reference = normalize_map(ta.saliency(tiny.factory(), _pixels(setup["images"], ["img_04"])))
    np.testing.assert_allclose(np.load(folder / "img_04.npy"), reference[0].numpy(), atol=1e-5)
    record = json.loads((out / "run.json").read_text())["methods"]["saliency"]
    assert (record["written"], record["kept"], record["maps"]) == (2, 4, 6)

    # other settings are refused; --overwrite recomputes everything
    code, _, err = run_cli([*argv, "--target", "2"], capsys)
    assert code == 1 and "holds maps made with other settings" in err and "target" in err
    code, printed, _ = run_cli([*argv, "--target", "2", "--overwrite"], capsys)
    assert code == 0 and "(6 written, 0 already there)" in printed
    assert json.loads((out / "run.json").read_text())["methods"]["saliency"]["target"] == 2


def test_unreadable_images_stop_or_skip(setup: dict, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "images"
    names = tiny.write_png_folder(folder, count=4)
    whole = (folder / "img_02.png").read_bytes()
    (folder / "img_02.png").write_bytes(whole[:-60])  # header fine, pixels truncated
    (folder / "notes.png").write_text("not an image")
    argv = ["generate", setup["script"], folder, "-m", "saliency", "--out", tmp_path / "out"]
    code, _, err = run_cli(argv, capsys)
    assert code == 1 and "notes (" in err and "--on-error skip" in err
    assert not (tmp_path / "out" / "saliency").exists()
    (folder / "notes.png").unlink()
    code, _, err = run_cli(argv, capsys)
    assert code == 1 and "img_02.png: cannot read the image" in err
    assert not list((tmp_path / "out").rglob("*.npy"))
    code, printed, err = run_cli([*argv, "--on-error", "skip"], capsys)
    assert code == 3  # partial: one image has no map
    assert "skipped img_02.png" in err and "1 image skipped (unreadable): img_02" in err
    assert "3/4 maps" in printed
    assert sorted(load_maps(tmp_path / "out" / "saliency")) == [n for n in names if n != "img_02"]
    record = json.loads((tmp_path / "out" / "run.json").read_text())["methods"]["saliency"]
    assert record["status"] == "incomplete" and record["failed"][0]["image"] == "img_02"


def _bad_inputs(root: Path, setup: dict) -> list[tuple[list, str]]:
    images, script = setup["images"], setup["script"]
    torch.save(tiny.factory().state_dict(), root / "weights.pt")
    sizes = root / "sizes"
    tiny.write_png_folder(sizes, count=2)
    tiny.write_png_folder(root / "big", count=1, size=20)
    (root / "big" / "img_00.png").rename(sizes / "large.png")
    mixed = root / "mixed"
    tiny.write_png_folder(mixed, count=2)
    from PIL import Image

    Image.fromarray(np.zeros((16, 16), np.uint8)).save(mixed / "grey.png")
    np.save(root / "last.npy", np.zeros((2, 16, 16, 3), np.float32))
    np.save(root / "scans.npy", np.zeros((2, 3, 16, 16), np.float32))
    (root / "two.txt").write_text("a\nb\nc\n")
    (root / "empty").mkdir()
    return [
        (["generate", root / "nope.pt", images], "MODEL"),
        (["generate", root / "weights.pt", images], "a torch.save checkpoint"),
        (["generate", root / "two.txt", images], "not a readable TorchScript archive"),
        (["generate", "cli_support.tiny:missing", images], "has no attribute 'missing'"),
        (["generate", "no_such_package.mod:f", images], "cannot import no_such_package.mod"),
        (["generate", "cli_support.tiny:not_a_model", images], "expected an nn.Module"),
        (["generate", "cli_support.tiny:broken_factory", images], "weights not found"),
        (["generate", script, root / "missing"], "DATA"),
        (["generate", script, root / "empty"], "no images found"),
        (["generate", script, sizes], "different sizes"),
        (["generate", script, mixed], "--grayscale-to-rgb"),
        (["generate", script, root / "last.npy"], "channels-last"),
        (["generate", script, root / "scans.npy", "--names", root / "two.txt"], "3 names"),
        (["generate", script, images, "--target", "3"], "--target 3 is out of range"),
        (["generate", script, images, "--mean", "0.1", "0.2"], "--mean has 2 values"),
        (["generate", script, images, "--std", "0"], "--std must hold numbers > 0"),
        (["generate", script, images, "--resize", "20", "20", "-m", "gradcam"], "--layer"),
        (["generate", script, images, "-m", "gradcam", "--layer", "features"], "hooks"),
        (["generate", FACTORY, images, "-m", "gradcam", "--layer", "featurs.2"], "features.2"),
        (["generate", "cli_support.tiny:grey_factory", images], "channels"),
    ]


def test_bad_inputs_fail_cleanly(setup: dict, tmp_path: Path, capsys) -> None:
    for k, (argv, message) in enumerate(_bad_inputs(tmp_path, setup)):
        out = tmp_path / f"out_{k}"
        if "-m" not in argv:
            argv = [*argv, "-m", "saliency"]
        code, _, err = run_cli([*argv, "--out", out], capsys)
        assert code == 1, (argv, err)
        assert "torchattr generate: error:" in err and message in err, (message, err)
        assert not list(out.rglob("*.npy")) and not list(out.rglob("*.tmp")), argv


def test_bad_options_exit_2(setup: dict, capsys) -> None:
    from torchattr.cli import main

    start = ["generate", str(setup["script"]), str(setup["images"])]
    for argv, message in (
        ([*start, "--out", "x"], "--method"),
        ([*start, "-m", "gradcam,bogus", "--out", "x"], "unknown method bogus"),
        ([*start, "-m", "saliency", "--target", "cat"], "expected 'argmax' or a class index"),
        ([*start, "-m", "saliency", "--out", "x", "--batch-size", "0"], "integer >= 1"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


def test_python_m_torchattr_subprocess(tmp_path: Path) -> None:
    """`python -m torchattr` with a factory module next to the user (the current folder)."""
    (tmp_path / "my_models.py").write_text(
        "import torch\n\n"
        "def build():\n"
        "    torch.manual_seed(0)\n"
        "    return torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.ReLU(),\n"
        "        torch.nn.Flatten(), torch.nn.Linear(2 * 8 * 8, 2))\n"
    )
    np.save(tmp_path / "scans.npy", np.random.default_rng(0).random((3, 8, 8)).astype(np.float32))
    env = subprocess_env()
    run = subprocess.run(
        [
            sys.executable, "-m", "torchattr", "generate", "my_models:build", "scans.npy",
            "--method", "saliency", "--out", "maps",
        ],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "saliency: 3/3 maps" in run.stdout and "\r" not in run.stderr  # no bar without a tty
    maps = load_maps(tmp_path / "maps" / "saliency")
    assert list(maps) == ["scans_00000", "scans_00001", "scans_00002"]
