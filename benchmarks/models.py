"""Benchmark models, written from scratch (torchvision is not a dependency).

* ``small``: a four-conv CNN with BatchNorm, ReLU and max pooling and a linear head; any square
  input side that is a multiple of 4 (3x32x32, 3x64x64, ...), 10 classes.
* ``resnet18``: the ResNet-18 architecture (He et al. 2016): BasicBlock with a functional residual
  add, [2, 2, 2, 2] blocks of widths 64/128/256/512, BatchNorm, global average pooling; 1000
  classes by default. About 11.7 M parameters, like torchvision's ``resnet18``.
* ``resnet50``: the ResNet-50 architecture (He et al. 2016): Bottleneck blocks (1x1, 3x3, 1x1
  convolutions, expansion 4, stride on the 3x3 as in torchvision) with a functional residual add,
  [3, 4, 6, 3] blocks, base width 64 (``width=`` scales it: 16 for a CPU smoke run), BatchNorm;
  about 25.6 M parameters at width 64 and 1000 classes, like torchvision's ``resnet50``.
* ``transformer``: a text classifier over integer tokens ``[B, L]`` (vocabulary 1000, PAD = 0,
  UNK = 1): ``nn.Embedding(1000, 128, padding_idx=0)`` plus learned positions, a 2-layer
  ``nn.TransformerEncoder`` (4 heads, feed-forward 256 with ReLU, no dropout, batch first, key
  padding mask), masked mean pooling over the non-pad tokens and a linear head; 4 classes by
  default.
  :func:`token_batch` makes its seeded inputs.

:func:`build` returns any of them, with fixed-seed weights (and non-trivial BatchNorm statistics),
in eval mode.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

MODELS = ("small", "resnet18", "resnet50", "transformer")
IMAGE_MODELS = ("small", "resnet18", "resnet50")
TEXT_MODELS = ("transformer",)
PAD, UNK = 0, 1  # token ids of the transformer: padding, unknown
VOCAB, MAX_LENGTH = 1000, 512


class SmallCNN(nn.Module):
    """conv-bn-relu x2, maxpool, conv-bn-relu x2, maxpool, global average pool, linear."""

    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
            )

        self.features = nn.Sequential(
            block(3, width),
            block(width, width),
            nn.MaxPool2d(2),
            block(width, 2 * width),
            block(2 * width, 2 * width),
            nn.MaxPool2d(2),
        )
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, num_classes]`` of images ``[B, 3, H, W]``."""
        return self.head(self.features(x).mean(dim=(2, 3)))


class BasicBlock(nn.Module):
    """Two 3x3 conv-bn layers with a residual connection (1x1 conv-bn projection when needed)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18: 7x7/2 stem, 3x3/2 max pool, four stages of two BasicBlocks, average pool, fc."""

    def __init__(
        self, num_classes: int = 1000, widths: tuple[int, ...] = (64, 128, 256, 512)
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        stages = []
        cin = widths[0]
        for i, cout in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout)))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, num_classes]`` of images ``[B, 3, H, W]`` (H, W >= 32)."""
        return self.fc(self.stages(self.stem(x)).mean(dim=(2, 3)))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (stride here), 1x1 expand (x4), each with BatchNorm; residual add."""

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        cout = 4 * width
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        """``relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + shortcut(x))``."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


class ResNet50(nn.Module):
    """ResNet-50: 7x7/2 stem, 3x3/2 max pool, Bottleneck stages [3, 4, 6, 3], average pool, fc.

    ``self.stages[-1]`` is the last convolutional stage (the Grad-CAM layer).
    """

    def __init__(self, num_classes: int = 1000, width: int = 64) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        stages = []
        cin = width
        for i, blocks in enumerate((3, 4, 6, 3)):
            w = width * 2**i
            layers = [Bottleneck(cin, w, 1 if i == 0 else 2)]
            layers += [Bottleneck(4 * w, w) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
            cin = 4 * w
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, num_classes]`` of images ``[B, 3, H, W]`` (H, W >= 32)."""
        return self.fc(self.stages(self.stem(x)).mean(dim=(2, 3)))


