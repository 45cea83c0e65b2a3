"""Independent, reproducible random streams derived from one user seed."""

from __future__ import annotations

import hashlib

__all__ = ["derive_seed"]


def derive_seed(seed: int, stream: str) -> int:
    """A 63-bit seed for the random stream ``stream``, derived from ``seed`` by hashing.

    ``derive_seed(s, name) = int(blake2b(f"{s}/{name}", 8 bytes)) mod 2^63``. Different streams
    get unrelated seeds, so generators seeded from one user seed never replay each other's draws
    (``torch.randperm(n, generator=Generator().manual_seed(s))`` twice gives the same permutation:
    shuffling with the seed that drew the labels would sort the data by label).

    Example::

        shuffle = torch.Generator().manual_seed(derive_seed(0, "shuffle"))
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    digest = hashlib.blake2b(f"{seed}/{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)
