"""Built-in synthetic data sets.

* :func:`make_phantoms`: chest-X-ray-like grey images with lesion boxes (localisation demos).
"""

from torchattr.data.phantoms import lesion_box, make_phantoms

__all__ = ["lesion_box", "make_phantoms"]
