"""Tests of ``torchattr report``: the HTML report of a run (torchattr.cli.report)."""

from __future__ import annotations

import html.parser
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from cli_support import tiny
from cli_support.tiny import run_cli
from PIL import Image

from torchattr.cli.report import write_report
from torchattr.metrics.directions import direction

pytest.importorskip("PIL")

METHODS = ("saliency", "integrated_gradients")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class _Links(html.parser.HTMLParser):
    """Every ``src`` / ``href`` of a page, and the tags seen."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.tags: list[tuple[str, dict[str, Any]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self.tags.append((tag, values))
        self.links += [v for k, v in attrs if k in ("src", "href") and v]


def _parse(page: Path) -> tuple[str, _Links, dict[str, Any]]:
    text = page.read_text()
    parser = _Links()
    parser.feed(text)
    start = text.index('<script type="application/json" id="report-data">') + len(
        '<script type="application/json" id="report-data">'
    )
    data = json.loads(text[start : text.index("</script>", start)])
    return text, parser, data


def _check_self_contained(out: Path, parser: _Links, data: dict[str, Any]) -> None:
    """Every link is a file inside the report (or an anchor); nothing from the network."""
    panels = [p for img in data["images"] for p in img["image"]]
    panels += [p for img in data["images"] for ps in img["maps"] if ps for p in ps]
    links = parser.links + [p["src"] for p in panels] + [p["full"] for p in panels if "full" in p]
    assert links
    for link in links:
        assert "://" not in link and not link.startswith("//"), link
        if not link.startswith("#"):
            assert (out / link).is_file(), link
    assert not [t for t, a in parser.tags if t == "link" or (t == "script" and "src" in a)]


# ---------------------------------------------------------------- a compare run, end to end


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("report")
    names = tiny.write_png_folder(root / "images", count=4)
    tiny.write_boxes_json(root / "boxes.json", names)
    model = tiny.save_torchscript(root / "model.pt")
    from torchattr.cli import main

    argv = ["generate", model, root / "images", "-m", ",".join(METHODS)]
    assert main([*map(str, argv), "--steps", "4", "--out", str(root / "maps")]) == 0
    for method in METHODS:
        argv = ["evaluate", model, root / "images", root / "maps" / method]
        argv += ["--boxes", root / "boxes.json", "--out", root / "eval" / method]
        assert main([*map(str, argv), "--fractions", "25", "75"]) == 0
    evals = [root / "eval" / m for m in METHODS]
    assert main(["compare", *map(str, evals), "--out", str(root / "cmp")]) == 0
    return root


def test_report_of_a_compare_run(compared: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = compared / "report"
    code, printed, err = run_cli(["report", compared / "cmp", "--out", out], capsys)
    assert code == 0, err
    assert str(out / "index.html") in printed
    text, parser, data = _parse(out / "index.html")
    _check_self_contained(out, parser, data)
    assert data["methods"] == list(METHODS)
    assert sorted(img["id"] for img in data["images"]) == sorted(
        p.stem for p in (compared / "images").iterdir()
    )
    for img in data["images"]:  # every method's overlay of every image
        assert all(img["maps"]) and len(img["maps"]) == len(METHODS)
        assert img["target"] != ""
    # A metric that misleads says so where it is shown (saliency focus rewards diffuse maps).
    assert "saliency_focus" in data["metrics"]
    table = text[text.index('id="methods"') :]
    assert "⚠ rewards diffuse maps" in table and "uniform noise in [0, 1] scores 0.5" in table
    # The table's values are the summaries' numbers, exactly; the best mean is marked.
    cells = {
        (row, a["data-metric"]): a
        for row, a in _rows(parser)
        if "data-metric" in a and a.get("data-value")
    }
    for method in METHODS:
        summary = json.loads((compared / "eval" / method / "summary.json").read_text())
        for metric in data["metrics"]:
            cell = cells[(method, metric)]
            assert float(cell["data-value"]) == summary["metrics"][metric]["mean"]
            assert float(cell["data-std"]) == summary["metrics"][metric]["std"]
    for metric in data["metrics"]:
        means = {m: float(cells[(m, metric)]["data-value"]) for m in METHODS}
        best = direction(metric).best(means.values())
        for method, mean in means.items():
            assert ("best" in (cells[(method, metric)].get("class") or "")) == (mean == best)
    # Per image values in the gallery are the per_image.json values (6 significant digits).
    rows = json.loads((compared / "eval" / METHODS[0] / "per_image.json").read_text())["images"]
    by_id = {img["id"]: img for img in data["images"]}
    for row in rows:
        for k, metric in enumerate(data["metrics"]):
            value = by_id[row["image"]]["values"][0][k]
            assert value == pytest.approx(row[metric], rel=1e-5, abs=1e-12)
    # The model's score of the explained class (softmax, evaluate's default): a direct call.
    model = tiny.factory()
    for row in rows:
        pixels = np.asarray(Image.open(compared / "images" / f"{row['image']}.png"), np.float32)
        x = torch.from_numpy(pixels / 255).permute(2, 0, 1)[None]
        with torch.no_grad():
            probabilities = model(x)[0].double().softmax(0)
        target = int(probabilities.argmax())
        img = by_id[row["image"]]
        assert img["target"] == str(target) and img["scoreKind"] == "softmax"
        assert img["score"] == pytest.approx(float(probabilities[target]), rel=1e-5)
    assert "' · model score' + kind" in text
    # Provenance: the model's hash, the data, the versions; the report's own date.
    run_record = json.loads((compared / "eval" / METHODS[0] / "summary.json").read_text())
    assert run_record["model"]["sha256"] in text
    assert "report date" in text and "torch " in text
    assert "Distributions" in text and "<svg" in text
    record = json.loads((out / "report.json").read_text())
    assert record["methods"] == list(METHODS)


def test_report_of_a_generate_run(compared: Path) -> None:
    page = write_report(compared / "maps", compared / "report_maps")
    text, parser, data = _parse(page)
    _check_self_contained(compared / "report_maps", parser, data)
    assert data["methods"] == list(METHODS) and data["metrics"] == []
    assert len(data["images"]) == 4 and all(all(img["maps"]) for img in data["images"])
    assert "no metrics" in text and "torchattr generate" in text


def _rows(parser: _Links) -> list[tuple[str, dict[str, Any]]]:
    """(method of the enclosing row, attributes) of every table cell of #methods."""
    result, method = [], None
    for tag, attrs in parser.tags:
        if tag == "tr":
            method = attrs.get("data-method")
        elif tag in ("td", "th") and method is not None:
            result.append((method, attrs))
    return result


