"""Layer-wise Relevance Propagation as rule transforms over the model's forward as it runs.

``capture`` (the forward seen operation by operation under a TorchFunctionMode, with the module
each operation belongs to) -> rules assigned by a ``composite`` -> ``relevance`` (each operation
computed by its rule: same value, the rule's gradient) -> one backward gives the relevance
(``api.lrp``). Transformers follow AttnLRP (``attention``).
"""

from torchattr.lrp import composites, rules
from torchattr.lrp.api import Conservation, lrp, lrp_rules
from torchattr.lrp.capture import LRPError

__all__ = ["Conservation", "LRPError", "composites", "lrp", "lrp_rules", "rules"]
