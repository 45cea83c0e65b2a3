"""AttnLRP parity with LXT 2.1 (the reference implementation of AttnLRP, Achtibat et al. 2024).

LXT cannot be installed next to the test environment (it pins older transformers and needs
torchvision); its relevance on a tiny BERT and a tiny Llama was recorded in a separate
environment by ``tests/data/make_lxt_reference.py``, with the models' weights. Here the same
models are rebuilt with the installed transformers, loaded with those weights, and explained by
``ta.lrp`` with LRP-0 on linear layers (LXT's efficient mode is gradient x input): AttnLRP's
softmax, uniform product, LayerNorm / RMSNorm and identity activation rules must agree.

Measured: BERT 1e-8, Llama 1.2e-7 of the largest relevance (LXT's RMSNorm computes in float32).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import torchattr as ta
from torchattr.lrp.rules import Epsilon

transformers = pytest.importorskip("transformers")

DATA = Path(__file__).parent / "data"
LRP0 = ta.composites.by_kind({"dense": Epsilon(0.0), "op": Epsilon(0.0)})


def _load(model: torch.nn.Module, name: str) -> dict:
    recorded = torch.load(DATA / name, weights_only=True)
    model.load_state_dict(recorded["state"])
    return recorded


def _close(ours: torch.Tensor, theirs: torch.Tensor, tolerance: float) -> None:
    assert ours.shape == theirs.shape
    error = (ours - theirs).abs().max() / theirs.abs().max()
    assert error < tolerance, f"max |ours - LXT| / max |LXT| = {error:.3g}"


def test_bert_matches_lxt():
    config = transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=3, attn_implementation="eager",
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    model = transformers.BertForSequenceClassification(config).double().eval()
    recorded = _load(model, "lxt_bert.pt")
    ids, mask = recorded["ids"], recorded["mask"]
    logits = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(logits, recorded["logits"], rtol=1e-10, atol=1e-12)
    relevance = ta.lrp(
        model, ids, recorded["target"], composite=LRP0, forward_kwargs={"attention_mask": mask}
    )
    _close(relevance, recorded["relevance"], 1e-6)
    assert torch.equal(relevance[1, 5:], torch.zeros(2, dtype=relevance.dtype))


def test_llama_matches_lxt():
    config = transformers.LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, attn_implementation="eager",
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config).double().eval()
    recorded = _load(model, "lxt_llama.pt")
    ids = recorded["ids"]
    torch.testing.assert_close(model(input_ids=ids).logits, recorded["logits"])
    relevance = ta.lrp(model, ids, lambda out: out.logits[:, -1, 7], composite=LRP0)
    _close(relevance, recorded["relevance"], 1e-5)
