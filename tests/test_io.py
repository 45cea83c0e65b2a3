"""Tests of torchattr.io: atomic writes, JSON, reading maps back."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from torchattr.io import (
    load_map,
    load_maps,
    map_names,
    normalize_map,
    save_json,
    save_map,
    write_atomic,
)


def test_save_and_load_map_round_trip(tmp_path: Path) -> None:
    maps = normalize_map(torch.rand(3, 5, 7, dtype=torch.float64))
    for i, one in enumerate(maps):
        save_map(tmp_path / f"img_{i}", one)
    loaded = load_map(tmp_path / "img_1.npy")
    assert loaded.dtype == np.float32 and loaded.shape == (5, 7)
    np.testing.assert_array_equal(loaded, maps[1].float().numpy())
    everything = load_maps(tmp_path)
    assert list(everything) == ["img_0", "img_1", "img_2"]
    for i, name in enumerate(everything):
        np.testing.assert_array_equal(everything[name], maps[i].float().numpy())


def test_load_maps_ignores_temporaries_and_selects_names(tmp_path: Path) -> None:
    save_map(tmp_path / "b.npy", np.ones((2, 2)))
    save_map(tmp_path / "a.npy", np.zeros((2, 2)))
    (tmp_path / ".c.npy.123.abcd.tmp").write_bytes(b"half a map")
    (tmp_path / "notes.txt").write_text("not a map")
    (tmp_path / "sub").mkdir()
    save_map(tmp_path / "sub" / "d.npy", np.zeros((2, 2)))
    assert map_names(tmp_path) == ["a", "b"]
    assert list(load_maps(tmp_path, ["b"])) == ["b"]
    with pytest.raises(FileNotFoundError, match=r"2 map\(s\) missing .*c, d"):
        load_maps(tmp_path, ["a", "c", "d"])
    with pytest.raises(TypeError, match="iterable of image names"):
        load_maps(tmp_path, "a")
    with pytest.raises(FileNotFoundError, match="no folder of maps"):
        map_names(tmp_path / "missing")


def test_load_map_refuses_what_is_not_a_map(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no map file"):
        load_map(tmp_path / "missing.npy")
    np.save(tmp_path / "volume.npy", np.zeros((2, 3, 4)))  # a volume's map [D, H, W]
    assert load_map(tmp_path / "volume.npy").shape == (2, 3, 4)
    np.save(tmp_path / "cube.npy", np.zeros((2, 3, 4, 5)))
    with pytest.raises(ValueError, match=r"shape \[2, 3, 4, 5\]: expected a map \[H, W\]"):
        load_map(tmp_path / "cube.npy")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"not a readable \.npy map"):
        load_map(tmp_path / "objects.npy")
    (tmp_path / "text.npy").write_text("hello")
    with pytest.raises(ValueError, match=r"not a readable \.npy map"):
        load_map(tmp_path / "text.npy")
    np.save(tmp_path / "flags.npy", np.zeros((2, 2), dtype=bool))
    with pytest.raises(ValueError, match="expected real numbers"):
        load_map(tmp_path / "flags.npy")
    np.save(tmp_path / "ints.npy", np.arange(4).reshape(2, 2))
    assert load_map(tmp_path / "ints.npy").dtype == np.float32


def test_write_atomic_bytes_text_and_writer(tmp_path: Path) -> None:
    assert write_atomic(tmp_path / "a" / "b.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    assert write_atomic(tmp_path / "t.md", "é\n").read_text(encoding="utf-8") == "é\n"
    path = write_atomic(tmp_path / "m.npy", lambda f: np.save(f, np.arange(3)))
    np.testing.assert_array_equal(np.load(path), np.arange(3))
    with pytest.raises(TypeError, match="content must be bytes, str or a function"):
        write_atomic(tmp_path / "x", 3)  # type: ignore[arg-type]


def test_write_atomic_leaves_the_old_file_on_failure(tmp_path: Path) -> None:
    target = write_atomic(tmp_path / "summary.md", "old\n")

    def failing(handle: object) -> None:
        handle.write(b"new but incomple")  # type: ignore[attr-defined]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, failing)
    assert target.read_text() == "old\n"
    assert sorted(os.listdir(tmp_path)) == ["summary.md"]


def test_save_json_converts_values(tmp_path: Path) -> None:
    data = {
        "nan": float("nan"),
        "inf": float("inf"),
        "np": np.float32(0.5),
        "array": np.arange(3),
        "tensor": torch.tensor([1.5, 2.5]),
        "path": Path("a/b"),
        "nested": [(1, 2), {"x": np.int64(3)}],
    }
    path = save_json(tmp_path / "out" / "r.json", data)
    text = path.read_text()
    assert text.endswith("\n") and "NaN" not in text
    assert json.loads(text) == {
        "nan": None,
        "inf": None,
        "np": 0.5,
        "array": [0, 1, 2],
        "tensor": [1.5, 2.5],
        "path": "a/b",
        "nested": [[1, 2], {"x": 3}],
    }


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_normalize_map_refuses_non_finite_values(bad: float) -> None:
    """A single NaN / inf used to turn the whole map into zeros (a silent 'no attribution')."""
    maps = torch.rand(4, 5, 6)
    maps[2, 1, 3] = bad
    with pytest.raises(
        ValueError, match=r"1 NaN or inf value\(s\) in 1 of 4 maps \(flat index 2\)"
    ):
        normalize_map(maps)
    with pytest.raises(ValueError, match="NaN or inf"):
        normalize_map(maps[2])
    # the finite maps alone are normalised as before: min 0, max 1 per map
    fine = normalize_map(maps[[0, 1, 3]])
    assert torch.equal(fine.amin(dim=(-2, -1)), torch.zeros(3))
    assert torch.equal(fine.amax(dim=(-2, -1)), torch.ones(3))
