"""Fixtures of the command-line tests: a tiny CNN, small image sets, boxes (tests/cli_support)."""
