"""Built-in synthetic data sets.

* :func:`make_phantoms`: chest-X-ray-like grey images with lesion boxes (localisation demos);
  :class:`PhantomNet`: a small CNN that detects their lesions;
* :func:`derive_seed`: independent random streams from one seed.
"""

from torchattr.data.models import PhantomNet
from torchattr.data.phantoms import lesion_box, make_phantoms
from torchattr.data.seeding import derive_seed

__all__ = ["PhantomNet", "derive_seed", "lesion_box", "make_phantoms"]
