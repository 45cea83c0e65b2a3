"""Shared by the commands: the error that ends a command, messages, argument types and groups.

A command raises :class:`CommandError` for anything the user can fix (a missing file, an
unreadable image, a target the model does not have); :func:`torchattr.cli.main` prints it on
stderr as ``torchattr <command>: error: <message>`` and returns its exit code (1). Warnings go to
stderr as ``torchattr <command>: warning: ...``; results go to stdout.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from torchattr.cli._geometry import PADS, map_to_image
from torchattr.io import load_map

EXIT_ERROR = 1  # bad input: a missing or unreadable file, a target the model does not have
EXIT_PARTIAL = 3  # done, but some images have no map or score (skipped: listed in the summary)
EXIT_OS_ERROR = 4  # a file could not be read or written (read-only or full disk, ...)
ON_ERROR = ("stop", "skip")


class CommandError(Exception):
    """A problem with the user's input: printed without a traceback, exit code ``code``."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


def os_error_message(error: OSError) -> str:
    """One line for an ``OSError``: what failed, on which file, and a hint for the common ones.

    ``[Errno 28] No space left on device: 'out/x.npy'`` ->
    ``cannot write out/x.npy: no space left on device (free some space or choose another
    --out)``.
    """
    import errno

    hints = {
        errno.ENOSPC: "free some space or choose another --out",
        errno.EROFS: "the file system is read-only: choose another --out",
        errno.EACCES: "no permission: check the file's permissions or choose another --out",
        errno.EPERM: "no permission: check the file's permissions or choose another --out",
        errno.ENOTDIR: "a path that should be a folder is a file (is --out a file?)",
        errno.EEXIST: "a file is in the way (is --out a file?)",
        errno.EISDIR: "a folder is where a file was expected",
        errno.EDQUOT: "disk quota exceeded: free some space or choose another --out",
    }
    reason = (error.strerror or str(error) or type(error).__name__).strip().splitlines()[0]
    where = error.filename if error.filename is not None else None
    text = f"{where}: {reason[0].lower() + reason[1:]}" if where else reason
    hint = hints.get(error.errno) if error.errno is not None else None
    return f"{text} ({hint})" if hint else text


def refuse_overlap(out: Path, inputs: dict[str, Path]) -> None:
    """Refuse an ``--out`` folder that is, is inside, or contains one of ``inputs``
    (``{"DATA": path, "MAPS": path}``; symbolic links resolved): writing there could replace or
    mix with the inputs."""
    where = out.resolve()
    for label, path in inputs.items():
        source = path.resolve()
        if where == source:
            relation = "is"
        elif source in where.parents:
            relation = "is inside"
        elif where in source.parents:
            relation = "contains"
        else:
            continue
        raise CommandError(
            f"--out {out} {relation} {label} {path}: outputs would be written among the inputs; "
            "choose an --out outside it"
        )


def read_map(
    path: Path, size: tuple[int, ...], preprocessing: dict[str, Any] | None = None
) -> torch.Tensor:
    """A saved map ``[H, W]`` (a volume's ``[D, H, W]``) for an image of ``size``, checked: a
    readable ``.npy`` map, finite, in [0, 1], of the image's size or of the model input's size
    recorded in the maps' ``run.json`` (``preprocessing["resize"]``), which is carried back to
    the image (:func:`~torchattr.cli._geometry.map_to_image`, undoing ``--pad square``).
    Anything else is a :class:`CommandError` naming the file."""
    try:
        saliency = torch.from_numpy(load_map(path))
    except ValueError as error:
        raise CommandError(str(error)) from None
    if not bool(torch.isfinite(saliency).all()):
        bad = int((~torch.isfinite(saliency)).sum())
        raise CommandError(
            f"{path} holds {bad} NaN or inf value(s): not a usable map (regenerate it; generate "
            "refuses to save such maps)"
        )
    if bool((saliency < 0).any()) or bool((saliency > 1).any()):
        raise CommandError(
            f"{path} has values outside [0, 1] (min {float(saliency.min()):g}, max "
            f"{float(saliency.max()):g}): expected maps normalised as generate saves them"
        )
    shape = tuple(saliency.shape)
    if shape == tuple(size):
        return saliency
    resize = (preprocessing or {}).get("resize")
    if resize is not None and shape == tuple(resize):
        return map_to_image(saliency, size, (preprocessing or {}).get("pad"))
    model_size = f" or the model input's {resize[0]}x{resize[1]}" if resize else ""
    raise CommandError(
        f"{path} has shape {list(shape)} but the image is {'x'.join(map(str, size))}: maps must "
        "have "
        f"their image's size{model_size} (the model input's size is read from --resize in the "
        "maps' run.json)"
    )


