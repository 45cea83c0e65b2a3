"""A tiny CNN and the data sets the command-line tests run on.

``factory()`` is what ``tests.cli_support.tiny:factory`` names on the command line: it
builds the same seeded model every time, so TorchScript files, exports and the factory agree.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

SIZE = 16
CLASSES = 3


class TinyNet(nn.Module):
    """[B, 3, H, W] -> [B, 3] logits; ``features.2`` is the last conv block (for CAM)."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 6, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(6, 8, 3, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(8, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))


def factory() -> nn.Module:
    """The seeded tiny model (called with no arguments by ``generate``)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return TinyNet().eval()


def grey_factory() -> nn.Module:
    """A one-channel variant."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return TinyNet(channels=1).eval()


def not_a_model() -> int:
    return 3


def broken_factory() -> nn.Module:
    raise RuntimeError("weights not found")


def save_torchscript(path: Path) -> Path:
    torch.jit.save(torch.jit.script(factory()), str(path))
    return path


def save_export(path: Path, dynamic: bool = True) -> Path:
    example = (torch.rand(2, 3, SIZE, SIZE),)
    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    program = torch.export.export(factory(), example, dynamic_shapes=shapes)
    torch.export.save(program, str(path))
    return path


def images(count: int = 6, size: int = SIZE, seed: int = 0) -> np.ndarray:
    """uint8 RGB images [N, H, W, 3] with a bright square (the 'lesion') in each."""
    g = np.random.default_rng(seed)
    data = (g.random((count, size, size, 3)) * 60).astype(np.uint8)
    for i in range(count):
        y, x = 2 + (i * 3) % (size - 8), 2 + (i * 5) % (size - 8)
        data[i, y : y + 5, x : x + 5] = 230
    return data


def lesion_boxes(count: int = 6, size: int = SIZE) -> list[list[int]]:
    """XYXY box of each image's square."""
    out = []
    for i in range(count):
        y, x = 2 + (i * 3) % (size - 8), 2 + (i * 5) % (size - 8)
        out.append([x, y, x + 5, y + 5])
    return out


def write_png_folder(folder: Path, count: int = 6, size: int = SIZE) -> list[str]:
    """``img_00.png`` ... as RGB PNGs; returns the names (stems), sorted."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, pixels in enumerate(images(count, size)):
        name = f"img_{i:02d}"
        Image.fromarray(pixels).save(folder / f"{name}.png")
        names.append(name)
    return names


def write_boxes_json(path: Path, names: list[str], size: int = SIZE) -> Path:
    boxes = lesion_boxes(len(names), size)
    path.write_text(json.dumps({n: [b] for n, b in zip(names, boxes)}))
    return path


def write_tensor(path: Path, count: int = 6, size: int = SIZE) -> Tensor:
    """Float images [N, 3, H, W] in [0, 1] as .pt or .npy; returns them."""
    data = torch.from_numpy(images(count, size)).permute(0, 3, 1, 2).float() / 255
    if path.suffix == ".npy":
        np.save(path, data.numpy())
    else:
        torch.save(data, path)
    return data


def run_cli(argv: list, capsys) -> tuple[int, str, str]:
    """``torchattr.cli.main(argv)`` -> (exit code, stdout, stderr)."""
    from torchattr.cli import main

    capsys.readouterr()
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def subprocess_env(*extra: Path) -> dict:
    """Environment of a ``python -m torchattr`` subprocess: the repository and ``extra`` on
    PYTHONPATH, one thread (as torchrun sets), no tty."""
    import os

    root = Path(__file__).resolve().parents[2]
    paths = [str(root), str(root / "tests"), *map(str, extra), os.environ.get("PYTHONPATH", "")]
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in paths if p),
        "OMP_NUM_THREADS": "1",
    }
