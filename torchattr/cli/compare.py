"""``torchattr compare RESULT_DIR...``: one table and one plot across ``evaluate`` results.

Each RESULT_DIR is an ``evaluate`` output folder (its ``summary.json``); each becomes a row,
labelled with its method (the maps folder's name; the result folder's name when two share a
method). Columns: the mean, sample std and n of every metric the results have (localisation
metrics and the ROAD score; each metric's direction, higher or lower is better, comes from
:data:`torchattr.metrics.DIRECTIONS`, and the best mean in that direction is marked).
Written to ``--out``: ``compare.md``, ``compare.json`` and (with matplotlib) ``compare.png``
(bars of the means with std error bars, and the mean MoRF / LeRF curves); the Markdown table is
also printed. Results of different data, boxes or ROAD settings are compared with a warning.
``--out`` may not be, be inside or contain a RESULT_DIR (refused, exit code 1).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from torchattr.cli._common import CommandError, Reporter, refuse_overlap
from torchattr.cli.evaluate import LOCALISATION
from torchattr.io import save_json, write_atomic
from torchattr.metrics.directions import direction

__all__ = ["add_parser", "run"]

METRICS = (*LOCALISATION, "road_score")


def add_parser(subparsers: Any) -> None:
    """Register the ``compare`` subcommand."""
    parser = subparsers.add_parser(
        "compare",
        help="one table and plot comparing methods across evaluate results",
        description="Compare the summaries of several `torchattr evaluate` output folders: "
        "one row per method with the mean +- std of every metric; writes OUT/compare.md, "
        "OUT/compare.json and OUT/compare.png (matplotlib) and prints the table.",
    )
    parser.add_argument(
        "results", metavar="RESULT_DIR", nargs="+", type=Path, help="evaluate output folders"
    )
    parser.add_argument(
        "--out",
        "-o",
        type=Path,
        default=Path("torchattr_compare"),
        help="output folder (default: %(default)s)",
    )
    parser.add_argument(
        "--labels",
        nargs="+",
        default=None,
        metavar="LABEL",
        help="row labels, one per RESULT_DIR (default: the method of each)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """``torchattr compare``: returns the exit code."""
    report = Reporter("compare")
    summaries = [_read(path) for path in args.results]
    refuse_overlap(args.out, {f"RESULT_DIR {k + 1}": p for k, p in enumerate(args.results)})
    labels = _labels(args.results, summaries, args.labels)
    warnings = _comparability(summaries, labels)
    metrics = [m for m in METRICS if any(m in s.get("metrics", {}) for s in summaries)]
    rows = []
    for label, path, summary in zip(labels, args.results, summaries):
        rows.append(
            {
                "label": label,
                "result": str(path.resolve()),
                "method": summary.get("method"),
                "images": summary.get("counts", {}).get("images"),
                "metrics": {m: summary.get("metrics", {}).get(m) for m in metrics},
                "road_curves": summary.get("road_curves"),
            }
        )
    best = {}
    for metric in metrics:
        means = [(r["metrics"][metric] or {}).get("mean") for r in rows]
        valid = [(v, r["label"]) for v, r in zip(means, rows) if v is not None]
        if valid:
            top = direction(metric).best(v for v, _ in valid)
            best[metric] = [label for v, label in valid if v == top]
    directions = {m: direction(m).word for m in metrics}
    table = {
        "metrics": metrics,
        "directions": directions,
        "methods": rows,
        "best": best,
        "warnings": warnings,
    }
    markdown = _markdown(table)
    out: Path = args.out
    save_json(out / "compare.json", table)
    write_atomic(out / "compare.md", markdown)
    plot = _plot(out / "compare.png", rows, metrics)
    for warning in warnings:
        report.warn(warning)
    report.result(markdown)
    written = "compare.md, compare.json" + (", compare.png" if plot else "")
    if plot is None:
        report.note("compare.png not written: matplotlib is not installed")
    report.result(f"wrote {written} to {out}")
    return 0


def _read(path: Path) -> dict[str, Any]:
    source = path / "summary.json"
    if not path.is_dir():
        raise CommandError(f"RESULT_DIR {path}: no such folder")
    if not source.is_file():
        raise CommandError(
            f"RESULT_DIR {path}: no summary.json (expected a `torchattr evaluate` output folder)"
        )
    try:
        data = json.loads(source.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CommandError(f"{source}: not readable JSON ({error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
        raise CommandError(f"{source}: not an evaluate summary (no 'metrics')")
    return data


def _labels(
    paths: list[Path], summaries: list[dict[str, Any]], given: list[str] | None
) -> list[str]:
    if given is not None:
        if len(given) != len(paths):
            raise CommandError(
                f"--labels has {len(given)} labels for {len(paths)} RESULT_DIR folders"
            )
        if len(set(given)) != len(given):
            raise CommandError(f"--labels must be unique, got {given}")
        return list(given)
    labels = [str(s.get("method") or p.resolve().name) for p, s in zip(paths, summaries)]
    if len(set(labels)) != len(labels):
        labels = [p.resolve().name for p in paths]
    if len(set(labels)) != len(labels):
        labels = [str(p) for p in paths]
    if len(set(labels)) != len(labels):
        raise CommandError("RESULT_DIR folders repeat: give each result once")
    return labels


def _comparability(summaries: list[dict[str, Any]], labels: list[str]) -> list[str]:
    """Warnings for results that were not computed on the same footing."""
    warnings = []
    checks = {
        "data": lambda s: (s.get("data") or {}).get("path"),
        "boxes": lambda s: s.get("boxes"),
        "number of images": lambda s: (s.get("counts") or {}).get("images"),
        "ROAD settings": lambda s: json.dumps(s.get("road"), sort_keys=True),
        "preprocessing": lambda s: json.dumps(s.get("preprocessing"), sort_keys=True),
        "pointing game tolerance": lambda s: s.get("pointing_game_tolerance"),
    }
    for what, key in checks.items():
        values = [key(s) for s in summaries]
        if len({json.dumps(v) for v in values}) > 1:
            listed = ", ".join(f"{label}: {value}" for label, value in zip(labels, values))
            warnings.append(f"the results differ in {what} ({listed})")
    return warnings


def _markdown(table: dict[str, Any]) -> str:
    metrics = table["metrics"]
    lines = [
        "| method | images | " + " | ".join(f"{m} ({direction(m).word})" for m in metrics) + " |",
        "|---" * (len(metrics) + 2) + "|",
    ]
    for row in table["methods"]:
        cells = []
        for metric in metrics:
            stats = row["metrics"][metric]
            cell = _mean_std(stats)
            if row["label"] in table["best"].get(metric, []) and len(table["methods"]) > 1:
                cell = f"**{cell}**"
            cells.append(cell)
        images = "-" if row["images"] is None else str(row["images"])
        lines.append(f"| {row['label']} | {images} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Mean +- sample std over images (n); (higher) / (lower): which is better, from "
        "torchattr.metrics.DIRECTIONS; best in bold.",
    ]
    lines += [f"Note: {m}: {direction(m).note}." for m in metrics if direction(m).caveat]
    lines += [f"Warning: {w}" for w in table["warnings"]]
    return "\n".join(lines) + "\n"


def _mean_std(stats: dict[str, Any] | None) -> str:
    if not stats or stats.get("mean") is None:
        return "-"
    std = stats.get("std")
    spread = f" +- {std:.3f}" if std is not None and math.isfinite(std) else ""
    return f"{stats['mean']:.3f}{spread} ({stats['n']})"


def _plot(path: Path, rows: list[dict[str, Any]], metrics: list[str]) -> Path | None:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    from torchattr.viz import save_png

    curves = [r for r in rows if r.get("road_curves")]
    panels = 2 if curves else 1
    figure = Figure(figsize=(6 * panels + 1, 4), layout="constrained")
    bars = figure.add_subplot(1, panels, 1)
    width = 0.8 / max(len(rows), 1)
    for k, row in enumerate(rows):
        stats = [row["metrics"][m] or {} for m in metrics]
        means = [s.get("mean") if s.get("mean") is not None else math.nan for s in stats]
        errors = [s.get("std") if s.get("std") is not None else 0.0 for s in stats]
        positions = [i + (k - (len(rows) - 1) / 2) * width for i in range(len(metrics))]
        bars.bar(positions, means, width, yerr=errors, capsize=3, label=row["label"])
    bars.set_xticks(range(len(metrics)))
    bars.set_xticklabels(
        [m.replace("_", "\n") + f"\n({direction(m).word} is better)" for m in metrics], fontsize=7
    )
    bars.set_ylabel("mean over images (+- std)")
    bars.legend(fontsize=8)
    if curves:
        axes = figure.add_subplot(1, panels, 2)
        for k, row in enumerate(curves):
            road = row["road_curves"]
            colour = f"C{k}"
            percent = [100 * p for p in road["fractions"]]
            axes.plot(percent, road["morf"], "--o", color=colour, label=f"{row['label']} MoRF")
            axes.plot(percent, road["lerf"], "-o", color=colour, label=f"{row['label']} LeRF")
        axes.set_xlabel("pixels imputed (MoRF) / kept (LeRF), %")
        axes.set_ylabel("score")
        axes.set_title("ROAD")
        axes.legend(fontsize=7)
    return save_png(path, figure)
