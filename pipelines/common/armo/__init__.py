"""ArmoRM (ALGORITHMS.md section 3): embeddings, ridge, debiasing, gating, model.

What lives where:

- :mod:`.embeddings`: the embedding files (torch-free) and their sharding.
- :mod:`.backbone`: the frozen backbone's last-token and prompt embeddings,
  the assistant-turn pattern from the tokenizer's chat template.
- :mod:`.ridge`: per-attribute ridge regression, alphas by validation MSE.
- :mod:`.gating`: verbosity debiasing and the gating network.
- :mod:`.model`: the assembled ArmoRM as a scoreable model.
"""
