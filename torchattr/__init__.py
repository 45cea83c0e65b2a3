"""torchattr: functional attribution kernels for PyTorch, built on ``torch.func``.

Every method is a pure function ``(model, inputs, target) -> attributions``.
"""

from torchattr.cam import cam
from torchattr.gradient import input_x_gradient, reduce_channels, saliency, smoothgrad
from torchattr.integrated import integrated_gradients, quadrature
from torchattr.ranking import top_codes

__all__ = [
    "cam",
    "input_x_gradient",
    "integrated_gradients",
    "quadrature",
    "reduce_channels",
    "saliency",
    "smoothgrad",
    "top_codes",
]
__version__ = "0.1.0"
