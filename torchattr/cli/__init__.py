"""The ``torchattr`` command line.

``torchattr <command> [options]`` (or ``python -m torchattr ...``). Each command lives in its own
module with ``add_parser(subparsers)``, which registers the subcommand and sets ``handler`` (a
function ``argparse.Namespace -> int``).

Commands:

* ``demo`` (:mod:`torchattr.cli.demo`): the built-in phantom demo;
* ``generate`` (:mod:`torchattr.cli.generate`): maps of a data set, ``OUT/<method>/<name>.npy``;
* ``view`` (:mod:`torchattr.cli.view`): overlays of maps on their images, as PNG;
* ``evaluate`` (:mod:`torchattr.cli.evaluate`): localisation and ROAD scores of maps;
* ``compare`` (:mod:`torchattr.cli.compare`): one table and plot across evaluate results;
* ``report`` (:mod:`torchattr.cli.report`): a static HTML report of a demo, evaluate or compare run.

Exit codes: 0 success; 1 bad input (a missing or unreadable file, a target the model does not
have, an ``--out`` that is or holds an input, NaN in a map, ...), reported on stderr as one line
``torchattr <command>: error: ...``; 2 bad options (argparse); 3 partial (``generate --on-error
skip`` left some images without a map, unreadable or with NaN / inf values: they are counted and
listed in ``run.json`` and on stderr); 4 a file could not be read or written (any ``OSError``: a
read-only or full disk, ``--out`` is a file, no permission; a missing file gives 1), one line
naming the file; 130 interrupted (Ctrl-C; files already written are complete, ``generate``
resumes).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import torchattr
from torchattr.cli import compare, demo, evaluate, generate, report, view
from torchattr.cli._common import EXIT_ERROR, EXIT_OS_ERROR, CommandError, os_error_message

__all__ = ["main"]

COMMANDS = (demo, generate, view, evaluate, compare, report)
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per command."""
    parser = argparse.ArgumentParser(
        prog="torchattr",
        description="Functional attribution kernels for PyTorch: demo, and maps of a data set "
        "(generate), overlays (view), scores against boxes (evaluate), tables across methods "
        "(compare), an HTML report (report). `torchattr <command> --help` for each.",
    )
    parser.add_argument("--version", action="version", version=f"torchattr {torchattr.__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="command")
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: Sequence[str | os.PathLike[str]] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the command, return its exit code.

    Path-like arguments are accepted (``main(["demo", "--out", tmp_path])``). Without a command,
    prints the help and returns 2. Invalid options exit through ``argparse`` (``SystemExit(2)``).
    A :class:`~torchattr.cli._common.CommandError` (bad input) is printed on stderr and gives
    its exit code (1); an ``OSError`` (a file that cannot be read or written) one line and 4;
    Ctrl-C gives 130.

    Example::

        main(["demo", "--quick", "--out", "demo_out"])   # as `python -m torchattr demo --quick`
    """
    parser = build_parser()
    args = parser.parse_args(None if argv is None else [os.fspath(a) for a in argv])
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.handler(args))
    except CommandError as error:
        print(f"torchattr {args.command}: error: {error}", file=sys.stderr, flush=True)
        return error.code
    except UnicodeDecodeError as error:  # a binary file where text (boxes, names) was expected
        print(
            f"torchattr {args.command}: error: a file is not UTF-8 text ({error.reason} at byte "
            f"{error.start}); expected a text file (JSON, CSV, a list of names)",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_ERROR
    except OSError as error:  # read-only or full disk, --out is a file, ...: one line
        message = os_error_message(error)
        print(f"torchattr {args.command}: error: {message}", file=sys.stderr, flush=True)
        return EXIT_ERROR if isinstance(error, FileNotFoundError) else EXIT_OS_ERROR
    except KeyboardInterrupt:
        print(
            f"torchattr {args.command}: interrupted; files already written are complete",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_INTERRUPTED
