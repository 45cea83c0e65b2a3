"""Attribution of discrete codes through their embeddings (layer=), against Captum LayerIG."""

from __future__ import annotations

import pytest
import torch
from captum.attr import LayerGradientXActivation, LayerIntegratedGradients
from sequence_models import (
    PAD,
    UNK,
    EHRModel,
    GRUClassifier,
    TransformerClassifier,
    build,
    ehr_batch,
    tokens,
)

import torchattr as ta


def close(actual, expected, rtol=1e-5, atol=1e-9):
    torch.testing.assert_close(actual, expected.to(actual.dtype), rtol=rtol, atol=atol)


def unk_baseline(ids):
    """UNK everywhere except padding, which stays PAD (Captum runs its baseline forward)."""
    return torch.where(ids == PAD, PAD, UNK)


@pytest.mark.parametrize("cls", [TransformerClassifier, GRUClassifier])
@pytest.mark.parametrize("method", ["gausslegendre", "riemann_middle"])
def test_token_models_match_captum(cls, method):
    model, ids = build(cls), tokens()
    target = torch.tensor([0, 1, 2, 1])
    ours, delta = ta.integrated_gradients(
        model,
        ids,
        baseline=unk_baseline(ids),
        target=target,
        layer=model.embedding,
        steps=16,
        method=method,
        return_delta=True,
    )
    theirs, their_delta = LayerIntegratedGradients(model, model.embedding).attribute(
        ids,
        unk_baseline(ids),
        target=target,
        n_steps=16,
        method=method,
        return_convergence_delta=True,
    )
    assert ours.shape == ids.shape
    rtol = 1e-5 if method == "gausslegendre" else 2e-5  # Captum's float32 Riemann nodes
    close(ours, theirs.sum(-1), rtol=rtol)
    close(delta, their_delta, rtol=1e-4, atol=1e-8)


def test_ehr_dict_matches_captum_per_code_feature():
    model, batch = build(EHRModel), ehr_batch()
    layers = {"conditions": model.conditions, "procedures": model.procedures}
    # Lab values held at their own value (zero path length) so that only the codes move, as
    # Captum's multi-layer IG does with additional_forward_args.
    ours = ta.integrated_gradients(
        model,
        batch,
        baseline={"conditions": UNK, "procedures": UNK, "labs": batch["labs"]},
        layer=layers,
        steps=20,
    )
    assert set(ours) == {"conditions", "procedures", "labs"}
    assert ours["conditions"].shape == batch["conditions"].shape
    assert ours["procedures"].shape == batch["procedures"].shape
    assert torch.equal(ours["labs"], torch.zeros_like(ours["labs"]))
    lig = LayerIntegratedGradients(model, [model.conditions, model.procedures])
    conditions, procedures = lig.attribute(
        (batch["conditions"], batch["procedures"]),
        (torch.full_like(batch["conditions"], UNK), torch.full_like(batch["procedures"], UNK)),
        additional_forward_args=(batch["labs"],),
        n_steps=20,
    )
    close(ours["conditions"], conditions.sum(-1))
    close(ours["procedures"], procedures.sum(-1))


def test_ehr_completeness_with_codes_and_labs_moving():
    model, batch = build(EHRModel), ehr_batch()
    layers = {"conditions": model.conditions, "procedures": model.procedures}
    result, delta = ta.integrated_gradients(
        model, batch, baseline={"labs": 0.01}, layer=layers, steps=50, return_delta=True
    )
    assert delta.shape == (4,)
    assert delta.abs().max() < 1e-6
    assert result["labs"].abs().sum() > 0
    with torch.no_grad():
        zero = model.head(
            torch.cat(
                [
                    torch.zeros(4, 16, dtype=torch.float64),
                    model.labs(torch.full((4, 4), 0.01, dtype=torch.float64)),
                ],
                1,
            )
        )
        expected_gap = model(**batch) - zero
    total = sum(r.flatten(1).sum(1) for r in result.values())
    close(total, expected_gap[:, 0], rtol=1e-6, atol=1e-6)


def test_padding_gets_exactly_zero():
    model, ids = build(TransformerClassifier), tokens()
    for mask in (PAD, ids != PAD):
        for fn in (
            lambda m: ta.integrated_gradients(model, ids, layer=model.embedding, steps=8, mask=m),
            lambda m: ta.input_x_gradient(model, ids, layer=model.embedding, mask=m),
            lambda m: ta.saliency(model, ids, layer=model.embedding, mask=m),
        ):
            result = fn(mask)
            assert result.shape == ids.shape
            assert torch.all(result[ids == PAD] == 0)
            assert torch.all(result[ids != PAD] != 0)


def test_padding_mask_keeps_the_padded_embedding_on_the_path():
    """With a mask, IG's completeness holds against the baseline that keeps padding."""
    model, ids = build(GRUClassifier), tokens()
    result, delta = ta.integrated_gradients(
        model, ids, layer=model.embedding, steps=64, mask=PAD, return_delta=True
    )
    assert delta.abs().max() < 1e-4
    assert torch.all(result[ids == PAD] == 0)


