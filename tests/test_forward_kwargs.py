"""forward_kwargs: keyword arguments passed to the model on every call, never attributed.

Per-sample tensors (leading dimension B, integer masks included) must follow their sample through
enlarged batches (IG steps, SmoothGrad samples, Score-/Ablation-CAM copies, metric copies) and
chunks. The oracle is the same method run sample by sample on a closure that holds that sample's
keyword arguments, expanded to whatever rows the closure receives; Captum's
LayerIntegratedGradients with additional_forward_args is the oracle on a Hugging Face BERT.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import torchattr as ta
from torchattr import metrics

B = 4


class Gated(nn.Module):
    """Images [N, 2, 6, 6] -> [N, 3]; ``keep`` [N, 6] integer column mask, ``shift`` [N, 3]
    per-sample logit offsets, ``gain`` [3] a shared tensor, ``scale`` a number."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.head = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x: Tensor, keep=None, shift=None, gain=None, scale=1.0) -> Tensor:
        h = torch.tanh(self.conv(x))
        if keep is not None:
            h = h * keep[:, None, None, :].to(h.dtype)
        out = self.head(h.flatten(1)) * scale
        if gain is not None:
            out = out * gain
        return out if shift is None else out + shift


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = Gated().double().eval()
    x = torch.rand(B, 2, 6, 6, dtype=torch.float64)
    keep = torch.randint(0, 2, (B, 6))
    keep[:, 0] = 1
    kwargs = {
        "keep": keep,
        "shift": torch.randn(B, 3, dtype=torch.float64),
        "gain": torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64),  # leading dim 3 != B
        "scale": 2.0,
    }
    target = torch.tensor([0, 2, 1, 2])
    return model, x, kwargs, target


def one_sample(model, kwargs, b):
    """The model with sample b's keyword arguments, for any number of rows."""

    def forward(x):
        rows = x.shape[0]
        return model(
            x,
            keep=kwargs["keep"][b : b + 1].expand(rows, -1),
            shift=kwargs["shift"][b : b + 1].expand(rows, -1),
            gain=kwargs["gain"],
            scale=kwargs["scale"],
        )

    return forward


METHODS = {  # (model, inputs, target, the conv layer for CAMs, **forward_kwargs)
    "saliency": lambda m, x, t, conv, **kw: ta.saliency(m, x, t, **kw),
    "input_x_gradient": lambda m, x, t, conv, **kw: ta.input_x_gradient(m, x, t, **kw),
    "smoothgrad": lambda m, x, t, conv, **kw: ta.smoothgrad(
        m, x, t, samples=3, noise=0.0, chunk_size=5, **kw
    ),
    "integrated_gradients": lambda m, x, t, conv, **kw: ta.integrated_gradients(
        m, x, t, steps=5, chunk_size=3, **kw
    ),
    "gradcam": lambda m, x, t, conv, **kw: ta.cam(m, x, t, layer=conv, chunk_size=3, **kw),
    "scorecam": lambda m, x, t, conv, **kw: ta.cam(
        m, x, t, layer=conv, method="scorecam", chunk_size=3, **kw
    ),
    "ablationcam": lambda m, x, t, conv, **kw: ta.cam(
        m, x, t, layer=conv, method="ablationcam", chunk_size=5, **kw
    ),
}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_per_sample_kwargs_follow_their_rows(setup, name):
    model, x, kwargs, target = setup
    method = METHODS[name]
    ours = method(model, x, target, model.conv, forward_kwargs=kwargs)
    for b in range(B):
        alone = method(one_sample(model, kwargs, b), x[b : b + 1], target[b : b + 1], model.conv)
        torch.testing.assert_close(ours[b : b + 1], alone, rtol=1e-9, atol=1e-12)
    # the keyword arguments matter: without them the result differs
    assert not torch.allclose(method(model, x, target, model.conv), ours)


def test_kwargs_are_not_attributed_and_not_mutated(setup):
    model, x, kwargs, target = setup
    before = {k: v.clone() if isinstance(v, Tensor) else v for k, v in kwargs.items()}
    out = ta.integrated_gradients(model, x, target, forward_kwargs=kwargs)
    assert isinstance(out, Tensor) and out.shape == x.shape  # no entry for the kwargs
    for k, v in before.items():
        assert torch.equal(kwargs[k], v) if isinstance(v, Tensor) else kwargs[k] == v


def test_forward_kwargs_bad_input(setup):
    model, x, _, _ = setup
    with pytest.raises(TypeError, match="forward_kwargs must be a dict"):
        ta.saliency(model, x, forward_kwargs=[1, 2])
    with pytest.raises(TypeError, match="forward_kwargs keys must be str"):
        ta.saliency(model, x, forward_kwargs={1: 2})
    with pytest.raises(ValueError, match=r"forward_kwargs and inputs both name \['x'\]"):
        ta.saliency(lambda x: model(x), {"x": x}, forward_kwargs={"x": x})


