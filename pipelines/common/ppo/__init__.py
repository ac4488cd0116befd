"""PPO against one proxy RM or an ensemble, on accelerate (no trainer library).

What lives where:

- :mod:`.core`: per-token rewards, KL estimates, GAE, the clipped losses, the
  adaptive KL controller and the cosine schedule (pure torch arithmetic);
- :mod:`.model`: the policy with a value head on its trunk and the forward
  pass giving response log-probabilities and values;
- :mod:`.rollout`: sampling a batch of responses to left-padded prompts;
- :mod:`.rewards`: the proxy objective over member RMs and the gold scorer;
- :mod:`.config`: the settings (YAML section ``ppo``);
- :mod:`.trainer`: one run's state, a PPO step, evaluation and the loop.

Importing the package loads no torch.
"""
