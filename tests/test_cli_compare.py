"""End-to-end tests of ``torchattr compare`` across evaluate results."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from cli_support import tiny
from cli_support.tiny import run_cli


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("compare")
    names = tiny.write_png_folder(root / "images", count=4)
    tiny.write_boxes_json(root / "boxes.json", names)
    model = tiny.save_torchscript(root / "model.pt")
    from torchattr.cli import main

    argv = ["generate", model, root / "images", "-m", "saliency,integrated_gradients"]
    assert main([*map(str, argv), "--steps", "4", "--out", str(root / "maps")]) == 0
    for method in ("saliency", "integrated_gradients"):
        argv = ["evaluate", model, root / "images", root / "maps" / method]
        argv += ["--boxes", root / "boxes.json", "--out", root / "eval" / method]
        assert main([*map(str, argv), "--fractions", "25", "75"]) == 0
    return {"root": root, "eval": root / "eval"}


def test_table_json_plot_and_printout(results: dict, capsys) -> None:
    out = results["root"] / "cmp"
    evals = [results["eval"] / "saliency", results["eval"] / "integrated_gradients"]
    code, printed, err = run_cli(["compare", *evals, "--out", out], capsys)
    assert code == 0 and "warning" not in err
    assert sorted(p.name for p in out.iterdir()) == ["compare.json", "compare.md", "compare.png"]
    table = json.loads((out / "compare.json").read_text())
    assert [m["label"] for m in table["methods"]] == ["saliency", "integrated_gradients"]
    assert table["metrics"] == [
        "proportional_energy", "saliency_focus", "pointing_game", "relevance_rank_accuracy",
        "road_score",
    ]  # fmt: skip
    markdown = (out / "compare.md").read_text()
    assert printed.startswith(markdown)
    for row, folder in zip(table["methods"], evals):
        summary = json.loads((folder / "summary.json").read_text())
        assert row["images"] == 4
        for metric in table["metrics"]:
            assert row["metrics"][metric] == summary["metrics"][metric]
        energy = summary["metrics"]["proportional_energy"]
        cell = f"{energy['mean']:.3f} +- {energy['std']:.3f} (4)"
        line = next(x for x in markdown.splitlines() if x.startswith(f"| {row['label']} |"))
        assert cell in line
    for metric, labels in table["best"].items():
        means = {m["label"]: m["metrics"][metric]["mean"] for m in table["methods"]}
        assert means[labels[0]] == max(means.values())
        line = next(x for x in markdown.splitlines() if x.startswith(f"| {labels[0]} |"))
        assert "**" in line


def test_labels_warnings_and_errors(results: dict, tmp_path: Path, capsys) -> None:
    first = results["eval"] / "saliency"
    other = tmp_path / "other"
    other.mkdir()
    summary = json.loads((first / "summary.json").read_text())
    summary["counts"]["images"] = 3
    (other / "summary.json").write_text(json.dumps(summary))
    code, printed, err = run_cli(["compare", first, other, "--out", tmp_path / "c"], capsys)
    assert code == 0 and "differ in number of images" in err
    assert "| saliency |" in printed and "| other |" in printed  # same method: folder names
    argv = ["compare", first, other, "--labels", "A", "B", "--out", tmp_path / "d"]
    assert run_cli(argv, capsys)[0] == 0
    table = json.loads((tmp_path / "d" / "compare.json").read_text())
    assert [m["label"] for m in table["methods"]] == ["A", "B"]
    for argv, message in (
        (["compare", tmp_path / "missing"], "no such folder"),
        (["compare", tmp_path], "no summary.json"),
        (["compare", first, other, "--labels", "A"], "1 labels for 2"),
    ):
        code, _, err = run_cli([*argv, "--out", tmp_path / "e"], capsys)
        assert code == 1 and message in err
    assert not (tmp_path / "e").exists()
    # an --out that is, is inside or contains an evaluate folder: refused, nothing written
    before = {p: p.read_bytes() for p in sorted(first.rglob("*")) if p.is_file()}
    for out, relation in ((first, "is"), (first / "cmp", "is inside"), (first.parent, "contains")):
        code, _, err = run_cli(["compare", first, other, "--out", out], capsys)
        assert code == 1 and f"{relation} RESULT_DIR 1" in err, err
        assert len(err.strip().splitlines()) == 1
    assert not (first / "cmp").exists()
    assert {p: p.read_bytes() for p in sorted(first.rglob("*")) if p.is_file()} == before


def test_without_matplotlib_plots_are_skipped_with_a_note(
    results: dict, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in ("matplotlib", "matplotlib.figure"):
        monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    root = results["root"]
    argv = ["evaluate", "unused.pt", root / "images", root / "maps" / "saliency", "--no-road"]
    code, _, err = run_cli([*argv, "--boxes", root / "boxes.json", "--out", tmp_path / "e"], capsys)
    assert code == 0 and "matplotlib is not installed" in err
    assert not (tmp_path / "e" / "histograms.png").exists()
    assert "Note: histograms.png not written" in (tmp_path / "e" / "summary.md").read_text()
    code, _, err = run_cli(
        ["compare", tmp_path / "e", results["eval"] / "saliency", "--out", tmp_path / "c"], capsys
    )
    assert code == 0 and "compare.png not written" in err
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["compare.json", "compare.md"]
    maps = [root / "maps" / "saliency", root / "maps" / "integrated_gradients"]
    code, _, err = run_cli(["view", root / "images", *maps, "--out", tmp_path / "v"], capsys)
    assert code == 0 and "no side-by-side figures" in err
    assert sorted(p.name for p in (tmp_path / "v").iterdir()) == [
        "integrated_gradients",
        "saliency",
    ]