def _road(model, x, maps, t, **kw):
    return metrics.road(
        model,
        x,
        maps,
        t,
        fractions=(0.2, 0.6),
        sigma=0.0,
        chunk_size=3,
        generator=torch.Generator().manual_seed(0),
        **kw,
    )


METRICS = {
    "road": _road,
    "deletion": lambda m, x, s, t, **kw: metrics.deletion(m, x, s, t, step=9, chunk_size=5, **kw),
    "insertion": lambda m, x, s, t, **kw: metrics.insertion(m, x, s, t, step=9, chunk_size=5, **kw),
}


@pytest.mark.parametrize("name", sorted(METRICS))
def test_metric_kwargs_follow_their_rows(setup, name):
    model, x, kwargs, target = setup
    maps = torch.rand(B, 6, 6, dtype=torch.float64)
    metric = METRICS[name]
    ours = metric(model, x, maps, target, forward_kwargs=kwargs)
    ours = ours.curves if hasattr(ours, "curves") else ours
    for b in range(B):
        alone = metric(
            one_sample(model, kwargs, b), x[b : b + 1], maps[b : b + 1], target[b : b + 1]
        )
        alone = alone.curves if hasattr(alone, "curves") else alone
        torch.testing.assert_close(ours[b : b + 1], alone, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["infidelity", "faithfulness_correlation"])
def test_drop_metrics_cancel_a_per_sample_offset(setup, name):
    """Both metrics see only score drops f(x) - f(x'): a per-sample logit offset cancels when it
    follows its sample into every perturbed copy, and would not if rows were mixed up."""
    model, x, kwargs, target = setup
    phi = torch.randn_like(x)
    metric = getattr(metrics, name)
    extra = {"samples": 6} if name == "infidelity" else {"runs": 6}
    run = lambda **kw: metric(  # noqa: E731
        model,
        x,
        phi,
        target,
        chunk_size=5,
        generator=torch.Generator().manual_seed(1),
        **extra,
        **kw,
    )
    plain = run()
    shifted = run(forward_kwargs={"shift": 100 * kwargs["shift"]})
    torch.testing.assert_close(shifted, plain, rtol=1e-7, atol=1e-9)


# ------------------------------------------------------------------------------------------
# Hugging Face BERT with an integer attention mask vs Captum's LayerIntegratedGradients
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bert():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=16,
        num_labels=3,
    )
    model = transformers.BertForSequenceClassification(config).double().eval()
    ids = torch.randint(1, 100, (3, 8))
    mask = torch.ones(3, 8, dtype=torch.long)
    mask[0, 5:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = 0
    return model, ids, mask


def test_bert_attention_mask_matches_captum_layer_ig(bert):
    from captum.attr import LayerIntegratedGradients

    model, ids, mask = bert
    target = torch.tensor([0, 2, 1])
    kwargs = dict(
        baseline={"input_ids": 0},
        layer={"input_ids": model.bert.embeddings},
        forward_kwargs={"attention_mask": mask},
        steps=8,
    )
    # chunks of 10 rows straddle the 3-sample copies of the 8 x 3 path rows
    ours = ta.integrated_gradients(model, {"input_ids": ids}, target, chunk_size=10, **kwargs)
    lig = LayerIntegratedGradients(
        lambda i, m: model(input_ids=i, attention_mask=m).logits, model.bert.embeddings
    )
    reference = lig.attribute(
        ids,
        baselines=torch.zeros_like(ids),
        additional_forward_args=(mask,),
        target=target,
        n_steps=8,
        method="gausslegendre",
    ).sum(-1)
    # Captum casts its quadrature weights to float32 (relative 1e-8); everything else is float64
    torch.testing.assert_close(ours["input_ids"], reference, rtol=1e-6, atol=1e-9)


def test_bert_model_output_with_index_and_callable_targets(bert):
    """A ModelOutput with 'logits': index targets select from it; a callable target gets the
    whole output."""
    model, ids, mask = bert
    kwargs = dict(
        layer={"input_ids": model.bert.embeddings}, forward_kwargs={"attention_mask": mask}
    )
    by_index = ta.saliency(model, {"input_ids": ids}, 1, **kwargs)
    by_callable = ta.saliency(model, {"input_ids": ids}, lambda out: out.logits[:, 1], **kwargs)
    torch.testing.assert_close(by_index["input_ids"], by_callable["input_ids"])
    # the mask matters: without it the padded positions change the explanation
    unmasked = ta.saliency(model, {"input_ids": ids}, 1, layer=kwargs["layer"])
    assert not torch.allclose(unmasked["input_ids"], by_index["input_ids"])
