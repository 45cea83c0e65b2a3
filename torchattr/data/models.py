"""Small reference models for the built-in data sets."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class PhantomNet(nn.Module):
    """A small CNN lesion detector for :func:`~torchattr.data.make_phantoms`.

    ``[B, 1, H, W] -> [B, 1]``: the log-odds that the image holds a lesion. Blocks
    ``conv 3x3 -> BatchNorm -> ReLU`` with ``channels[i]`` outputs, a 2 x 2 max pooling after each
    of the first ``len(channels) - 1`` blocks, then a 1 x 1 convolution giving a lesion logit per
    location ``z[b, i, j]`` (``[B, 1, H / 4, W / 4]`` with the default three blocks), and the
    image logit ``max_ij z[b, i, j]``: the image is as suspicious as its most suspicious place
    (multiple-instance pooling). The gradient of that maximum flows back through one location's
    receptive field, so saliency maps of a trained model concentrate on the detected lesion.
    Train it with ``binary_cross_entropy_with_logits``; with ``target=None`` torchattr explains
    the lesion logit.

    Example::

        model = PhantomNet().eval()
        logits = model(images)            # [B, 1]; a lesion is predicted where logits[:, 0] > 0
        where = model.logit_map(images)   # [B, 1, H / 4, W / 4]
    """

    def __init__(self, channels: Sequence[int] = (8, 16, 32), in_channels: int = 1) -> None:
        super().__init__()
        if not channels:
            raise ValueError("channels must name at least one block")
        layers: list[nn.Module] = []
        previous = in_channels
        for i, width in enumerate(channels):
            layers += [
                nn.Conv2d(previous, width, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
            ]
            if i < len(channels) - 1:
                layers.append(nn.MaxPool2d(2))
            previous = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(previous, 1, kernel_size=1)

    def logit_map(self, x: Tensor) -> Tensor:
        """Per-location lesion logits ``[B, 1, h, w]``."""
        return self.head(self.features(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.logit_map(x).flatten(1).amax(dim=1, keepdim=True)
