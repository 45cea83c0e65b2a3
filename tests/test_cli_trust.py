"""The command-line pipeline never hands out stale, mixed or NaN maps, and fails in one line.

Each test reproduces a defect of issue 13: maps kept after the data changed, a mix left by an
interrupted ``--overwrite``, ``--out`` on top of the inputs, NaN turned into zero maps, raw
tracebacks for OSErrors, evaluate with another model, distorted non-square images, maps at the
model's input size refused, and a TorchScript channel mismatch without a hint.
"""

from __future__ import annotations

import errno
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_support import tiny
from cli_support.tiny import run_cli
from PIL import Image
from torch.nn import functional as F

import torchattr as ta
import torchattr.cli._volumes as writer_module  # generate writes maps through it
from torchattr.cli._geometry import map_to_image
from torchattr.cli._records import record_path
from torchattr.io import load_maps, normalize_map, save_map

NAN_MODULE = '''
import torch
from cli_support.tiny import TinyNet


class NanNet(TinyNet):
    """TinyNet scaled by sqrt(x[0, 0, 0] - 0.5): NaN output and gradients where the top-left
    pixel of the first channel is dark."""

    def forward(self, x):
        return super().forward(x) * torch.sqrt(x[:, :1, 0, 0] - 0.5)


def factory():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return NanNet().eval()
'''


def _pixels(folder: Path, names: list[str]) -> torch.Tensor:
    arrays = [np.asarray(Image.open(folder / f"{n}.png"), dtype=np.float32) / 255 for n in names]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def _write(folder: Path, pixels: np.ndarray) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, image in enumerate(pixels):
        names.append(f"img_{i:02d}")
        Image.fromarray(image).save(folder / f"{names[-1]}.png")
    return names


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("trust")
    names = tiny.write_png_folder(root / "a", count=4)
    _write(root / "b", tiny.images(4, seed=7))  # the same names, other pixels
    return {"root": root, "names": names, "script": tiny.save_torchscript(root / "model.pt")}