def test_baseline_forms_in_embedding_space():
    model, ids = build(GRUClassifier), tokens()
    kwargs = dict(target=1, layer=model.embedding, steps=6)
    zero = ta.integrated_gradients(model, ids, **kwargs)
    explicit_zero = ta.integrated_gradients(
        model, ids, baseline=torch.zeros(8, dtype=torch.float64), **kwargs
    )
    close(zero, explicit_zero)
    one_id = ta.integrated_gradients(model, ids, baseline=UNK, **kwargs)
    id_tensor = ta.integrated_gradients(model, ids, baseline=torch.full_like(ids, UNK), **kwargs)
    unk_vector = model.embedding.weight[UNK].detach()
    as_embedding = ta.integrated_gradients(model, ids, baseline=unk_vector, **kwargs)
    close(one_id, id_tensor)
    close(one_id, as_embedding)
    assert not torch.allclose(one_id, zero)


def test_layer_gradient_methods_match_captum():
    model, ids = build(TransformerClassifier), tokens()
    target = torch.tensor([2, 0, 1, 1])
    product = LayerGradientXActivation(model, model.embedding).attribute(ids, target=target)
    close(ta.input_x_gradient(model, ids, target, layer=model.embedding), product.sum(-1))
    gradient = LayerGradientXActivation(model, model.embedding, multiply_by_inputs=False)
    grad = gradient.attribute(ids, target=target)
    close(ta.saliency(model, ids, target, layer=model.embedding), grad.abs().amax(-1))
    close(ta.saliency(model, ids, target, layer=model.embedding, reduce=None, abs=False), grad)


def test_smoothgrad_in_embedding_space_keeps_the_layer_shape():
    model, ids = build(GRUClassifier), tokens()
    result = ta.smoothgrad(model, ids, 1, layer=model.embedding, samples=3, noise=0.0)
    grad = LayerGradientXActivation(model, model.embedding, multiply_by_inputs=False)
    close(result, grad.attribute(ids, target=1))


def test_multi_target_and_chunking_in_embedding_space():
    model, ids = build(TransformerClassifier), tokens()
    targets = torch.tensor([[0, 2], [1, 0], [2, 2], [0, 1]])
    kwargs = dict(layer=model.embedding, steps=5, baseline=UNK, mask=PAD)
    multi, delta = ta.integrated_gradients(model, ids, target=targets, return_delta=True, **kwargs)
    assert multi.shape == (4, 2, 7) and delta.shape == (4, 2)
    for k in range(2):
        single = ta.integrated_gradients(model, ids, target=targets[:, k], chunk_size=3, **kwargs)
        close(multi[:, k], single, rtol=1e-9, atol=1e-12)


def test_model_and_hooks_unchanged():
    model, ids = build(TransformerClassifier), tokens()
    model.embedding.register_forward_hook(lambda *a: None)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ta.integrated_gradients(model, ids, layer=model.embedding, steps=4)
    with pytest.raises(ValueError):
        ta.integrated_gradients(model, ids, layer=model.embedding, steps=4, target=7)
    assert len(model.embedding._forward_hooks) == 1
    assert all(len(m._forward_hooks) == 0 for m in model.modules() if m is not model.embedding)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


# ---------------------------------------------------------------- bad input


def test_float_inputs_where_ids_are_expected():
    model = build(GRUClassifier)
    with pytest.raises(TypeError, match=r"inputs has dtype torch.float64 but its layer Embedding"):
        ta.integrated_gradients(model, tokens().double(), layer=model.embedding)


def test_ids_out_of_range_fail_before_any_model_call():
    model, ids = build(GRUClassifier), tokens()
    calls = []
    model.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(ValueError, match=r"holds id 25, out of range.*25 rows"):
        ta.integrated_gradients(model, ids.clamp_min(25), layer=model.embedding)
    with pytest.raises(ValueError, match="baseline for inputs holds id 99"):
        ta.integrated_gradients(model, ids, baseline=99, layer=model.embedding)
    assert not calls


def test_integer_inputs_without_a_layer_point_to_layer():
    model, ids = build(GRUClassifier), tokens()
    with pytest.raises(TypeError, match="layer=<the embedding module>"):
        ta.integrated_gradients(model, ids)


def test_layer_that_the_forward_never_calls():
    model, ids = build(GRUClassifier), tokens()
    unused = torch.nn.Embedding(25, 8).double()
    with pytest.raises(ValueError, match="was never called by the model's forward"):
        ta.integrated_gradients(model, ids, layer=unused, steps=2)


def test_dict_layer_with_an_unknown_key():
    model, batch = build(EHRModel), ehr_batch()
    with pytest.raises(ValueError, match=r"layer names keys \['diagnoses'\]"):
        ta.integrated_gradients(model, batch, layer={"diagnoses": model.conditions})
    with pytest.raises(ValueError, match=r"mask names keys \['notes'\]"):
        ta.integrated_gradients(
            model,
            batch,
            layer={"conditions": model.conditions, "procedures": model.procedures},
            mask={"notes": PAD},
        )


