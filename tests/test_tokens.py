"""Tests of torchattr.metrics.tokens (ERASER comprehensiveness / sufficiency), hand-computed on
a bag-of-tokens model whose score is the sum of one weight per token id."""

from __future__ import annotations

import pytest
import torch
from model_state import assert_unchanged, snapshot
from torch import Tensor, nn

from torchattr.metrics import comprehensiveness, sufficiency


class Bag(nn.Module):
    """``f(ids) = sum_l w[ids_l] (+ sum(labs))``, one logit per row; ``w[id] = id``."""

    def __init__(self, vocab: int = 12) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.arange(vocab, dtype=torch.float64))
        self.seen: list[Tensor] = []

    def forward(self, codes: Tensor, labs: Tensor | None = None) -> Tensor:
        self.seen.append(codes.clone())
        out = self.weight[codes].sum(dim=1)
        return out if labs is None else out + labs.sum(dim=1)


IDS = torch.tensor([[3, 1, 2, 4], [5, 5, 1, 2]])
PHI = IDS.double()  # each token's contribution: exact attributions of the bag model


def test_comprehensiveness_and_sufficiency_hand_computed() -> None:
    model = Bag().eval()
    before = snapshot(model)
    comp = comprehensiveness(model, IDS, PHI, fractions=(0.25, 0.5), score="logit")
    # sample 0 (f = 10): remove 4 -> 6, remove 4, 3 -> 3; sample 1 (f = 13): ties 5, 5 -> the
    # earlier first: remove 5 (pos 0) -> 8, remove both 5s -> 3
    assert comp.drops.tolist() == [[4.0, 5.0], [7.0, 10.0]]
    assert comp.aopc.tolist() == [5.5, 7.5]
    assert comp.tokens.tolist() == [[1, 1], [2, 2]]
    suff = sufficiency(model, IDS, PHI, fractions=(0.25, 0.5), score="logit")
    # keep 4 -> 4, keep 4, 3 -> 7; keep 5 -> 5, keep 5, 5 -> 10
    assert suff.drops.tolist() == [[6.0, 8.0], [3.0, 3.0]]
    assert suff.fractions == (0.25, 0.5)
    assert_unchanged(model, before)


def test_fraction_rounds_up_and_ties_break_by_position() -> None:
    model = Bag().eval()
    model.seen.clear()
    comp = comprehensiveness(model, IDS[:1], torch.ones(1, 4), fractions=0.1, score="logit")
    assert comp.tokens.tolist() == [[1]]  # ceil(0.1 * 4)
    assert model.seen[-1].tolist() == [[0, 1, 2, 4]]  # equal attributions: position 0 first
    assert comp.drops.tolist() == [[3.0]]


def test_padding_is_never_chosen_or_replaced() -> None:
    model = Bag().eval()
    ids = torch.tensor([[3, 1, 2, 4, 9, 9]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    phi = torch.tensor([[3.0, 1.0, 2.0, 4.0, 100.0, 100.0]])  # padding must be ignored
    comp = comprehensiveness(model, ids, phi, mask=mask, fractions=(0.25, 0.5), score="logit")
    assert comp.drops.tolist() == [[4.0], [7.0]]
    model.seen.clear()
    suff = sufficiency(model, ids, phi, mask=mask.bool(), fractions=(0.25, 0.5), score="logit")
    assert suff.drops.tolist() == [[6.0], [3.0]]
    assert model.seen[-1].tolist() == [[3, 0, 0, 4, 9, 9]]


def test_dict_inputs_embedding_attributions_chunks_and_probabilities() -> None:
    model = Bag().eval()
    labs = torch.tensor([[0.5, -1.0], [2.0, 0.0]], dtype=torch.float64)
    phi = PHI.unsqueeze(-1).expand(2, 4, 3) / 3  # [B, L, D]: summed over D
    fractions = (0.25, 0.5, 0.75)
    comp = comprehensiveness(
        model, {"codes": IDS, "labs": labs}, {"codes": phi}, key="codes",
        fractions=fractions, score="logit", chunk_size=1,
    )  # fmt: skip
    plain = comprehensiveness(model, IDS, PHI, fractions=fractions, score="logit")
    assert torch.allclose(comp.drops, plain.drops)  # the labs add the same to every copy
    # probabilities: a sigmoid of the single logit, per copy
    prob = sufficiency(model, {"codes": IDS, "labs": labs}, phi, key="codes", fractions=0.5)
    clean = (IDS.double().sum(1) + labs.sum(1)).sigmoid()
    kept = (torch.tensor([7.0, 10.0], dtype=torch.float64) + labs.sum(1)).sigmoid()
    assert torch.allclose(prob.drops[0], clean - kept)


def test_target_is_the_clean_prediction_for_every_copy() -> None:
    class Two(nn.Module):
        def forward(self, ids: Tensor) -> Tensor:
            s = ids.double().sum(dim=1)
            return torch.stack([s, 10 - s], dim=1)

    ids = torch.tensor([[1, 2, 3], [1, 1, 1]])
    comp = comprehensiveness(Two().eval(), ids, ids.double(), fractions=0.5, score="logit")
    # sample 0: class 0 (6 > 4), remove 3, 2 -> 1: drop 5; sample 1: class 1 (7 > 3), remove
    # two 1s -> score 10 - 1 = 9: drop 7 - 9 = -2
    assert comp.drops.tolist() == [[5.0, -2.0]]


def test_bad_arguments_are_refused() -> None:
    model = Bag().eval()
    with pytest.raises(TypeError, match="integer token ids"):
        comprehensiveness(model, IDS.double(), PHI)
    with pytest.raises(ValueError, match="key must name"):
        sufficiency(model, {"codes": IDS}, PHI)
    with pytest.raises(ValueError, match="key='codes'"):
        sufficiency(model, IDS, PHI, key="codes")
    with pytest.raises(ValueError, match="attributions has shape"):
        comprehensiveness(model, IDS, PHI[:, :3])
    with pytest.raises(ValueError, match="fractions"):
        comprehensiveness(model, IDS, PHI, fractions=(0.5, 1.0))
    with pytest.raises(TypeError, match="baseline"):
        comprehensiveness(model, IDS, PHI, baseline=0.5)
    with pytest.raises(ValueError, match=r"no real token in sample\(s\) \[1\]"):
        comprehensiveness(model, IDS, PHI, mask=torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="mask has shape"):
        comprehensiveness(model, IDS, PHI, mask=torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"NaN|inf|finite"):
        comprehensiveness(model, IDS, torch.full((2, 4), float("nan")))
