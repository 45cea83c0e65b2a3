"""Tests of the demo command (torchattr.cli, torchattr.cli.demo) and of torchattr.io."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from torchattr.cli import build_parser, main
from torchattr.cli.demo import METHODS, choose_explained, config_from_args
from torchattr.io import normalize_map, save_map

ROOT = Path(__file__).resolve().parents[1]


def _check_maps(out: Path, count: int) -> dict[str, np.ndarray]:
    maps = {}
    for method in METHODS:
        files = sorted((out / method).glob("*.npy"))
        assert len(files) == count, method
        for path in files:
            array = np.load(path)
            assert array.dtype == np.float32 and array.shape == (64, 64)
            assert array.min() >= 0 and array.max() <= 1
            maps[f"{method}/{path.name}"] = array
    assert not list(out.rglob("*.tmp"))
    return maps


def test_quick_demo_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = torch.get_rng_state()
    assert main(["demo", "--quick", "--out", tmp_path]) == 0
    assert torch.equal(state, torch.get_rng_state())  # the caller's random state is untouched
    printed = capsys.readouterr().out
    assert "held-out accuracy" in printed and "uniform map (box area)" in printed
    for method in METHODS:
        assert method in printed
    maps = _check_maps(tmp_path, 4)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["methods"] == list(METHODS)
    assert len(manifest["images"]) == 4
    for image in manifest["images"]:
        assert len(image["boxes_xyxy"]) == 1
        assert 0 < image["area_fraction"] < 0.05
        assert all(0 <= v <= 1 for v in image["proportional_energy"].values())

    # Same seed, same files.
    again = tmp_path / "again"
    assert main(["demo", "--quick", "--out", str(again)]) == 0
    repeated = _check_maps(again, 4)
    assert maps.keys() == repeated.keys()
    assert all(np.array_equal(maps[k], repeated[k]) for k in maps)


def test_python_m_torchattr_demo(tmp_path: Path) -> None:
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torchattr",
            "demo",
            "--quick",
            "--n-explain",
            "2",
            "--out",
            str(tmp_path / "demo"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "proportional energy" in result.stdout
    _check_maps(tmp_path / "demo", 2)


def test_main_without_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "demo" in capsys.readouterr().out


@pytest.mark.parametrize("option", [["--epochs", "0"], ["--n-test", "1"], ["--seed", "x"]])
def test_bad_option_exits_2(option: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["demo", *option])
    assert info.value.code == 2


def test_quick_preset_and_explicit_options() -> None:
    parser = build_parser()
    quick = config_from_args(parser.parse_args(["demo", "--quick", "--epochs", "3"]))
    assert quick.epochs == 3 and quick.n_train < 200 and quick.n_explain == 4
    full = config_from_args(parser.parse_args(["demo", "--seed", "7", "--out", "x"]))
    assert full.seed == 7 and full.out == Path("x") and full.n_train == 600


def test_choose_explained_prefers_true_positives() -> None:
    labels = torch.tensor([1, 0, 1, 1, 0])
    chosen, all_true = choose_explained(torch.tensor([1, 1, 0, 1, 0]), labels, 5)
    assert chosen.tolist() == [0, 3] and all_true
    chosen, all_true = choose_explained(torch.zeros(5, dtype=torch.long), labels, 2)
    assert chosen.tolist() == [0, 2] and not all_true


# torchattr.io


def test_normalize_map_per_sample_and_constant() -> None:
    maps = torch.stack([torch.arange(6.0).reshape(2, 3) * 2 + 1, torch.full((2, 3), 4.0)])
    out = normalize_map(maps)
    torch.testing.assert_close(out[0], torch.arange(6.0).reshape(2, 3) / 5)
    torch.testing.assert_close(out[1], torch.zeros(2, 3))
    assert normalize_map(torch.tensor([[1, 3]])).dtype == torch.float32
    four = normalize_map(torch.rand(2, 3, 5, 5))
    assert torch.allclose(four.amin(dim=(-2, -1)), torch.zeros(2, 3))
    assert torch.allclose(four.amax(dim=(-2, -1)), torch.ones(2, 3))
    with pytest.raises(ValueError):
        normalize_map(torch.ones(3))
    with pytest.raises(TypeError):
        normalize_map(np.ones((2, 2)))


def test_save_map_atomic_float32(tmp_path: Path) -> None:
    path = save_map(tmp_path / "sub" / "img_1", torch.arange(6, dtype=torch.float64).reshape(2, 3))
    assert path == tmp_path / "sub" / "img_1.npy"
    loaded = np.load(path)
    assert loaded.dtype == np.float32 and loaded.shape == (2, 3)
    np.testing.assert_array_equal(loaded, np.arange(6, dtype=np.float32).reshape(2, 3))
    save_map(path, np.zeros((2, 3)))  # replaces the existing file
    assert not np.load(path).any()
    assert sorted(p.name for p in path.parent.iterdir()) == ["img_1.npy"]
    with pytest.raises(TypeError):
        save_map(tmp_path / "bad.npy", [1.0, 2.0])
