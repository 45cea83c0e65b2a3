"""``python -m torchattr``: the command line (see :mod:`torchattr.cli`)."""

from torchattr.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
