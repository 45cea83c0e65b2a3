"""Tests of the demo command (torchattr.cli, torchattr.cli.demo) and of torchattr.io."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import torchattr as ta
from torchattr.cli import build_parser, demo, main
from torchattr.cli.demo import METHODS, METRICS, choose_explained, config_from_args
from torchattr.data import PhantomNet
from torchattr.io import normalize_map, save_map

ROOT = Path(__file__).resolve().parents[1]
N_QUICK = 4
SIZE = 64


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One ``torchattr demo --quick`` run in process: its folder and what it printed."""
    out = tmp_path_factory.mktemp("quick")
    state = torch.get_rng_state()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["demo", "--quick", "--out", out]) == 0
    assert torch.equal(state, torch.get_rng_state())  # the caller's random state is untouched
    return out, printed.getvalue()


def _maps(out: Path, count: int) -> dict[str, np.ndarray]:
    maps = {}
    for method in METHODS:
        files = sorted((out / "maps" / method).glob("*.npy"))
        assert len(files) == count, method
        for path in files:
            array = np.load(path)
            assert array.dtype == np.float32 and array.shape == (SIZE, SIZE)
            assert array.min() >= 0 and array.max() <= 1
            maps[f"{method}/{path.name}"] = array
    assert not list(out.rglob("*.tmp"))
    return maps