def test_changed_data_under_the_same_names_is_recomputed(setup: dict, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    for folder in ("a", "b"):
        argv = ["generate", setup["script"], setup["root"] / folder, "-m", "saliency"]
        code, printed, err = run_cli([*argv, "--out", out], capsys)
        assert code == 0, err
    assert "(4 written, 0 already there)" in printed
    assert "4 maps recomputed, not kept (4 changed input)" in printed
    expected = normalize_map(
        ta.saliency(tiny.factory(), _pixels(setup["root"] / "b", setup["names"]))
    )
    for i, saved in enumerate(load_maps(out / "saliency").values()):
        np.testing.assert_allclose(saved, expected[i].numpy(), atol=1e-5)
    run = json.loads((out / "run.json").read_text())["methods"]["saliency"]
    assert run["recomputed"] == {"count": 4, "reasons": {"changed input": 4}}
    # one image changed: only its map is recomputed; the rest are kept
    (setup["root"] / "c").mkdir()
    for name in setup["names"]:
        source = setup["root"] / ("a" if name == "img_02" else "b") / f"{name}.png"
        (setup["root"] / "c" / f"{name}.png").write_bytes(source.read_bytes())
    argv = ["generate", setup["script"], setup["root"] / "c", "-m", "saliency", "--out", out]
    code, printed, _ = run_cli(argv, capsys)
    assert code == 0 and "(1 written, 3 already there)" in printed
    assert "1 map recomputed, not kept (1 changed input)" in printed


def test_interrupted_overwrite_never_leaves_a_mix(setup: dict, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    argv = ["generate", setup["script"], setup["root"] / "a", "-m", "integrated_gradients"]
    argv += ["--out", out, "--batch-size", "1"]
    assert run_cli([*argv, "--steps", "2"], capsys)[0] == 0
    calls = {"n": 0}
    real_save = writer_module.save_map

    def interrupted_after_two(path, array):  # Ctrl-C while writing the third map
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_save(path, array)

    monkeypatch.setattr(writer_module, "save_map", interrupted_after_two)
    code, _, err = run_cli([*argv, "--steps", "5", "--overwrite"], capsys)
    assert code == 130 and "interrupted" in err
    monkeypatch.undo()
    # the same command without --overwrite: the two new maps are kept, the two old ones redone
    code, printed, _ = run_cli([*argv, "--steps", "5"], capsys)
    assert code == 0 and "(2 written, 2 already there)" in printed
    assert "2 maps recomputed, not kept (1 changed options, 1 missing record)" in printed
    x = _pixels(setup["root"] / "a", setup["names"])
    raw = ta.reduce_channels(ta.integrated_gradients(tiny.factory(), x, steps=5))
    for i, saved in enumerate(load_maps(out / "integrated_gradients").values()):
        np.testing.assert_allclose(saved, normalize_map(raw[i]).numpy(), atol=1e-5)
    # a map written but its record not yet (killed between the two): never trusted
    path = out / "integrated_gradients" / "img_01.npy"
    record_path(path).unlink()
    code, printed, _ = run_cli([*argv, "--steps", "5"], capsys)
    assert code == 0 and "1 map recomputed, not kept (1 missing record)" in printed
    # a record that does not belong to the file next to it (another map copied over it)
    save_map(path, np.zeros((16, 16), np.float32))
    code, printed, _ = run_cli([*argv, "--steps", "5"], capsys)
    assert (
        code == 0 and "1 map recomputed, not kept (1 map changed after it was written)" in printed
    )


@pytest.mark.parametrize("where", ["same", "inside", "contains", "symlink"])
def test_out_on_the_inputs_is_refused(setup: dict, tmp_path, where: str, capsys) -> None:
    data = tmp_path / "data" / "images"
    names = tiny.write_png_folder(data, count=2)
    before = {p.name: p.read_bytes() for p in data.iterdir()}
    maps = tmp_path / "maps" / "saliency"
    for name in names:
        save_map(maps / f"{name}.npy", np.ones((16, 16), np.float32))
    if where == "symlink":
        (tmp_path / "link").symlink_to(data)
    out = {
        "same": data,
        "inside": data / "overlays",
        "contains": tmp_path / "data",
        "symlink": tmp_path / "link",
    }[where]
    for argv in (
        ["view", data, maps, "--out", out],
        ["generate", setup["script"], data, "-m", "saliency", "--out", out],
    ):
        code, _, err = run_cli(argv, capsys)
        assert code == 1 and "DATA" in err and "choose an --out outside it" in err, err
        assert err.count("error:") == 1 and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in data.iterdir()} == before
    code, _, err = run_cli(["view", data, maps, "--out", maps.parent], capsys)
    assert code == 1 and "contains MAPS" in err


def test_nan_outputs_are_failures_not_zero_maps(tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "nanmodels.py").write_text(NAN_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    pixels = tiny.images(4)
    pixels[[0, 2], 0, 0, 0] = 255  # bright corner: finite; images 1 and 3: NaN
    names = _write(tmp_path / "images", pixels)
    out = tmp_path / "out"
    argv = ["generate", "nanmodels:factory", tmp_path / "images", "-m", "saliency", "--out", out]
    code, _, err = run_cli(argv, capsys)
    assert code == 1 and "img_01" in err and "NaN or inf" in err
    assert not (out / "saliency" / "img_01.npy").exists()
    code, printed, err = run_cli([*argv, "--on-error", "skip"], capsys)
    assert code == 3, err  # partial
    assert "2 images without a map (NaN or inf values): img_01, img_03" in printed
    assert "exit code 3" in err
    assert sorted(load_maps(out / "saliency")) == [names[0], names[2]]
    run = json.loads((out / "run.json").read_text())["methods"]["saliency"]
    assert run["status"] == "incomplete" and run["maps"] == 2
    assert [f["image"] for f in run["failed"]] == ["img_01", "img_03"]
    sys.modules.pop("nanmodels", None)
    from nanmodels import factory

    x = _pixels(tmp_path / "images", names)
    expected = normalize_map(ta.saliency(factory(), x[[0, 2]]))
    np.testing.assert_allclose(load_maps(out / "saliency")["img_02"], expected[1].numpy(), 1e-5)
    # view with a NaN map: one line
    np.save(out / "saliency" / "img_01.npy", np.full((16, 16), np.nan, np.float32))
    code, _, err = run_cli(["view", tmp_path / "images", out / "saliency", "--out", tmp_path / "v"],
                           capsys)  # fmt: skip
    assert code == 1 and "img_01.npy holds 256 NaN or inf value(s)" in err
    assert err.count("error:") == 1


def test_os_errors_are_one_line_with_exit_code_4(setup, tmp_path, monkeypatch, capsys) -> None:
    images = setup["root"] / "a"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    argv = ["generate", setup["script"], images, "-m", "saliency"]
    code, _, err = run_cli([*argv, "--out", a_file], capsys)
    assert code == 4 and "is --out a file?" in err and err.count("error:") == 1

    def full(path, array):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(writer_module, "save_map", full)
    code, _, err = run_cli([*argv, "--out", tmp_path / "out"], capsys)
    assert code == 4 and "no space left on device (free some space" in err
    assert "img_00.npy" in err and "Traceback" not in err and err.count("error:") == 1
    monkeypatch.undo()

    import torchattr.viz

    def read_only(path, picture):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    maps = tmp_path / "maps"
    for name in setup["names"]:
        save_map(maps / f"{name}.npy", np.ones((16, 16), np.float32))
    monkeypatch.setattr(torchattr.viz, "save_png", read_only)
    code, _, err = run_cli(["view", images, maps, "--out", tmp_path / "v"], capsys)
    assert code == 4 and "read-only" in err and err.count("error:") == 1
    monkeypatch.undo()
    # a map that is not a .npy array: one line, exit 1
    (maps / "img_00.npy").write_text("not a map")
    code, _, err = run_cli(["view", images, maps, "--out", tmp_path / "v"], capsys)
    assert code == 1 and "not a readable .npy map" in err and err.count("error:") == 1
    # boxes that are a binary file or a folder: one line each
    (tmp_path / "boxes.json").write_bytes(b"\xff\xfe\x00binary")
    (tmp_path / "folder.json").mkdir()
    for boxes, code_wanted, message in (
        (tmp_path / "boxes.json", 1, "not UTF-8 text"),
        (tmp_path / "folder.json", 1, "no such file"),
    ):
        save_map(maps / "img_00.npy", np.ones((16, 16), np.float32))
        view = ["view", images, maps, "--out", tmp_path / "v", "--boxes", boxes]
        code, _, err = run_cli(view, capsys)
        assert code == code_wanted and message in err and err.count("error:") == 1, err
        assert "Traceback" not in err


def test_evaluate_refuses_another_model(setup: dict, tmp_path, capsys) -> None:
    images = setup["root"] / "a"
    tiny.write_boxes_json(tmp_path / "boxes.json", setup["names"])
    out = tmp_path / "maps"
    argv = ["generate", setup["script"], images, "-m", "saliency", "--out", out]
    assert run_cli(argv, capsys)[0] == 0
    torch.manual_seed(1)
    other = tiny.TinyNet().eval()
    torch.jit.save(torch.jit.script(other), str(tmp_path / "other.pt"))
    evaluate = ["evaluate", tmp_path / "other.pt", images, out / "saliency", "--fractions", "50"]
    evaluate += ["--out", tmp_path / "eval"]
    code, _, err = run_cli(evaluate, capsys)
    from torchattr.cli._records import file_digest

    mine, theirs = file_digest(tmp_path / "other.pt"), file_digest(setup["script"])
    assert code == 1 and mine in err and theirs in err and "--allow-model-mismatch" in err
    assert not (tmp_path / "eval").exists()
    code, _, err = run_cli([*evaluate, "--allow-model-mismatch"], capsys)
    assert code == 0 and "warning" in err and mine in err
    # a folder mixing maps of two models is refused even when run.json names the right one
    record = json.loads(record_path(out / "saliency" / "img_01.npy").read_text())
    record["model"] = "0" * 64
    record_path(out / "saliency" / "img_01.npy").write_text(json.dumps(record))
    evaluate[1] = setup["script"]
    code, _, err = run_cli(evaluate, capsys)
    assert code == 1 and "img_01.npy (its record)" in err and "0" * 64 in err
    # maps of folder A scored against folder B (the same names): refused, even without ROAD
    evaluate = ["evaluate", setup["script"], setup["root"] / "b", out / "saliency", "--no-road"]
    evaluate += ["--boxes", tmp_path / "boxes.json", "--out", tmp_path / "eval_b"]
    code, _, err = run_cli(evaluate, capsys)
    assert code == 1 and "img_00.npy was made from another image" in err


def test_pad_square_and_maps_at_the_model_input_size(setup: dict, tmp_path, capsys) -> None:
    wide = np.concatenate([tiny.images(3), tiny.images(3, seed=3)[:, :, :8]], axis=2)  # 16 x 24
    names = _write(tmp_path / "images", wide)
    out = tmp_path / "out"
    argv = ["generate", setup["script"], tmp_path / "images", "-m", "saliency", "--out", out]
    assert run_cli([*argv, "--resize", "16", "16", "--pad", "square"], capsys)[0] == 0
    x = _pixels(tmp_path / "images", names)  # [3, 3, 16, 24]
    square = F.pad(x, (0, 0, 4, 4))  # 24 x 24, the image in rows 4:20
    inputs = F.interpolate(
        square, size=(16, 16), mode="bilinear", align_corners=False, antialias=True
    )
    raw = ta.saliency(tiny.factory(), inputs)
    for i, saved in enumerate(load_maps(out / "saliency").values()):
        assert saved.shape == (16, 24)
        back = F.interpolate(
            raw[i][None, None], size=(24, 24), mode="bilinear", align_corners=False
        )
        back = back[0, 0, 4:20]
        np.testing.assert_allclose(saved, normalize_map(back).numpy(), atol=1e-5)
    run = json.loads((out / "run.json").read_text())["methods"]["saliency"]
    assert run["preprocessing"]["pad"] == "square"

    # maps at the model input's size (16 x 16, as other tools write them) are carried back
    small = tmp_path / "small" / "saliency"
    carried = tmp_path / "carried" / "saliency"
    for i, name in enumerate(names):
        heat = normalize_map(torch.rand(16, 16, generator=torch.Generator().manual_seed(i)))
        save_map(small / f"{name}.npy", heat)
        save_map(carried / f"{name}.npy", map_to_image(heat, (16, 24), "square"))
    tiny.write_boxes_json(tmp_path / "boxes.json", names)
    results = {}
    for folder in (small, carried):
        evaluate = ["evaluate", setup["script"], tmp_path / "images", folder, "--no-road"]
        evaluate += ["--boxes", tmp_path / "boxes.json", "--resize", "16", "16", "--pad", "square"]
        code, _, err = run_cli([*evaluate, "--out", folder.parent / "eval"], capsys)
        assert code == 0, err
        results[folder] = json.loads((folder.parent / "eval" / "per_image.json").read_text())
        view = ["view", tmp_path / "images", folder, "--out", folder.parent / "view"]
        code, _, err = run_cli([*view, "--resize", "16", "16", "--pad", "square"], capsys)
        assert code == 0, err
    assert results[small]["images"] == results[carried]["images"]
    for name in names:
        first = (small.parent / "view" / f"{name}.png").read_bytes()
        assert first == (carried.parent / "view" / f"{name}.png").read_bytes()
    code, _, err = run_cli(["view", tmp_path / "images", small, "--out", tmp_path / "v"], capsys)
    assert code == 1 and "has shape [16, 16] but the image is 16x24" in err


def test_torchscript_channel_mismatch_names_both_counts(setup: dict, tmp_path, capsys) -> None:
    torch.jit.save(torch.jit.script(tiny.grey_factory()), str(tmp_path / "grey.pt"))
    argv = ["generate", tmp_path / "grey.pt", setup["root"] / "a", "-m", "saliency"]
    code, _, err = run_cli([*argv, "--out", tmp_path / "out"], capsys)
    assert code == 1 and "TorchScript" in err
    assert "first convolution takes 1 channel(s) but the preprocessed images have 3" in err


EDITED_MODULE = """
import torch
from cli_support.tiny import TinyNet


class Edited(TinyNet):
    def forward(self, x):
        return super().forward(ACTIVATION(x))


def factory():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return Edited().eval()
"""


def test_an_edit_of_the_model_code_recomputes_the_maps(setup: dict, tmp_path, monkeypatch, capsys):
    """Same weights, another forward: the factory's source is part of the model's hash."""
    monkeypatch.syspath_prepend(str(tmp_path))
    module = tmp_path / "editedmodels.py"
    out = tmp_path / "out"
    argv = ["generate", "editedmodels:factory", setup["root"] / "a", "-m", "saliency"]
    argv += ["--out", out]
    module.write_text(EDITED_MODULE.replace("ACTIVATION", "torch.relu"))
    assert run_cli(argv, capsys)[0] == 0
    module.write_text(EDITED_MODULE.replace("ACTIVATION", "torch.nn.functional.gelu"))
    sys.modules.pop("editedmodels", None)
    code, _, err = run_cli(argv, capsys)  # the run's model changed: refused, never kept
    assert code == 1 and "maps made with other settings: model editedmodels:factory" in err
    code, printed, err = run_cli([*argv, "--overwrite"], capsys)
    assert code == 0 and "(4 written, 0 already there)" in printed, err
    code, printed, _ = run_cli(argv, capsys)  # unchanged code: every map kept
    assert code == 0 and "(0 written, 4 already there)" in printed
