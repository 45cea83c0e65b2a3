"""End-to-end tests of ``torchattr evaluate``: values against direct calls of torchattr.metrics."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_support import tiny
from cli_support.tiny import run_cli
from PIL import Image

from torchattr import metrics
from torchattr.cli._data import resize_map
from torchattr.data.seeding import derive_seed
from torchattr.io import load_map, save_map

FRACTIONS = (0.2, 0.4, 0.6, 0.8)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("evaluate")
    names = tiny.write_png_folder(root / "images")
    model = tiny.save_torchscript(root / "model.pt")
    boxes = tiny.lesion_boxes(len(names))
    with (root / "boxes.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "x1", "y1", "x2", "y2", "label"])
        writer.writerow(["img_00.png", *boxes[0], "lesion"])
        writer.writerow(["img_00.png", 12, 12, 16, 16, "second"])  # two boxes for one image
        for name, box in zip(names[1:4], boxes[1:4]):
            writer.writerow([name, *box, ""])
        writer.writerow(["img_05", "", "", "", "", ""])  # listed without boxes; img_04 unlisted
    return {"root": root, "names": names, "model": model, "boxes": boxes}


def _pixels(root: Path, name: str) -> torch.Tensor:
    image = np.asarray(Image.open(root / "images" / f"{name}.png"), dtype=np.float32) / 255
    return torch.from_numpy(image).permute(2, 0, 1)


def _expected_road(model, x: torch.Tensor, heat: torch.Tensor, name: str) -> dict:
    target = int(model(x[None]).argmax(dim=1)[0])
    curves = {
        order: metrics.road(
            model, x[None], heat[None], target, fractions=FRACTIONS, order=order,
            sigma=0.01, generator=torch.Generator().manual_seed(derive_seed(0, f"road/{name}")),
        )
        for order in ("morf", "lerf")
    }  # fmt: skip
    summary = metrics.road_summary(curves["morf"], curves["lerf"], FRACTIONS)
    return {
        "target": target,
        "road_morf": curves["morf"][0].tolist(),
        "road_lerf": curves["lerf"][0].tolist(),
        "road_score": float(summary.per_image[0]),
    }


def test_values_match_direct_metric_calls(setup: dict, capsys) -> None:
    root = setup["root"]
    maps = root / "gen" / "saliency"
    argv = ["generate", setup["model"], root / "images", "-m", "saliency", "--out", root / "gen"]
    argv += ["--resize", "20", "20"]
    assert run_cli(argv, capsys)[0] == 0
    out = root / "eval"
    argv = ["evaluate", setup["model"], root / "images", maps, "--boxes", root / "boxes.csv"]
    code, printed, _ = run_cli([*argv, "--out", out], capsys)
    assert code == 0
    assert "| proportional_energy | 4 |" in printed and "| road_score | 6 |" in printed
    assert sorted(p.name for p in out.iterdir()) == [
        "histograms.png", "per_image.csv", "per_image.json", "summary.json", "summary.md",
    ]  # fmt: skip
    rows = json.loads((out / "per_image.json").read_text())["images"]
    assert [r["image"] for r in rows] == setup["names"]
    model = tiny.factory()
    boxes = {n: [b] for n, b in zip(setup["names"][:4], setup["boxes"][:4])}
    boxes["img_00"].append([12, 12, 16, 16])
    for row in rows:
        name = row["image"]
        heat = torch.from_numpy(load_map(maps / f"{name}.npy"))
        if name in boxes:
            xyxy = [torch.tensor(boxes[name])]
            assert row["boxes"] == len(boxes[name])
            for metric in ("proportional_energy", "saliency_focus", "relevance_rank_accuracy"):
                direct = float(getattr(metrics, metric)(heat[None], xyxy)[0])
                assert row[metric] == pytest.approx(direct, abs=1e-7), metric
            assert row["pointing_game"] == float(
                metrics.pointing_game(heat[None], xyxy, tolerance=15)[0]
            )
        else:
            assert row["boxes"] == 0 and row["proportional_energy"] is None
            assert row["pointing_game"] is None
        # ROAD on the model input: resized to 20 x 20 as recorded in run.json, map resized too
        x = torch.nn.functional.interpolate(
            _pixels(root, name)[None], size=(20, 20), mode="bilinear", antialias=True
        )[0]
        expected = _expected_road(model, x, resize_map(heat, (20, 20)), name)
        assert row["target"] == expected["target"]
        np.testing.assert_allclose(row["road_morf"], expected["road_morf"], atol=1e-6)
        np.testing.assert_allclose(row["road_lerf"], expected["road_lerf"], atol=1e-6)
        assert row["road_score"] == pytest.approx(expected["road_score"], abs=1e-6)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"images": 6, "with_boxes": 4, "skipped": 0}
    assert summary["preprocessing"]["resize"] == [20, 20]
    assert summary["road"]["fractions"] == list(FRACTIONS)
    for metric in ("proportional_energy", "pointing_game", "road_score"):
        values = np.array([float(r[metric]) for r in rows if r[metric] is not None])
        stats = summary["metrics"][metric]
        assert stats["n"] == len(values)
        assert stats["mean"] == pytest.approx(values.mean())
        assert stats["std"] == pytest.approx(values.std(ddof=1))
        q1, median, q3 = np.percentile(values, [25, 50, 75])
        assert (stats["q1"], stats["median"], stats["q3"]) == pytest.approx((q1, median, q3))
        assert (stats["min"], stats["max"]) == pytest.approx((values.min(), values.max()))
    morf = np.array([r["road_morf"] for r in rows])
    assert summary["road_curves"]["morf"] == pytest.approx(morf.mean(axis=0).tolist())
    assert summary["metrics"]["road_morf_40"]["mean"] == pytest.approx(morf[:, 1].mean())
    markdown = (out / "summary.md").read_text()
    assert "| metric | n | mean | std | min | q1 | median | q3 | max |" in markdown
    assert "2 image(s) have no box" in markdown
    table = list(csv.DictReader((out / "per_image.csv").open()))
    assert [r["image"] for r in table] == setup["names"] and table[4]["proportional_energy"] == ""
    assert float(table[0]["road_morf_20"]) == pytest.approx(rows[0]["road_morf"][0])


def test_localisation_only_and_json_boxes(setup: dict, tmp_path: Path, capsys) -> None:
    root = setup["root"]
    maps = tmp_path / "maps"
    for name in setup["names"]:
        heat = np.zeros((16, 16), np.float32)
        heat[0:4, 0:4] = 1
        save_map(maps / f"{name}.npy", heat)
    boxes = tmp_path / "boxes.json"
    boxes.write_text(
        json.dumps([{"image": n, "x1": 0, "y1": 0, "x2": 8, "y2": 8} for n in setup["names"]])
    )
    argv = ["evaluate", "not-loaded.pt", root / "images", maps, "--boxes", boxes, "--no-road"]
    code, printed, _ = run_cli([*argv, "--out", tmp_path / "out", "--tolerance", "0"], capsys)
    assert code == 0 and "road_score" not in printed
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["metrics"]["proportional_energy"]["mean"] == pytest.approx(1.0)
    assert summary["metrics"]["saliency_focus"]["mean"] == pytest.approx(0.25)
    # K = 64: the 16 ones, and 48 of the 240 tied zeros, 48 of them in the box: (16 + 9.6) / 64
    assert summary["metrics"]["relevance_rank_accuracy"]["mean"] == pytest.approx(0.4)
    assert summary["metrics"]["pointing_game"]["mean"] == 1.0 and summary["road_curves"] is None


def test_bad_inputs(setup: dict, tmp_path: Path, capsys) -> None:
    root = setup["root"]
    images, model = root / "images", setup["model"]
    maps = tmp_path / "maps"
    for name in setup["names"]:
        save_map(maps / f"{name}.npy", np.random.default_rng(0).random((16, 16)))
    (tmp_path / "unknown.json").write_text(json.dumps({"img_77": [[0, 0, 4, 4]]}))
    (tmp_path / "xywh.csv").write_text("img_00,10,10,4,4\n")
    partial = tmp_path / "partial"
    shutil.copytree(maps, partial)
    (partial / "img_03.npy").unlink()
    small = tmp_path / "small"
    shutil.copytree(maps, small)
    save_map(small / "img_02.npy", np.zeros((8, 8)))
    cases = [
        (["evaluate", model, images, maps, "--boxes", tmp_path / "unknown.json"], "img_77"),
        (["evaluate", model, images, maps, "--boxes", tmp_path / "xywh.csv"], "x2 < x1"),
        (["evaluate", model, images, partial], "have no map"),
        (["evaluate", model, images, small], "has shape [8, 8]"),
        (["evaluate", model, images, maps, "--no-road"], "nothing to evaluate"),
        (["evaluate", model, images, tmp_path / "nowhere"], "MAPS"),
        (["evaluate", model, images, maps, "--target", "7"], "target 7 is out of range"),
        (["evaluate", tmp_path / "nope.pt", images, maps], "MODEL"),
        (["evaluate", model, images, maps, "--fractions", "20", "40"], "have no partner"),
    ]
    for k, (argv, message) in enumerate(cases):
        out = tmp_path / f"out_{k}"
        code, _, err = run_cli([*argv, "--out", out], capsys)
        assert code == 1 and "torchattr evaluate: error:" in err and message in err, (argv, err)
        assert not out.exists() or not any(out.iterdir())
    # with --on-error skip: warnings, the others evaluated
    argv = ["evaluate", model, images, partial, "--boxes", tmp_path / "unknown.json"]
    code, _, err = run_cli([*argv, "--out", tmp_path / "ok", "--on-error", "skip"], capsys)
    assert code == 3 and "img_77" in err and "img_03" in err  # 3: partial (img_03 has no map)
    summary = json.loads((tmp_path / "ok" / "summary.json").read_text())
    assert summary["counts"]["images"] == 5 and summary["counts"]["with_boxes"] == 0
    assert summary["counts"]["skipped"] == 1
    assert [s["image"] for s in summary["skipped"]] == ["img_03"]
    assert "no map" in summary["skipped"][0]["error"]


def test_skip_counts_lists_and_exits_partial(setup: dict, tmp_path: Path, capsys) -> None:
    """--on-error skip: an unreadable image, a NaN map and an unreadable map are left out,
    counted, listed (summary.json, summary.md, stderr), and the exit code is 3; with stop the
    first of them ends the run naming it."""
    root = setup["root"]
    images = tmp_path / "images"
    shutil.copytree(root / "images", images)
    (images / "img_01.png").write_bytes(b"not a png")
    maps = tmp_path / "maps"
    for k, name in enumerate(setup["names"]):
        save_map(maps / f"{name}.npy", np.random.default_rng(k).random((16, 16)))
    nan = np.random.default_rng(2).random((16, 16)).astype(np.float32)
    nan[3, 4] = np.nan
    np.save(maps / "img_02.npy", nan)  # save_map refuses NaN: written as a broken tool would
    (maps / "img_04.npy").write_bytes(b"garbage")
    argv = ["evaluate", setup["model"], images, maps, "--fractions", "50", "--no-road"]
    argv += ["--boxes", root / "boxes.csv"]
    code, _, err = run_cli([*argv, "--out", tmp_path / "stop"], capsys)
    assert code == 1 and "img_01" in err and "--on-error skip" in err
    out = tmp_path / "skip"
    code, _, err = run_cli([*argv, "--out", out, "--on-error", "skip"], capsys)
    assert code == 3, err
    summary = json.loads((out / "summary.json").read_text())
    skipped = {s["image"]: s["error"] for s in summary["skipped"]}
    assert sorted(skipped) == ["img_01", "img_02", "img_04"]
    assert "NaN" in skipped["img_02"] and "img_04.npy" in skipped["img_04"]
    assert summary["counts"] == {"images": 3, "with_boxes": 2, "skipped": 3}
    rows = json.loads((out / "per_image.json").read_text())["images"]
    assert [r["image"] for r in rows] == ["img_00", "img_03", "img_05"]
    assert "3 images skipped" in (out / "summary.md").read_text()
    assert "3 images skipped" in err and "exit code 3" in err


def test_out_overlapping_inputs_is_refused(setup: dict, tmp_path: Path, capsys) -> None:
    root = setup["root"]
    images = tmp_path / "images"
    shutil.copytree(root / "images", images)
    maps = tmp_path / "maps"
    for name in setup["names"]:
        save_map(maps / f"{name}.npy", np.random.default_rng(0).random((16, 16)))
    argv = ["evaluate", setup["model"], images, maps, "--no-road", "--boxes", root / "boxes.csv"]
    before = {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    for out, what in (
        (maps, "is MAPS"),
        (images / "eval", "is inside DATA"),
        (tmp_path, "contains DATA"),
    ):
        code, _, err = run_cli([*argv, "--out", out], capsys)
        assert code == 1 and what in err, err
        assert len(err.strip().splitlines()) == 1
    after = {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    assert after == before


@pytest.mark.parametrize("score", ["softmax", "logit", "sigmoid"])
def test_per_image_score_equals_a_direct_model_call(
    setup: dict, tmp_path: Path, capsys, score: str
) -> None:
    root = setup["root"]
    maps = tmp_path / "maps"
    for name in setup["names"]:
        save_map(maps / f"{name}.npy", np.random.default_rng(0).random((16, 16)))
    argv = ["evaluate", setup["model"], root / "images", maps, "--fractions", "50"]
    argv += ["--score", score, "--target", "1", "--out", tmp_path / "eval"]
    assert run_cli(argv, capsys)[0] == 0
    rows = json.loads((tmp_path / "eval" / "per_image.json").read_text())["images"]
    model = tiny.factory()
    for row in rows:
        with torch.no_grad():
            logits = model(_pixels(root, row["image"])[None])[0].double()
        expected = {
            "softmax": logits.softmax(0)[1],
            "logit": logits[1],
            "sigmoid": logits[1].sigmoid(),
        }[score]
        assert row["target"] == 1 and row["score_kind"] == score
        assert row["score"] == pytest.approx(float(expected), abs=1e-6)
    table = list(csv.DictReader((tmp_path / "eval" / "per_image.csv").open()))
    assert float(table[0]["score"]) == pytest.approx(rows[0]["score"])


NAN_MODULE = '''
import torch
from cli_support.tiny import TinyNet


class NanNet(TinyNet):
    """TinyNet times sqrt(x[0, 0, 0] - LEVEL): NaN where the top-left pixel is darker."""

    def forward(self, x):
        return super().forward(x) * torch.sqrt(x[:, :1, 0, 0] - LEVEL)


def factory():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return NanNet().eval()
'''


def test_nan_model_scores_are_failures_not_statistics(
    setup: dict, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model whose output is NaN on some images: stop names the image; skip leaves them out
    (listed, exit 3) and the statistics stay finite."""
    root = setup["root"]
    corners = {n: float(_pixels(root, n)[0, 0, 0]) for n in setup["names"]}
    level = sorted(corners.values())[2] - 1e-3  # the two darkest corners give NaN
    (tmp_path / "nan_model.py").write_text(NAN_MODULE.replace("LEVEL", repr(level)))
    monkeypatch.syspath_prepend(str(tmp_path))
    maps = tmp_path / "maps"
    for name in setup["names"]:
        save_map(maps / f"{name}.npy", np.random.default_rng(0).random((16, 16)))
    argv = ["evaluate", "nan_model:factory", root / "images", maps, "--fractions", "50"]
    dark = sorted(n for n, v in corners.items() if v < level)  # NaN on the clean image
    assert len(dark) == 2
    code, _, err = run_cli([*argv, "--out", tmp_path / "skip", "--on-error", "skip"], capsys)
    assert code == 3, err
    summary = json.loads((tmp_path / "skip" / "summary.json").read_text())
    skipped = [s["image"] for s in summary["skipped"]]
    assert set(dark) <= set(skipped) and len(skipped) < len(setup["names"])  # (ROAD's copies
    # of other images may darken the corner too: those are failures as well)
    rows = json.loads((tmp_path / "skip" / "per_image.json").read_text())["images"]
    assert sorted([r["image"] for r in rows] + skipped) == setup["names"]
    for row in rows:
        assert np.isfinite([row["score"], row["road_score"], *row["road_morf"]]).all()
    assert summary["metrics"]["road_score"]["n"] == len(rows)
    assert np.isfinite(summary["metrics"]["road_score"]["mean"])
    code, _, err = run_cli([*argv, "--out", tmp_path / "stop"], capsys)
    assert code == 1 and f"error: {skipped[0]}: the model's scores are NaN" in err
