"""MODEL: a TorchScript file, a ``torch.export`` program (``.pt2``) or ``package.module:factory``
returning an ``nn.Module`` (:func:`load_model`), with its sha256 and what it accepts."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from torchattr.cli._common import CommandError
from torchattr.cli._data.base import describe_error

_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


@dataclass
class LoadedModel:
    """The model, how it was loaded, and what it is known to accept."""

    module: nn.Module
    kind: str  # "torchscript", "export" or "factory"
    spec: str
    fingerprint: str
    input_shape: tuple[int | None, ...] | None = None  # exported programs: static dims
    hooks: bool = True  # whether forward hooks on its submodules fire (class activation maps)
    info: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"spec": self.spec, "kind": self.kind, "sha256": self.fingerprint, **self.info}

    def check_input(self, shape: Sequence[int]) -> None:
        """Compare a model input ``[C, H, W]`` with an exported program's static dimensions."""
        if self.input_shape is None or len(self.input_shape) != len(shape) + 1:
            return
        expected = self.input_shape[1:]
        if any(e is not None and e != s for e, s in zip(expected, shape)):
            wanted = ["B"] + ["*" if e is None else e for e in expected]
            hint = "--resize / --grayscale-to-rgb"
            raise CommandError(
                f"MODEL {self.spec} takes inputs {wanted} but the preprocessed images are "
                f"{list(shape)}: adjust {hint}"
            )


def load_model(spec: str, device: torch.device) -> LoadedModel:
    """Load MODEL: a TorchScript file, a ``.pt2`` export, or ``package.module:factory``."""
    path = Path(spec)
    if path.is_file():
        kind = _archive_kind(path)
        if kind == "export" or (kind == "unknown" and path.suffix.lower() == ".pt2"):
            loaded = _load_export(path, spec)
        elif kind == "torchscript" or kind == "unknown":
            loaded = _load_torchscript(path, spec, device)
        else:
            raise CommandError(
                f"MODEL {spec}: a torch.save checkpoint (a pickled module or a state dict), not "
                f"a model file this command loads. {_SAVE_HINT}"
            )
    elif _FACTORY.match(spec):
        loaded = _load_factory(spec)
    elif path.exists():
        raise CommandError(f"MODEL {spec}: is a folder; expected a model file or module:factory")
    else:
        raise CommandError(
            f"MODEL {spec}: no such file, and not a 'package.module:factory' name (a TorchScript "
            "file, a torch.export .pt2 file, or a function returning an nn.Module)"
        )
    module = loaded.module
    try:
        module.to(device)
    except Exception as error:
        raise CommandError(
            f"MODEL {spec}: cannot move the model to {device} ({describe_error(error)})"
        ) from None
    if loaded.kind == "export":
        for sub in module.modules():  # the graph is fixed: eval() is refused, the flag is moot
            sub.training = False
    else:
        module.eval()
    return loaded


