"""Plumbing written once and shared by every attribution method.

inputs    tensor | tuple | dict inputs, flattened to a tuple of tensors and back; calling the model
targets   target conventions -> per-row scores and the output cotangent that selects them
grad      the one gradient primitive: d score / d inputs through ``torch.func.vjp`` or autograd
fallback  which of the two paths; torch.func's known refusals; buffers put back after a call
chunking  bounded runs of (sample, step) rows; chunk_size="auto" sized from a measured peak
memory    live tensor bytes of a chunk (PeakMeter) and the default memory budget
progress  progress= reporting (tqdm bar or a (done, total) callable)
checks    argument validation with errors that name the argument
state     calling a model without leaving a trace (mode, hooks, buffers)
"""
