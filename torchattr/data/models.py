"""Small reference models for the built-in data sets."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from torchattr.data.ehr import PAD as EHR_PAD

__all__ = ["EHRNet", "PhantomNet", "VolumeNet"]


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


class VolumeNet(nn.Module):
    """A small 3-D CNN for volumes (CT, MR): ``[B, C, D, H, W] -> [B, classes]`` logits.

    Blocks ``conv 3x3x3 -> ReLU`` with ``channels[i]`` outputs (``features``, an
    ``nn.Sequential``; ``features[-1]`` is the last block's ReLU, a layer for 3-D CAMs), a
    ``2 x 2 x 2`` max pooling between blocks, then global average pooling over ``D, H, W`` and a
    linear ``head``. Any volume size that survives the poolings works (at least ``2^(n - 1)``
    voxels along each axis for ``n`` blocks).

    Example::

        model = VolumeNet(in_channels=1, classes=2).eval()
        logits = model(volumes)                         # volumes [B, 1, D, H, W] -> [B, 2]
        maps = ta.saliency(model, volumes)              # [B, D, H, W]
    """

    def __init__(
        self, in_channels: int = 1, classes: int = 2, channels: Sequence[int] = (4, 8)
    ) -> None:
        super().__init__()
        if not channels:
            raise ValueError("channels must name at least one block")
        if classes < 1:
            raise ValueError(f"classes must be >= 1, got {classes}")
        layers: list[nn.Module] = []
        previous = in_channels
        for i, width in enumerate(channels):
            if i > 0:
                layers.append(nn.MaxPool3d(2))
            layers += [nn.Conv3d(previous, width, kernel_size=3, padding=1), nn.ReLU()]
            previous = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(previous, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).mean(dim=(2, 3, 4)))


class EHRNet(nn.Module):
    """An outcome model over EHR code bags and lab values, for :func:`~torchattr.data.make_ehr`.

    ``forward(conditions [B, Lc] long, procedures [B, Lp] long, labs [B, n_labs] float) ->
    [B, 1]``: the outcome's log-odds. Each bag of codes is embedded once
    (``condition_embedding``, ``procedure_embedding``: ``[B, L] -> [B, L, dim]``) and pooled over
    its real positions, PAD (id 0) ignored: ``pool="sum"`` (the default; a code's effect does not
    shrink as the patient's record grows) or ``"mean"`` (an all-PAD bag pools to zeros). The labs
    go through ``Linear -> GELU``; the three ``[B, dim]`` parts are concatenated and a
    ``Linear -> GELU -> Linear`` head gives the logit. GELU keeps the model smooth, so Integrated
    Gradients converges fast along embedding-space paths.

    Each embedding runs exactly once per forward, so the codes can be explained with
    ``ta.integrated_gradients(model, inputs, layer={"conditions": model.condition_embedding,
    "procedures": model.procedure_embedding}, mask={"conditions": PAD, "procedures": PAD})``.

    Example::

        model = EHRNet(n_conditions=32, n_procedures=22).eval()
        logits = model(**data.inputs())          # [N, 1]
    """

    def __init__(
        self,
        n_conditions: int,
        n_procedures: int,
        n_labs: int = 4,
        dim: int = 16,
        hidden: int = 32,
        pool: str = "sum",
    ) -> None:
        super().__init__()
        if pool not in ("sum", "mean"):
            raise ValueError(f"pool must be 'sum' or 'mean', got {pool!r}")
        self.pool = pool
        self.condition_embedding = nn.Embedding(n_conditions, dim, padding_idx=EHR_PAD)
        self.procedure_embedding = nn.Embedding(n_procedures, dim, padding_idx=EHR_PAD)
        self.labs = nn.Sequential(nn.Linear(n_labs, dim), nn.GELU())
        self.head = nn.Sequential(nn.Linear(3 * dim, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def bag(self, embedded: Tensor, codes: Tensor) -> Tensor:
        """Pool ``embedded`` ``[B, L, dim]`` over the non-PAD positions of ``codes`` ``[B, L]``."""
        keep = (codes != EHR_PAD).unsqueeze(-1).to(embedded.dtype)
        total = (embedded * keep).sum(1)
        return total if self.pool == "sum" else total / keep.sum(1).clamp_min(1)

    def forward(self, conditions: Tensor, procedures: Tensor, labs: Tensor) -> Tensor:
        parts = [
            self.bag(self.condition_embedding(conditions), conditions),
            self.bag(self.procedure_embedding(procedures), procedures),
            self.labs(labs),
        ]
        return self.head(torch.cat(parts, dim=1))
