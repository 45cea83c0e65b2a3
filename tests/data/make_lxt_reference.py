"""Record LXT's AttnLRP relevance on a tiny BERT and a tiny Llama (tests/test_lrp_lxt.py).

LXT (https://github.com/rachtibat/LRP-eXplains-Transformers) pins older transformers and pulls in
torchvision, so it cannot live in the test environment. This script runs in a separate one:

    python -m venv /tmp/lxtenv && . /tmp/lxtenv/bin/activate
    pip install torch==2.13.0 "transformers==4.51.3" tabulate
    pip install --no-deps lxt==2.1
    # lxt imports torchvision.models.vision_transformer for its ViT patches only; without
    # torchvision, a stub module with `import torch.nn as nn` and empty classes EncoderBlock,
    # MLPBlock, Encoder, VisionTransformer lets `lxt.efficient` import (BERT / Llama untouched).
    python tests/data/make_lxt_reference.py

It writes lxt_bert.pt and lxt_llama.pt next to itself: the models' float64 weights (random,
seeded), the inputs, LXT's relevance ``(embeddings * grad).sum(-1)`` after
``lxt.efficient.monkey_patch`` and the logits. LXT's efficient mode is LRP-0 on linear layers
(the gradient x input framework), the identity rule on activations, the uniform rule on
products, softmax through its gradient and norms with the standard deviation held constant.
"""

from __future__ import annotations

from pathlib import Path

import torch

HERE = Path(__file__).parent


def bert() -> None:
    import transformers.models.bert.modeling_bert as modeling
    from lxt.efficient import monkey_patch
    from transformers import BertConfig

    monkey_patch(modeling)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=3, attn_implementation="eager",
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    model = modeling.BertForSequenceClassification(config).double().eval()
    ids = torch.randint(1, 100, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 5:] = 0
    target = torch.tensor([0, 2, 1])
    embeddings = model.bert.get_input_embeddings()(ids).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeddings, attention_mask=mask).logits
    logits.gather(1, target[:, None]).sum().backward()
    relevance = (embeddings * embeddings.grad).sum(-1).detach()
    torch.save(
        {"state": model.state_dict(), "ids": ids, "mask": mask, "target": target,
         "relevance": relevance, "logits": logits.detach()},
        HERE / "lxt_bert.pt",
    )  # fmt: skip


def llama() -> None:
    import transformers.models.llama.modeling_llama as modeling
    from lxt.efficient import monkey_patch
    from transformers import LlamaConfig

    monkey_patch(modeling)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, attn_implementation="eager",
    )  # fmt: skip
    model = modeling.LlamaForCausalLM(config).double().eval()
    ids = torch.randint(1, 100, (2, 6))
    embeddings = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeddings).logits
    logits[:, -1, 7].sum().backward()
    relevance = (embeddings * embeddings.grad).sum(-1).detach()
    torch.save(
        {"state": model.state_dict(), "ids": ids, "relevance": relevance,
         "logits": logits.detach()},
        HERE / "lxt_llama.pt",
    )  # fmt: skip


if __name__ == "__main__":
    bert()
    llama()
