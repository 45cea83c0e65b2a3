"""Built-in synthetic data sets.

* :func:`make_phantoms`: chest-X-ray-like grey images with lesion boxes (localisation demos);
  :class:`PhantomNet`: a small CNN that detects their lesions;
* :func:`derive_seed`: independent random streams from one seed;
* :func:`make_ehr`: synthetic patients (condition / procedure code bags, labs, an outcome driven
  by a planted condition); :class:`EHRNet`: an outcome model over them;
* :class:`VolumeNet`: a small 3-D CNN for volumes ``[B, C, D, H, W]``.
"""

from torchattr.data.ehr import EHRData, make_ehr
from torchattr.data.models import EHRNet, PhantomNet, VolumeNet
from torchattr.data.phantoms import lesion_box, make_phantoms
from torchattr.data.seeding import derive_seed

__all__ = [
    "EHRData",
    "EHRNet",
    "PhantomNet",
    "VolumeNet",
    "derive_seed",
    "lesion_box",
    "make_ehr",
    "make_phantoms",
]