def _strict_json(path: Path) -> Any:
    def refuse(constant: str) -> None:
        raise ValueError(f"{path.name} holds {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_quick_demo_writes_every_output(quick: tuple[Path, str]) -> None:
    out, printed = quick
    maps = _maps(out, N_QUICK)
    manifest = _strict_json(out / "manifest.json")
    ids = [image["id"] for image in manifest["images"]]
    assert len(ids) == N_QUICK and manifest["methods"] == list(METHODS)
    assert {name.split("/")[1] for name in maps} == {f"{i}.npy" for i in ids}
    for image in manifest["images"]:
        assert len(image["boxes_xyxy"]) == 1
        assert 0 < image["area_fraction"] < 0.05
    assert sorted(p.name for p in (out / "overlays").iterdir()) == [f"{i}.png" for i in ids]
    for name in ("metrics.md", "metrics.json", "methods.png", "manifest.json"):
        assert (out / name).is_file(), name
    assert manifest["outputs"] == {
        "maps": "maps/<method>/<image id>.npy",
        "images": "images/<image id>.npy",
        "metrics_json": "metrics.json",
        "metrics_md": "metrics.md",
        "overlays": "overlays/<image id>.png",
        "plot": "methods.png",
    }
    # Printed: progress, the table with every method, and where everything went.
    assert "held-out accuracy" in printed and "uniform map (box area)" in printed
    # --quick trains enough to beat chance clearly, and says so.
    assert manifest["held_out_accuracy"] >= 0.8 and manifest["chance"]["p"] < demo.CHANCE_P
    assert "beats chance clearly" in printed
    # The report ends the demo: its path printed, every method and image in it.
    report = out / "report" / "index.html"
    assert f"report: {report.resolve()}" in printed
    page = report.read_text()
    assert len(manifest["model_sha256"]) == 64 and manifest["model_sha256"] in page
    for name in [*METHODS, *ids]:
        assert f'"{name}"' in page, name
    for image_id in ids:
        image = np.load(out / "images" / f"{image_id}.npy")
        assert image.shape == (SIZE, SIZE) and image.min() >= 0 and image.max() <= 1
        assert 0.5 < next(i["score"] for i in manifest["images"] if i["id"] == image_id) <= 1
    for method in METHODS:
        assert f"\n{method} " in printed
    for path in (
        "maps/<method>/<image id>.npy",
        "overlays/<image id>.png",
        "metrics.md",
        "metrics.json",
        "methods.png",
        "manifest.json",
    ):
        assert path in printed
    assert str(out) in printed


def test_quick_demo_metrics(quick: tuple[Path, str]) -> None:
    out, _ = quick
    record = _strict_json(out / "metrics.json")
    manifest = _strict_json(out / "manifest.json")
    assert record["images"] == [image["id"] for image in manifest["images"]]
    assert list(record["methods"]) == list(METHODS)
    assert set(record["metrics"]) == set(METRICS)
    fractions = record["road_fractions"]
    assert fractions == list(demo.QUICK["road_fractions"])
    bounds = {
        "proportional_energy": (0, 1),
        "saliency_focus": (0, 1),
        "pointing_game": (0, 1),
        "road": (-0.5, 0.5),  # half a difference of probabilities
    }
    for entry in [*record["methods"].values(), record["reference"]["random"]]:
        for metric, (low, high) in bounds.items():
            values = entry[metric]["per_image"]
            assert len(values) == N_QUICK
            assert all(low <= v <= high for v in values), metric
            assert entry[metric]["mean"] == pytest.approx(np.mean(values))
            assert entry[metric]["std"] == pytest.approx(np.std(values))
        for order in ("morf", "lerf"):
            curve = entry["road_curves"][order]
            assert len(curve) == len(fractions) and all(0 <= v <= 1 for v in curve)
    # Without ties (random maps) a pointing game is a hit or a miss; tied maxima (upsampled CAM
    # maps) score the expected value, in [0, 1].
    assert set(record["reference"]["random"]["pointing_game"]["per_image"]) <= {0.0, 1.0}
    area = record["box_area_fraction"]
    assert [a["area_fraction"] for a in manifest["images"]] == pytest.approx(area["per_image"])
    assert manifest["mean"]["saliency"]["road"] == pytest.approx(
        record["methods"]["saliency"]["road"]["mean"]
    )
    table = (out / "metrics.md").read_text()
    assert "| method | proportional energy | saliency focus | pointing game | ROAD |" in table
    for name in [*METHODS, "random (reference)", "uniform map (box area)"]:
        assert f"| {name} |" in table


def test_quick_demo_overlay_grids(quick: tuple[Path, str]) -> None:
    image_module = pytest.importorskip("PIL.Image")
    out, _ = quick
    scale, pad, label = demo.DemoConfig.overlay_scale, 4, 18
    panels = 1 + len(METHODS)
    columns, rows = 5, -(-panels // 5)  # the grid wraps: at most 5 panels a row
    manifest = _strict_json(out / "manifest.json")
    for path in (out / "overlays").iterdir():
        with image_module.open(path) as picture:
            assert picture.mode == "RGB"
            width, height = picture.size
            assert width == columns * SIZE * scale + (columns + 1) * pad
            assert height == rows * (SIZE * scale + label) + (rows + 1) * pad
            pixels = np.asarray(picture)
        # The first panel is the grey image with its lesion box outlined in green, just
        # outside the box: no pixel inside the box is green.
        first = pixels[pad + label : pad + label + SIZE * scale, pad : pad + SIZE * scale]
        green = (first == [0, 255, 0]).all(axis=-1)
        assert green.any() and (first[~green][:, 0] == first[~green][:, 2]).all()
        box = next(i for i in manifest["images"] if i["id"] == path.stem)["boxes_xyxy"][0]
        x1, y1, x2, y2 = (int(v) * scale for v in box)
        assert not green[y1:y2, x1:x2].any()
        assert green[y1 - 1, x1:x2].all() and green[y2, x1:x2].all()


def test_python_m_torchattr_demo_is_deterministic(quick: tuple[Path, str], tmp_path: Path) -> None:
    """The same options give the same files, also from a fresh interpreter."""
    first, _ = quick
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    again = tmp_path / "again"
    result = subprocess.run(
        [sys.executable, "-m", "torchattr", "demo", "--quick", "--out", str(again)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "proportional energy" not in result.stderr
    maps, repeated = _maps(first, N_QUICK), _maps(again, N_QUICK)
    assert maps.keys() == repeated.keys()
    assert all(np.array_equal(maps[k], repeated[k]) for k in maps)
    for name in ("metrics.json", "metrics.md"):
        assert (first / name).read_text() == (again / name).read_text(), name
    for overlay in (first / "overlays").iterdir():
        if overlay.read_bytes() != (again / "overlays" / overlay.name).read_bytes():
            image_module = pytest.importorskip("PIL.Image")
            with (
                image_module.open(overlay) as a,
                image_module.open(again / "overlays" / overlay.name) as b,
            ):
                x, y = np.asarray(a).astype(int), np.asarray(b).astype(int)
            rows, cols = np.nonzero(np.abs(x - y).sum(-1)) if x.shape == y.shape else ([], [])
            pytest.fail(
                f"{overlay.name} differs: shapes {x.shape} {y.shape}, {len(rows)} pixels, "
                f"rows {sorted(set(rows))[:20]}, cols {sorted(set(cols))[:20]}"
            )
    settings = _strict_json(first / "manifest.json")["settings"]
    assert settings.pop("out") == str(first)
    assert settings == {
        k: v for k, v in _strict_json(again / "manifest.json")["settings"].items() if k != "out"
    }


def _outputs_without(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *missing: str
) -> tuple[dict[str, str], list[str]]:
    """``write_outputs`` of a tiny untrained run with ``missing`` packages made unimportable."""
    for name in list(sys.modules):
        if any(name == m or name.startswith(m + ".") for m in missing):
            monkeypatch.setitem(sys.modules, name, None)
    for name in missing:
        monkeypatch.setitem(sys.modules, name, None)
    config = demo.DemoConfig(out=tmp_path, road_fractions=(0.5,))
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 1, SIZE, SIZE, generator=generator)
    boxes = [torch.tensor([[10, 10, 16, 16]]), torch.tensor([[30, 20, 36, 28]])]
    maps = {"saliency": torch.rand(2, SIZE, SIZE, generator=generator)}

    def fake_scores() -> dict[str, torch.Tensor]:
        scores = {metric: torch.rand(2, generator=generator) for metric in METRICS}
        return {**scores, "road_morf": torch.rand(2, 1), "road_lerf": torch.rand(2, 1)}

    scores, reference = {"saliency": fake_scores()}, fake_scores()
    area = torch.tensor([36.0, 48.0]) / SIZE**2
    notes: list[str] = []
    outputs = demo.write_outputs(
        config, images, boxes, ["a", "b"], maps, scores, reference, area, 0.5, notes.append
    )
    return outputs, notes


def test_demo_without_matplotlib_skips_the_plot(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    outputs, notes = _outputs_without(monkeypatch, tmp_path, "matplotlib")
    assert "plot" not in outputs and not (tmp_path / "methods.png").exists()
    assert any("matplotlib is not installed" in note for note in notes)
    assert sorted(p.name for p in (tmp_path / "overlays").iterdir()) == ["a.png", "b.png"]
    assert (tmp_path / "metrics.json").is_file() and (tmp_path / "maps" / "saliency").is_dir()


def test_demo_without_pillow_skips_the_overlays(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    outputs, notes = _outputs_without(monkeypatch, tmp_path, "PIL", "matplotlib")
    assert "overlays" not in outputs and not (tmp_path / "overlays").exists()
    assert any("Pillow is not installed" in note for note in notes)
    assert (tmp_path / "metrics.md").is_file()


def _fresh_demo_module(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A separate copy of torchattr.cli.demo, executed now (the registry is built at import)."""
    spec = importlib.util.spec_from_file_location("_torchattr_demo_copy", demo.__file__)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_methods_registry_takes_lrp_when_torchattr_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ("lrp" in METHODS) == hasattr(ta, "lrp")
    monkeypatch.delattr(ta, "lrp", raising=False)
    assert "lrp" not in _fresh_demo_module(monkeypatch).METHODS
    calls = []

    def fake_lrp(model: Any, inputs: torch.Tensor, target: Any = None) -> torch.Tensor:
        calls.append(inputs.shape)
        return -inputs  # relevance shaped like the input, any sign

    monkeypatch.setattr(ta, "lrp", fake_lrp, raising=False)
    methods = _fresh_demo_module(monkeypatch).METHODS
    assert list(methods)[-1] == "lrp"
    images = torch.rand(3, 1, 8, 8)
    maps = methods["lrp"](PhantomNet().eval(), images, demo.DemoConfig())
    assert calls == [images.shape]
    torch.testing.assert_close(maps, images[:, 0])  # |R| maximised over the channels


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
    assert quick.epochs == 3 and quick.n_train < 200 and quick.n_explain == N_QUICK
    full = config_from_args(parser.parse_args(["demo", "--seed", "7", "--out", "x"]))
    assert full.seed == 7 and full.out == Path("x") and full.n_train == 600


def test_demo_refuses_to_score_a_model_at_chance(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["demo", "--epochs", "1", "--n-train", "8", "--n-test", "16", "--out", tmp_path]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "not clearly better than chance" in captured.err
    assert "binomial p" in captured.out
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "maps").exists()


def test_chance_p_value_by_hand() -> None:
    assert demo.chance_p_value(4, 4) == pytest.approx(1 / 16)
    assert demo.chance_p_value(0, 4) == 1.0
    assert demo.chance_p_value(8, 10) == pytest.approx((45 + 10 + 1) / 1024)


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