class ViT(nn.Module):
    """A ViT-B/16 (Hugging Face ``ViTForImageClassification``, eager attention) returning logits.

    ``hidden``/``layers``/``heads``/``mlp`` default to ViT-B/16's 768/12/12/3072; random weights
    from the config, nothing downloaded (``transformers`` is needed). :attr:`cam_layer` is the
    last encoder block (its tokens, less the class token, form the ``grid x grid`` map that
    Grad-CAM weighs).
    """

    def __init__(
        self,
        image_size: int = 224,
        hidden: int = 768,
        layers: int = 12,
        heads: int = 12,
        mlp: int = 3072,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        from transformers import ViTConfig, ViTForImageClassification

        config = ViTConfig(
            image_size=image_size, patch_size=16, hidden_size=hidden, num_hidden_layers=layers,
            num_attention_heads=heads, intermediate_size=mlp, num_labels=num_classes,
            attn_implementation="eager",
        )  # fmt: skip
        self.vit = ViTForImageClassification(config)
        self.grid = image_size // 16

    @property
    def cam_layer(self) -> nn.Module:
        """The last encoder block (transformers 5 names the blocks ``layers``, 4 ``encoder.layer``;
        a property, so that the block is not registered twice under two names)."""
        body = self.vit.vit
        return (body.layers if hasattr(body, "layers") else body.encoder.layer)[-1]

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, num_classes]`` of images ``[B, 3, S, S]``."""
        return self.vit(pixel_values=x).logits


class TransformerClassifier(nn.Module):
    """Tokens ``[B, L]`` -> logits ``[B, num_classes]``: embedding + positions, encoder, pooling.

    ``self.embedding`` is the layer attributed by embedding-space IG. Positions holding ``PAD``
    are masked out of the attention (key padding mask) and of the mean pooling; every row must
    hold at least one non-pad token.
    """

    def __init__(
        self,
        num_classes: int = 4,
        vocab: int = VOCAB,
        dim: int = 128,
        heads: int = 4,
        ff: int = 256,
        layers: int = 2,
        max_length: int = MAX_LENGTH,
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim, padding_idx=PAD)
        self.position = nn.Parameter(0.02 * torch.randn(1, max_length, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, ff, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, tokens: Tensor) -> Tensor:
        """Logits ``[B, num_classes]`` of token ids ``[B, L]`` (L <= max_length)."""
        padding = tokens == PAD
        h = self.embedding(tokens) + self.position[:, : tokens.shape[1]]
        h = self.encoder(h, src_key_padding_mask=padding)
        keep = (~padding).unsqueeze(-1).to(h.dtype)
        return self.head((h * keep).sum(1) / keep.sum(1).clamp_min(1))


def token_batch(batch: int, length: int = 64, *, vocab: int = VOCAB, seed: int = 0) -> Tensor:
    """Seeded token ids ``[B, L]`` in ``[2, vocab)`` with trailing padding (``PAD``).

    Sample b keeps its first ``L - (b * L // (2 B))`` tokens: from no padding (b = 0) to almost
    half the row padded, so every row has real tokens and the padded lengths differ.
    """
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab, (batch, length), generator=gen)
    for b in range(batch):
        pad = b * length // (2 * batch)
        if pad:
            ids[b, length - pad :] = PAD
    return ids


def unk_baseline(ids: Tensor) -> Tensor:
    """The usual text baseline: ``UNK`` at every real token, ``PAD`` kept where ``ids`` pads."""
    return torch.where(ids == PAD, PAD, UNK)


def _randomize_batchnorm(model: nn.Module, generator: torch.Generator) -> None:
    """Give every BatchNorm non-trivial running statistics and affine parameters (seeded)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
                m.running_var.copy_(0.5 + torch.rand(n, generator=generator))
                m.weight.copy_(0.5 + torch.rand(n, generator=generator))
                m.bias.copy_(0.1 * torch.randn(n, generator=generator))


def build(
    name: str,
    device: str | torch.device = "cpu",
    *,
    num_classes: int | None = None,
    seed: int = 0,
    width: int | None = None,
) -> nn.Module:
    """Build benchmark model ``name`` (see :data:`MODELS`) on ``device``, in eval mode.

    Weights are drawn with ``seed`` (default initialisation, plus random BatchNorm statistics), so
    two calls give identical models. ``num_classes`` defaults to 10 (small), 1000 (resnet18) and
    4 (transformer); ``width`` is ResNet-50's base width (default 64).
    """
    torch.manual_seed(seed)
    if name == "small":
        model: nn.Module = SmallCNN(num_classes=num_classes or 10)
    elif name == "resnet18":
        model = ResNet18(num_classes=num_classes or 1000)
    elif name == "resnet50":
        model = ResNet50(num_classes=num_classes or 1000, width=width or 64)
    elif name == "transformer":
        model = TransformerClassifier(num_classes=num_classes or 4)
    else:
        raise ValueError(f"unknown model {name!r}: expected one of {', '.join(MODELS)}")
    _randomize_batchnorm(model, torch.Generator().manual_seed(seed + 1))
    return model.to(device).eval()


def parameter_count(model: nn.Module) -> int:
    """Number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())
