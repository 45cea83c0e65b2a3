"""The ``torchattr`` command line.

``torchattr <command> [options]`` (or ``python -m torchattr ...``). Each command lives in its own
module with ``add_parser(subparsers)``, which registers the subcommand and sets ``handler`` (a
function ``argparse.Namespace -> int``).

Commands: ``demo`` (:mod:`torchattr.cli.demo`).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import torchattr
from torchattr.cli import demo

COMMANDS = (demo,)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per command."""
    parser = argparse.ArgumentParser(
        prog="torchattr", description="Functional attribution kernels for PyTorch."
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
    """
    parser = build_parser()
    args = parser.parse_args(None if argv is None else [os.fspath(a) for a in argv])
    if args.command is None:
        parser.print_help()
        return 2
    return int(args.handler(args))
