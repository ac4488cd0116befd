"""PPO settings (YAML section ``ppo``): defaults are the tiny preset.

The original's values (tlc4418/llm_optimization ``configs/ppo_config.yaml``,
``configs/config_rl.yaml``; ALGORITHMS.md section 5.4) are the cluster preset's
and are named in each field's comment.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.common.cli import field_help
from pipelines.common.modeling import DTYPES

# Fields that change how a run is executed or reported, not what it computes:
# a checkpoint written under other values of these can still be resumed.
OPERATIONAL_FIELDS = ("log_every", "checkpoint_every", "device", "workers")


@dataclass(frozen=True, kw_only=True)
class PPOConfig:
    """Hyperparameters of one PPO run."""

    steps: int = field_help(
        "PPO steps: one rollout batch and its ppo_epochs of updates (original: 3000)",
        default=40,
    )
    batch_size: int = field_help(
        "rollouts per step per process; also the KL controller's n_steps"
        " (original: 32)",
        default=16,
    )
    minibatch_size: int = field_help(
        "rollouts per optimiser step; batch_size must be a multiple (original: 32)",
        default=8,
    )
    ppo_epochs: int = field_help("passes over each rollout batch (4)", default=4)
    generation_batch_size: int = field_help(
        "sequences per generate call (original chunk_size: 2); 0: batch_size",
        default=0,
    )
    learning_rate: float = field_help(
        # tiny: the 1-2M-parameter SFT policy does not move at the original's 1e-6
        "AdamW learning rate (original: 1e-6)",
        default=1e-4,
    )
    adam_beta1: float = field_help("AdamW beta1 (0.9)", default=0.9)
    adam_beta2: float = field_help("AdamW beta2 (0.95)", default=0.95)
    adam_eps: float = field_help("AdamW eps (1e-8)", default=1e-8)
    weight_decay: float = field_help("AdamW weight decay (1e-6)", default=1e-6)
    lr_t_max: int = field_help(
        "cosine annealing period in optimiser steps (original: 10000)", default=10000
    )
    lr_eta_min: float = field_help(
        "cosine annealing floor (original: 1e-7)", default=1e-7
    )
    max_grad_norm: float = field_help(
        "clip the gradient norm; 0: no clipping (trlx's default)", default=0.0
    )
    init_kl_coef: float = field_help("initial KL coefficient beta (0.1)", default=0.1)
    kl_target: float = field_help(
        "adaptive KL target in nats per sequence; 0: fixed beta (original: 6)",
        default=6.0,
    )
    kl_horizon: int = field_help("adaptive KL horizon (10000)", default=10000)
    gamma: float = field_help("discount (1)", default=1.0)
    lam: float = field_help("GAE lambda (0.95)", default=0.95)
    cliprange: float = field_help("policy ratio clip (0.2)", default=0.2)
    cliprange_value: float = field_help("value clip (0.2)", default=0.2)
    vf_coef: float = field_help("value loss weight (1)", default=1.0)
    reward_clip: float = field_help(
        "clip the proxy score to +-this before the KL penalty (10); 0: no clip",
        default=10.0,
    )
    whiten_advantages: bool = field_help(
        "whiten advantages per rollout batch (trlx does)", default=True
    )
    uwo_lambda: float = field_help(
        "UWO variance penalty (the original's PPO example: 0.1)", default=0.1
    )
    uwo_ddof: int = field_help(
        "UWO variance ddof (the original's PPO: 1, torch.var)", default=1
    )
    temperature: float = field_help("rollout sampling temperature (1)", default=1.0)
    top_p: float = field_help("rollout nucleus mass (1); top_k is 0 (off)", default=1.0)
    max_new_tokens: int = field_help(
        "rollout response length limit (original: 256)", default=48
    )
    max_prompt_length: int = field_help(
        "longest prompt kept, cut on the left (original seq_length 2032 - 256)",
        default=256,
    )
    eval_every: int = field_help(
        "evaluate every k steps (original: 100), and after the last", default=5
    )
    eval_size: int = field_help(
        "held-out prompts per evaluation (original example: 4)", default=24
    )
    eval_temperature: float = field_help("eval temperature (0.7)", default=0.7)
    eval_top_p: float = field_help("eval nucleus mass (0.9)", default=0.9)
    eval_max_new_tokens: int = field_help(
        "eval response length limit (256)", default=48
    )
    score_max_length: int = field_help(
        "longest conversation the RMs and the gold score, cut on the left"
        " (original: 776)",
        default=1024,
    )
    score_batch_size: int = field_help("sequences per RM forward pass", default=16)
    dtype: str = field_help(
        "policy compute precision (float32 weights; bfloat16/float16 autocast)",
        choices=tuple(DTYPES),
        default="float32",
    )
    ref_dtype: str = field_help(
        "reference model weights (bfloat16 halves its memory on GPU)",
        choices=tuple(DTYPES),
        default="float32",
    )
    rm_dtype: str = field_help(
        "proxy RM and gold RM weights", choices=tuple(DTYPES), default="float32"
    )
    device: str = field_help("'auto', 'cpu', 'cuda'...", default="auto")
    trust_remote_code: bool = field_help("allow model code from the hub", default=False)
    chat_template: str | None = field_help(
        "policy chat template; None: the policy's run_config.json", default=None
    )
    system_prompt: str | None = field_help(
        "policy system prompt; None: the policy's run_config.json", default=None
    )
    checkpoint_every: int = field_help(
        "checkpoint every k steps (and on SIGTERM); 0: only on SIGTERM", default=20
    )
    log_every: int = field_help("log a step line every k steps", default=5)
    workers: int = field_help("verifier processes (gold kind verifier)", default=1)

    def __post_init__(self) -> None:
        """Refuse settings PPO cannot run with."""
        positive = ("steps", "batch_size", "minibatch_size", "ppo_epochs")
        for name in (*positive, "eval_every", "eval_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size % self.minibatch_size:
            raise ValueError(
                f"batch_size {self.batch_size} must be a multiple of"
                f" minibatch_size {self.minibatch_size}"
            )
        for name in ("dtype", "ref_dtype", "rm_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ValueError(f"{name} must be one of {tuple(DTYPES)}")
        for name in (
            "uwo_ddof",
            "generation_batch_size",
            "max_grad_norm",
            "kl_target",
            "reward_clip",
            "checkpoint_every",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def chunk(self) -> int:
        """Sequences per generate call."""
        return self.generation_batch_size or self.batch_size