# ---------------------------------------------------------------- demo-shaped runs, by hand


def _demo_run(root: Path, count: int, size: tuple[int, ...], missing: str | None = None) -> Path:
    """A folder shaped like ``torchattr demo``'s output, with known values."""
    rng = np.random.default_rng(0)
    ids = [f"case_{i:03d}" for i in range(count)]
    methods = {}
    for k, method in enumerate(METHODS):
        per_image = [float(v) for v in rng.random(count)]
        methods[method] = {
            metric: {
                "mean": float(np.mean(per_image)) + j,
                "std": float(np.std(per_image)),
                "per_image": [v + j for v in per_image],
            }
            for j, metric in enumerate(("proportional_energy", "pointing_game"))
        }
        for i, image_id in enumerate(ids):
            if image_id == missing and k == 1:
                continue
            path = root / "maps" / method / f"{image_id}.npy"
            path.parent.mkdir(parents=True, exist_ok=True)
            heat = np.zeros(size, dtype=np.float32)
            heat[(i % size[0],) + (1,) * (len(size) - 1)] = 1.0
            np.save(path, heat)
    (root / "images").mkdir(parents=True, exist_ok=True)
    for image_id in ids:
        np.save(root / "images" / f"{image_id}.npy", rng.random(size).astype(np.float32))
    record = {"images": ids, "methods": methods, "reference": {}}
    (root / "metrics.json").write_text(json.dumps(record))
    boxes = [[1, 1, 3, 3]] if len(size) == 2 else []
    manifest = {
        "settings": {"seed": 0, "epochs": 1, "n_train": 2, "n_test": count, "size": size[-1]},
        "held_out_accuracy": 1.0,
        "images": [{"id": i, "boxes_xyxy": boxes, "score": 0.75} for i in ids],
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_report_of_a_demo_run_lists_failures(tmp_path: Path) -> None:
    run = _demo_run(tmp_path / "run", 3, (12, 12), missing="case_001")
    page = write_report(run, tmp_path / "out", threshold=0.3)
    text, parser, data = _parse(page)
    _check_self_contained(tmp_path / "out", parser, data)
    by_id = {img["id"]: img for img in data["images"]}
    assert by_id["case_001"]["maps"][1] is None and by_id["case_001"]["maps"][0]
    assert "case_001" in text[text.index('id="failures"') :]  # listed with its error
    assert "FileNotFoundError" in text
    assert "at least 30 % of its maximum" in text
    assert by_id["case_000"]["score"] == 0.75
    record = json.loads((run / "metrics.json").read_text())
    cells = {(m, a["data-metric"]): a for m, a in _rows(parser) if a.get("data-metric")}
    for method in METHODS:
        for metric, stats in record["methods"][method].items():
            assert float(cells[(method, metric)]["data-value"]) == stats["mean"]


def test_report_of_volumes_shows_slices_and_mips(tmp_path: Path) -> None:
    run = _demo_run(tmp_path / "run", 2, (6, 12, 12))
    page = write_report(run, tmp_path / "out")
    _, parser, data = _parse(page)
    _check_self_contained(tmp_path / "out", parser, data)
    panels = data["images"][0]["maps"][0]
    assert [p["name"] for p in panels] == [
        "axial z=0",
        "coronal y=1",
        "sagittal x=1",
        "MIP axial",
        "MIP coronal",
        "MIP sagittal",
    ]
    assert data["images"][0]["volume"] is True


def test_report_thumbnails_link_the_full_size(tmp_path: Path) -> None:
    run = _demo_run(tmp_path / "run", 1, (80, 80))
    data = _parse(write_report(run, tmp_path / "out", thumbnail=32))[2]
    panel = data["images"][0]["maps"][0][0]
    from PIL import Image

    with Image.open(tmp_path / "out" / panel["src"]) as small:
        assert small.size == (32, 32)
    with Image.open(tmp_path / "out" / panel["full"]) as full:
        assert full.size == (80, 80)


def test_report_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["report", tmp_path / "nope", "--out", tmp_path / "o"], capsys)
    assert code == 1 and "no such folder" in err
    code, _, err = run_cli(["report", tmp_path, "--out", tmp_path / "o"], capsys)
    assert code == 1 and "expected the output folder" in err


# ---------------------------------------------------------------- a real browser


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed on CI (.ci/run installs Debian's chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return found


def _browse(page: Path, tmp_path: Path, *options: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / f"profile{len(list(tmp_path.glob('profile*')))}"
    argv = [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *options, page.as_uri()]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    _chromium()
    run = _demo_run(tmp_path / "run", 30, (16, 16))
    page = write_report(run, tmp_path / "out", page_size=12)
    # The DOM after the scripts ran: the first page of the gallery holds 12 cards.
    dom = _browse(page, tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count('<article class="card"') == 12
    assert "page 1 of 3 (30 images)" in dom.stdout
    # The screenshot: not blank, the table visible (its best-cell green), overlays drawn.
    shot = tmp_path / "shot.png"
    result = _browse(page, tmp_path, f"--screenshot={shot}", "--window-size=1200,1600")
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as loaded:
        pixels = np.asarray(loaded.convert("RGB")).astype(int)
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50
    best = (np.abs(pixels - [0xE3, 0xF4, 0xE1]).sum(axis=-1) == 0).sum()
    assert best > 200  # the marked best cells' background is on screen
