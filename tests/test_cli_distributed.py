"""``generate`` and ``evaluate`` under ``torchrun --nproc-per-node 2`` (CPU, gloo) give exactly
what one process gives."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_support import tiny
from cli_support.tiny import subprocess_env

from torchattr.cli import main

METHODS = "saliency,integrated_gradients,smoothgrad"


def _torchrun(args: list, cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", "2", "-m", "torchattr", *map(str, args)]
    run = subprocess.run(
        command, capture_output=True, text=True, env=subprocess_env(), cwd=cwd, timeout=300
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return run


def _single(args: list) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as torchrun sets OMP_NUM_THREADS=1
    try:
        assert main([str(a) for a in args]) == 0
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("distributed")
    names = tiny.write_png_folder(root / "images", count=5)  # 3 + 2: uneven shards
    tiny.write_boxes_json(root / "boxes.json", names)
    return {"root": root, "names": names, "model": tiny.save_torchscript(root / "model.pt")}


def test_generate_and_evaluate_two_processes_equal_one(data: dict) -> None:
    root, model = data["root"], data["model"]
    common = [model, root / "images", "-m", METHODS, "--steps", "4", "--samples", "3"]
    common += ["--batch-size", "1", "--device", "cpu"]
    run = _torchrun(["generate", *common, "--out", root / "two"], root)
    assert "[rank 0/2]" in run.stderr and "2 processes, 5 images" in run.stderr
    _single(["generate", *common, "--out", root / "one"])
    for method in METHODS.split(","):
        two = sorted((root / "two" / method).glob("*.npy"))
        one = sorted((root / "one" / method).glob("*.npy"))
        assert [p.name for p in two] == [p.name for p in one] == [f"{n}.npy" for n in data["names"]]
        for a, b in zip(two, one):
            assert a.read_bytes() == b.read_bytes(), (method, a.name)
        # each map's dependency record, written by the process that made it, is the same
        records = [sorted((root / d / method / ".records").iterdir()) for d in ("two", "one")]
        assert [p.name for p in records[0]] == [f"{n}.json" for n in data["names"]]
        for a, b in zip(*records):
            assert json.loads(a.read_text()) == json.loads(b.read_text()), (method, a.name)
    record = json.loads((root / "two" / "run.json").read_text())["methods"]["smoothgrad"]
    assert (record["processes"], record["written"], record["maps"]) == (2, 5, 5)

    maps = root / "one" / "integrated_gradients"
    common = [model, root / "images", maps, "--boxes", root / "boxes.json", "--fractions", "30"]
    common += ["70", "--device", "cpu"]
    _torchrun(["evaluate", *common, "--out", root / "eval_two"], root)
    _single(["evaluate", *common, "--out", root / "eval_one"])
    per_image = [
        json.loads((root / d / "per_image.json").read_text()) for d in ("eval_two", "eval_one")
    ]
    assert per_image[0] == per_image[1] and len(per_image[0]["images"]) == 5
    summaries = [
        json.loads((root / d / "summary.json").read_text()) for d in ("eval_two", "eval_one")
    ]
    assert summaries[0]["processes"] == 2 and summaries[1]["processes"] == 1
    for key in ("metrics", "road_curves", "counts"):
        assert summaries[0][key] == summaries[1][key]
    assert np.isfinite(summaries[0]["metrics"]["road_score"]["mean"])


def test_volumes_two_processes_equal_one(tmp_path: Path) -> None:
    """generate on a NIfTI folder of volumes under torchrun: byte-identical .npy and .nii.gz
    maps and equal records (evaluate shards volumes as images: tested above on images)."""
    pytest.importorskip("nibabel")
    from cli_support import medical

    names = sorted(medical.write_nifti_volumes(tmp_path / "vols", count=2))
    factory = "cli_support.medical:volume_factory"
    common = [factory, tmp_path / "vols", "-m", "saliency,integrated_gradients", "--steps", "3"]
    common += ["--batch-size", "1", "--device", "cpu"]
    run = _torchrun(["generate", *common, "--out", tmp_path / "two"], tmp_path)
    assert "2 processes, 2 images" in run.stderr
    _single(["generate", *common, "--out", tmp_path / "one"])
    for method in ("saliency", "integrated_gradients"):
        for suffix in (".npy", ".nii.gz"):
            two = sorted((tmp_path / "two" / method).glob(f"*{suffix}"))
            one = sorted((tmp_path / "one" / method).glob(f"*{suffix}"))
            assert [p.name for p in two] == [p.name for p in one] == [n + suffix for n in names]
            for a, b in zip(two, one):
                assert a.read_bytes() == b.read_bytes(), (method, a.name)
        records = [sorted((tmp_path / d / method / ".records").iterdir()) for d in ("two", "one")]
        assert [p.name for p in records[0]] == [f"{n}.json" for n in names]
        for a, b in zip(*records):
            assert json.loads(a.read_text()) == json.loads(b.read_text()), (method, a.name)
    runs = [json.loads((tmp_path / d / "run.json").read_text())["methods"] for d in ("two", "one")]
    assert runs[0]["saliency"]["processes"] == 2 and runs[0]["saliency"]["maps"] == 2