def test_shared_embedding_is_a_clear_error():
    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding(10, 4)
            self.head = torch.nn.Linear(4, 2)

        def forward(self, a):
            return self.head(self.embedding(a).mean(1) + self.embedding(a.flip(1)).mean(1))

    model = Tied().eval()
    with pytest.raises(ValueError, match="'embedding' runs more than once"):
        ta.integrated_gradients(model, torch.randint(0, 10, (2, 3)), layer=model.embedding)
    assert not model.embedding._forward_hooks


def test_single_module_layer_with_tuple_inputs():
    model, batch = build(EHRModel), ehr_batch()
    args = (batch["conditions"], batch["procedures"], batch["labs"])
    with pytest.raises(TypeError, match="pass a tuple of layers"):
        ta.integrated_gradients(model, args, layer=model.conditions)
    result = ta.integrated_gradients(
        model, args, layer=(model.conditions, model.procedures, None), steps=4
    )
    assert [r.shape for r in result] == [a.shape for a in args]


# ---------------------------------------------------------------- rankings


def test_top_codes_sums_repeated_codes_and_skips_padding():
    ids = torch.tensor([[5, 3, 5, PAD], [2, 4, PAD, PAD]])
    scores = torch.tensor([[0.5, 0.7, 0.4, 9.0], [-0.2, 0.1, 3.0, 3.0]])
    vocab = {2: "flu", 3: "asthma", 4: "fracture", 5: "diabetes"}
    ranking = ta.top_codes(scores, ids, vocab, k=2, mask=PAD)
    assert [name for name, _ in ranking[0]] == ["diabetes", "asthma"]
    assert ranking[0][0][1] == pytest.approx(0.9)
    assert ranking[1] == [("fracture", pytest.approx(0.1)), ("flu", pytest.approx(-0.2))]
    by_size = ta.top_codes(
        scores,
        ids,
        ["pad", "unk", "flu", "asthma", "fracture", "diabetes"],
        k=1,
        mask=ids != PAD,
        absolute=True,
    )
    assert by_size == [[("diabetes", pytest.approx(0.9))], [("flu", pytest.approx(-0.2))]]
    with_ids = ta.top_codes(scores, ids, vocab, k=2, mask=PAD, with_ids=True)
    assert [[code for code, _, _ in row] for row in with_ids] == [[5, 3], [4, 2]]
    assert with_ids[0][0][1:] == ranking[0][0]


def test_top_codes_bad_input():
    with pytest.raises(ValueError, match="attributions has shape"):
        ta.top_codes(torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="k must be a positive int"):
        ta.top_codes(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long), k=0)


class _Counting(torch.nn.Module):
    """Counts the forward calls and rows of the wrapped model; an in-place ReLU follows the
    embedding, so that the captured primal must not be rewritten by the model."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embedding = torch.nn.Embedding(12, 5)
        self.relu = torch.nn.ReLU(inplace=True)
        self.head = torch.nn.Linear(5, 3)
        self.calls = 0

    def rest(self, e):
        return self.head(torch.tanh(e).mean(1)) + self.head(e.relu().square().mean(1))

    def forward(self, ids):
        self.calls += 1
        return self.rest(self.relu(self.embedding(ids)))


@pytest.mark.parametrize(
    "target", [torch.tensor([0, 2, 1]), torch.tensor([[0, 2], [1, 1], [2, 0]])]
)
def test_layer_gradients_take_one_forward_and_match_autograd(target):
    model = _Counting().double().eval()
    ids = torch.tensor([[1, 4, 7, 0], [3, 3, 9, 11], [5, 2, 8, 6]])
    with torch.no_grad():
        e = model.embedding(ids)
    # reference: the embedding's output as a leaf, K plain autograd pull-backs
    leaf = e.clone().requires_grad_(True)
    out = model.rest(torch.relu(leaf))
    columns = target[:, None] if target.ndim == 1 else target
    grads = torch.stack(
        [
            torch.autograd.grad(
                out.gather(1, columns[:, k : k + 1]).sum(), leaf, retain_graph=True
            )[0]
            for k in range(columns.shape[1])
        ],
        1,
    )
    grads = grads[:, 0] if target.ndim == 1 else grads
    lead = e if target.ndim == 1 else e[:, None]
    model.calls = 0
    ixg = ta.input_x_gradient(model, ids, target, layer=model.embedding)
    assert model.calls == 1  # the layer's output is captured inside the differentiated forward
    close(ixg, (lead * grads).sum(-1), rtol=1e-12)
    model.calls = 0
    sal = ta.saliency(model, ids, target, layer=model.embedding, abs=False, reduce="sum")
    assert model.calls == 1
    close(sal, grads.sum(-1), rtol=1e-12)
    # inference mode keeps the torch.func path (a capture forward, then the vjp): same values
    with torch.inference_mode():
        close(ta.input_x_gradient(model, ids, target, layer=model.embedding), ixg, rtol=1e-12)
    assert all(p.grad is None for p in model.parameters())
