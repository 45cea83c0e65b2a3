"""Models over discrete codes for the embedding tests: EHR bags, a transformer, a GRU."""

from __future__ import annotations

import torch
from torch import Tensor, nn

PAD, UNK = 0, 1


class EHRModel(nn.Module):
    """Two bags of codes (conditions, procedures) plus lab values -> one logit [B, 1].

    Each bag is the masked mean of its code embeddings (PAD = 0 is ignored).
    """

    def __init__(self, n_conditions: int = 30, n_procedures: int = 20, dim: int = 8) -> None:
        super().__init__()
        self.conditions = nn.Embedding(n_conditions, dim)
        self.procedures = nn.Embedding(n_procedures, dim)
        self.labs = nn.Sequential(nn.Linear(4, dim), nn.Tanh())
        self.head = nn.Sequential(nn.Linear(3 * dim, 16), nn.Softplus(), nn.Linear(16, 1))

    @staticmethod
    def bag(embedded: Tensor, codes: Tensor) -> Tensor:
        keep = (codes != PAD).unsqueeze(-1).to(embedded.dtype)
        return (embedded * keep).sum(1) / keep.sum(1).clamp_min(1)

    def forward(self, conditions: Tensor, procedures: Tensor, labs: Tensor) -> Tensor:
        z = torch.cat(
            [
                self.bag(self.conditions(conditions), conditions),
                self.bag(self.procedures(procedures), procedures),
                self.labs(labs),
            ],
            dim=1,
        )
        return self.head(z)


class TransformerClassifier(nn.Module):
    """Token classifier with padding: [B, L] ids -> [B, 3] logits."""

    def __init__(self, vocab: int = 25, dim: int = 8) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim, padding_idx=PAD)
        self.position = nn.Parameter(torch.randn(1, 16, dim) * 0.1)
        layer = nn.TransformerEncoderLayer(dim, 2, 16, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(dim, 3)

    def forward(self, tokens: Tensor) -> Tensor:
        padding = tokens == PAD
        h = self.embedding(tokens) + self.position[:, : tokens.shape[1]]
        h = self.encoder(h, src_key_padding_mask=padding)
        keep = (~padding).unsqueeze(-1).to(h.dtype)
        return self.head((h * keep).sum(1) / keep.sum(1))


class GRUClassifier(nn.Module):
    """GRU over token embeddings, last hidden state -> [B, 4] logits."""

    def __init__(self, vocab: int = 25, dim: int = 8) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim)
        self.gru = nn.GRU(dim, 12, batch_first=True)
        self.head = nn.Linear(12, 4)

    def forward(self, tokens: Tensor) -> Tensor:
        _, hidden = self.gru(self.embedding(tokens))
        return self.head(hidden[-1])


def tokens(batch: int = 4, length: int = 7, vocab: int = 25, seed: int = 0) -> Tensor:
    """Random ids in [2, vocab) with trailing padding of different lengths."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab, (batch, length), generator=g)
    for b in range(batch):
        ids[b, length - b :] = PAD  # sample b has b padded positions
    return ids


def ehr_batch(batch: int = 4, seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    conditions = torch.randint(2, 30, (batch, 6), generator=g)
    procedures = torch.randint(2, 20, (batch, 3), generator=g)
    conditions[1, 4:] = PAD
    procedures[2, 1:] = PAD
    labs = torch.randn(batch, 4, generator=g, dtype=torch.float64)
    return {"conditions": conditions, "procedures": procedures, "labs": labs}


def build(cls: type[nn.Module], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return cls().double().eval()
