"""Layer-wise Relevance Propagation as rule transforms over a ``torch.fx`` graph.

``trace`` (fx, cached) -> ``canonize`` (BatchNorm merged, sums found, signs known) -> rules
assigned by a ``composite`` -> each rule rewrites its node (``transform``) -> one backward gives
the relevance (``api.lrp``). Transformers follow AttnLRP (``attention``).
"""

from torchattr.lrp import composites, rules
from torchattr.lrp.api import Conservation, lrp, lrp_rules

__all__ = ["Conservation", "composites", "lrp", "lrp_rules", "rules"]