class Reporter:
    """Messages of one command on one process (in a distributed run, mostly from rank 0).

    In a distributed run, messages are prefixed with ``[rank r/world]``.
    """

    def __init__(self, command: str, rank: int = 0, world: int = 1) -> None:
        self.command = command
        self.rank = rank
        self.world = world
        self.warnings = 0

    def _prefix(self) -> str:
        where = f" [rank {self.rank}/{self.world}]" if self.world > 1 else ""
        return f"torchattr {self.command}{where}"

    def warn(self, message: str, *, local: bool = False) -> None:
        """One line on stderr: from rank 0 (about the whole run), or with ``local=True`` from
        this rank (about its own shard)."""
        self.warnings += 1
        if local or self.rank == 0:
            print(f"{self._prefix()}: warning: {message}", file=sys.stderr, flush=True)

    def note(self, message: str) -> None:
        """A progress note on stderr, from rank 0 only."""
        if self.rank == 0:
            print(f"{self._prefix()}: {message}", file=sys.stderr, flush=True)

    def result(self, message: str) -> None:
        """Results on stdout, from rank 0 only."""
        if self.rank == 0:
            print(message, flush=True)


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An ``argparse`` type: an integer ``>= minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text}")
        return value

    return parse


def float_in(low: float, high: float, *, low_open: bool = False) -> Callable[[str], float]:
    """An ``argparse`` type: a finite float in ``[low, high]`` (``(low, high]`` if ``low_open``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        below = value <= low if low_open else value < low
        if not math.isfinite(value) or below or value > high:
            bracket = "(" if low_open else "["
            raise argparse.ArgumentTypeError(
                f"expected a number in {bracket}{low}, {high}], got {text}"
            )
        return value

    return parse


def target_arg(text: str) -> int | None:
    """``--target``: ``argmax`` (None: the predicted class of each image) or a class index."""
    if text.strip().lower() in ("argmax", "predicted", "none"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'argmax' or a class index (an integer >= 0), got {text!r}"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a class index >= 0, got {text}")
    return value


def add_common_options(parser: argparse.ArgumentParser, *, distributed: bool = False) -> None:
    """``--device``, ``--batch-size``, ``--workers``, ``--on-error`` (and the shared help text)."""
    group = parser.add_argument_group("execution")
    group.add_argument(
        "--device",
        default="auto",
        help="cpu, cuda, cuda:N or auto (default: auto = cuda when available, else cpu)"
        + (
            "; under torchrun each process uses cuda:LOCAL_RANK when the device is cuda"
            if distributed
            else ""
        ),
    )
    group.add_argument(
        "--batch-size",
        type=int_at_least(1),
        default=16,
        help="images per model call (default: %(default)s)",
    )
    group.add_argument(
        "--workers",
        type=int_at_least(0),
        default=0,
        help="processes reading and decoding images in the background (torch DataLoader "
        "workers; default: %(default)s = in the main process)",
    )
    group.add_argument(
        "--on-error",
        choices=ON_ERROR,
        default="stop",
        help="an unreadable image: stop with an error (default), or skip it with a warning and "
        "count it at the end",
    )


def add_preprocessing_options(parser: argparse.ArgumentParser, *, saved: bool = False) -> None:
    """``--resize``, ``--mean``, ``--std``, ``--grayscale-to-rgb`` and ``--names``."""
    default = (
        " (default: as recorded by generate in the maps' run.json, else none)" if saved else ""
    )
    group = parser.add_argument_group(
        "preprocessing",
        "Images are read as floats in [0, 1] (8-bit / 255, 16-bit / 65535), then converted to "
        "RGB, padded, resized and normalised in that order." + default,
    )
    group.add_argument(
        "--resize",
        nargs=2,
        type=int_at_least(1),
        metavar=("H", "W"),
        default=None,
        help="resize every image to H x W (bilinear, antialiased) before the model; maps are "
        "resized back to each image's own size",
    )
    group.add_argument(
        "--pad",
        choices=PADS,
        default=None,
        help="square: pad each image with black to a centred square before --resize, so that "
        "non-square images are scaled, not distorted; maps are carried back by resizing to the "
        "square and cropping the padding",
    )
    group.add_argument(
        "--mean",
        nargs="+",
        type=float,
        default=None,
        metavar="M",
        help="per-channel mean subtracted after resizing (one value, or one per channel)",
    )
    group.add_argument(
        "--std",
        nargs="+",
        type=float,
        default=None,
        metavar="S",
        help="per-channel standard deviation divided by after subtracting --mean",
    )
    group.add_argument(
        "--grayscale-to-rgb",
        action="store_true",
        default=None,
        help="repeat single-channel images over 3 channels (for models trained on RGB)",
    )
    parser.add_argument(
        "--names",
        default=None,
        metavar="FILE",
        help="tensor DATA only: a text file with one image name per line, in the tensor's "
        "order (default: <file stem>_<index:05d>, or the 'names' list of a .pt dict)",
    )


def shorten(items: Sequence[Any], limit: int = 5) -> str:
    """``a, b, c and 7 more``."""
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def plural(count: int, word: str, many: str | None = None) -> str:
    """``1 image``, ``3 images``."""
    return f"{count} {word if count == 1 else (many or word + 's')}"


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the body with one intra-op thread (small models on a shared CPU run fastest so);
    the caller's setting is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
