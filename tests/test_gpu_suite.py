"""The GPU benchmark suite runs on CPU (``--device cpu --quick``): it works when a GPU is lent."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import gpu_suite


def test_quick_cpu_run_times_every_method_on_both_models(capsys):
    assert gpu_suite.main(["--device", "cpu", "--quick", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ")]
    rows = [[c.strip() for c in r] for r in rows if r[0].strip() != "model"]
    ours = {(r[0], r[1], r[2]): r for r in rows if r[3] == "torchattr"}
    for model in gpu_suite.MODELS:
        for method in gpu_suite.METHODS:
            row = ours[(model, method, "eager")]
            assert re.fullmatch(r"\d+\.\d\d", row[4]), row  # a time, not an error
        for method in gpu_suite.BF16_METHODS:
            assert re.fullmatch(r"\d+\.\d\d", ours[(model, method, "bf16")][4])
    bare = [r for r in rows if r[3] == "bare"]
    assert bare and all(re.fullmatch(r"\d+\.\d\d", r[4]) for r in bare)
    # Where Captum computes the same saliency, it agrees with torchattr.
    captum = [r for r in rows if r[3] == "captum" and r[1] == "saliency" and r[2] == "eager"]
    assert captum and all(float(r[8]) < 1e-5 for r in captum)


def test_options_are_checked():
    with pytest.raises(SystemExit):
        gpu_suite.parse_args(["--methods", "saliency,nope"])
    with pytest.raises(SystemExit):
        gpu_suite.parse_args(["--device", "cpu", "--cuda-graphs"])