def _archive_kind(path: Path) -> str:
    """``export``, ``torchscript``, ``checkpoint`` (torch.save) or ``unknown``, from the zip
    archive's entries (nothing is unpickled)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return "unknown"
    tails = {entry.split("/", 1)[-1] for entry in entries}
    if "archive_format" in tails or any("/models/" in e for e in entries):
        return "export"
    if "constants.pkl" in tails or any(e.split("/")[1:2] == ["code"] for e in entries):
        return "torchscript"
    if "data.pkl" in tails:
        return "checkpoint"
    return "unknown"


_SAVE_HINT = (
    "Save the model with torch.jit.save(torch.jit.script(model), 'model.pt') or "
    "torch.export.save(torch.export.export(model, (example,)), 'model.pt2'), or pass "
    "'package.module:factory' (a function that builds the model and loads its weights)"
)


def _load_torchscript(path: Path, spec: str, device: torch.device) -> LoadedModel:
    try:
        module = torch.jit.load(str(path), map_location=device)
    except Exception as error:
        raise CommandError(
            f"MODEL {spec}: not a readable TorchScript archive ({describe_error(error)}). "
            + _SAVE_HINT
        ) from None
    return LoadedModel(module, "torchscript", spec, _file_hash(path), hooks=False)


def _load_export(path: Path, spec: str) -> LoadedModel:
    try:
        program = torch.export.load(str(path))
    except Exception as error:
        raise CommandError(
            f"MODEL {spec}: cannot load the torch.export program ({describe_error(error)})"
        ) from None
    module = program.module()
    shape, low, high = _export_input(program)
    if low is not None or high is not None:
        module = ExportedBatches(module, low or 1, high)
    info = {"batch_sizes": [low, high]} if (low or high) else {}
    return LoadedModel(module, "export", spec, _file_hash(path), shape, hooks=False, info=info)


def _export_input(program: Any) -> tuple[tuple[int | None, ...] | None, int | None, int | None]:
    """Static dims of the first user input, and the batch sizes the program accepts."""
    try:
        users = set(program.graph_signature.user_inputs)
        node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name in users)
        dims = tuple(node.meta["val"].shape)
    except Exception:
        return None, None, None
    shape = tuple(d if isinstance(d, int) else None for d in dims)
    if not dims:
        return shape, None, None
    batch = dims[0]
    if isinstance(batch, int):
        return shape, batch, batch
    low = high = None
    try:
        ranges = program.range_constraints[batch.node.expr]
        low = int(ranges.lower) if ranges.lower.is_integer else None
        upper = ranges.upper
        high = int(upper) if upper.is_integer and upper.is_finite else None
    except Exception:
        pass
    if low is not None and low <= 1:
        low = None
    return shape, low, high


class ExportedBatches(nn.Module):
    """Runs an exported program on batches of the sizes it accepts: ``low <= n <= high``.

    Rows are split into chunks of at most ``high``; a chunk smaller than ``low`` is padded with
    copies of its last row, whose outputs are dropped. Differentiable (slices and ``cat``), so
    gradients of the real rows are those of the program.
    """

    def __init__(self, program: nn.Module, low: int, high: int | None) -> None:
        super().__init__()
        self.program = program
        self.low = low
        self.high = high

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        if self.low <= n and (self.high is None or n <= self.high):
            return self.program(x)
        step = self.high or n
        outputs = []
        for start in range(0, n, step):
            chunk = x[start : start + step]
            rows = chunk.shape[0]
            if rows < self.low:
                pad = chunk[-1:].expand(self.low - rows, *chunk.shape[1:])
                chunk = torch.cat([chunk, pad])
            outputs.append(self.program(chunk)[:rows])
        return torch.cat(outputs)


def _load_factory(spec: str) -> LoadedModel:
    module_name, _, attribute = spec.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())  # as `python -m` would: modules next to the user
    try:
        owner: Any = importlib.import_module(module_name)
    except Exception as error:
        raise CommandError(
            f"MODEL {spec}: cannot import {module_name} ({describe_error(error)})"
        ) from None
    factory = owner
    for part in attribute.split("."):
        if not hasattr(factory, part):
            raise CommandError(f"MODEL {spec}: {module_name} has no attribute {attribute!r}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise CommandError(f"MODEL {spec}: {attribute} is a {type(factory).__name__}, not callable")
    try:
        model = factory()
    except Exception as error:
        raise CommandError(
            f"MODEL {spec}: calling {attribute}() failed ({describe_error(error)})"
        ) from None
    if not isinstance(model, nn.Module):
        raise CommandError(
            f"MODEL {spec}: {attribute}() returned a {type(model).__name__}; expected an "
            "nn.Module (called with no arguments)"
        )
    return LoadedModel(model, "factory", spec, factory_hash(spec, owner, model), hooks=True)


def factory_hash(spec: str, owner: Any, model: nn.Module) -> str:
    """What a factory model is made of: sha256 of the spec, the weights (:func:`state_hash`) and
    the source files that define it (the factory's module and the module of every class in
    ``model.modules()`` outside torch itself), so that maps made before an edit of the model's
    code (same weights, another forward) are not trusted."""
    digest = hashlib.sha256(f"{spec}\n{state_hash(model)}\n".encode())
    for source in sorted(_source_digests(owner, model)):
        digest.update(source.encode())
    return digest.hexdigest()


def _source_digests(owner: Any, model: nn.Module) -> set[str]:
    """sha256 of each source file of ``owner`` and of the classes of ``model``'s modules."""
    files: set[str] = set()
    for obj in (owner, *(type(m) for m in model.modules())):
        module = inspect.getmodule(obj)
        name = getattr(module, "__name__", "")
        path = getattr(module, "__file__", None)
        if path and name.split(".")[0] != "torch" and os.path.isfile(path):
            files.add(path)
    return {_file_hash(Path(path)) for path in files}


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def state_hash(model: nn.Module) -> str:
    """sha256 of the parameters and buffers (names, shapes, dtypes and values)."""
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        digest.update(f"{name}:{list(value.shape)}:{value.dtype}".encode())
        data = value.detach().cpu().contiguous()
        if data.dtype == torch.bfloat16:
            data = data.float()
        digest.update(data.numpy().tobytes())
    return digest.hexdigest()
