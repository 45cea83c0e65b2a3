"""Progress reporting for long calls, written once.

``progress=`` on the long calls (IG and SmoothGrad over several chunks, Score-/Ablation-CAM, ROAD,
deletion/insertion, the robustness metrics) takes:

* ``False`` (the default): nothing;
* ``True``: a tqdm bar on stderr when tqdm is installed (the ``progress`` extra) and stderr is a
  terminal, else nothing (logs and pipes get no control characters);
* a callable ``progress(done, total)``: called after each chunk with the work done so far (rows,
  or the unit the call documents), increasing, the last call with ``done == total``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

Progress = bool | Callable[[int, int], Any] | None


def check_progress(progress: Any) -> Progress:
    """``progress`` if it is a bool, None or a callable, else a TypeError naming it."""
    if progress is None or isinstance(progress, bool) or callable(progress):
        return progress
    raise TypeError(
        f"progress must be True, False or a callable (done, total), got {type(progress).__name__}"
    )


@contextmanager
def reporting(progress: Progress, total: int, description: str) -> Iterator[Callable[[int], None]]:
    """Context giving ``report(done)``: tell ``progress`` that ``done`` of ``total`` are done.

    ``report`` may be called with the same count twice; only increases are passed on.
    """
    check_progress(progress)
    if not progress or total <= 0:
        yield _nothing
        return
    if callable(progress):
        last = [0]

        def report(done: int) -> None:
            if done > last[0]:
                last[0] = done
                progress(done, total)

        yield report
        return
    bar = _tqdm(total, description)
    if bar is None:
        yield _nothing
        return
    try:
        yield lambda done: bar.update(max(0, done - bar.n))
    finally:
        bar.close()


def _nothing(done: int) -> None:
    pass


def _tqdm(total: int, description: str) -> Any:
    try:
        terminal = sys.stderr.isatty()
    except (AttributeError, ValueError):
        terminal = False
    if not terminal:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=description, file=sys.stderr, leave=False)


def reported(
    ranges: Iterable[tuple[int, int]], progress: Progress, total: int, description: str
) -> Iterator[tuple[int, int]]:
    """``ranges`` ``(start, stop)`` unchanged; ``progress`` hears ``stop`` after each body ran."""
    with reporting(progress, total, description) as report:
        for start, stop in ranges:
            yield start, stop
            report(stop)
