"""Plumbing written once and shared by every attribution method.

inputs    tensor | tuple | dict inputs, flattened to a tuple of tensors and back; calling the model
targets   target conventions -> per-row scores and the output cotangent that selects them
grad      the one gradient primitive: d score / d inputs through ``torch.func.vjp``
chunking  bounded runs of (sample, step) rows
checks    argument validation with errors that name the argument
state     calling a model without leaving a trace (mode, hooks, buffers)
"""
