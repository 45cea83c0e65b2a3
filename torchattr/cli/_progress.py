"""Progress bars: tqdm on stderr when it is installed and stderr is a terminal, else nothing."""

from __future__ import annotations

import sys
from typing import Any


class _Silent:
    """The part of tqdm's interface the commands use, doing nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(total: int, description: str, *, enabled: bool = True) -> Any:
    """A bar counting to ``total`` (``with progress(n, "saliency") as bar: bar.update(k)``).

    A tqdm bar when ``enabled`` (rank 0 of a distributed run), tqdm is installed (the
    ``progress`` extra) and stderr is a terminal; a silent stand-in otherwise, so logs and
    pipes get no control characters.
    """
    if not enabled or total <= 0 or not _is_terminal():
        return _Silent()
    try:
        from tqdm import tqdm
    except ImportError:
        return _Silent()
    return tqdm(total=total, desc=description, unit="img", file=sys.stderr, leave=False)


def _is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
