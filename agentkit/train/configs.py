"""Training configs: one dataclass per method over a shared base, a one-line help per
field (``Config.help()``), saved with every checkpoint and policy version (TRL-style)."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any

from agentkit.errors import AgentkitError

__all__ = ["TrainConfig", "DPOConfig", "SFTConfig", "PGConfig", "config_from_dict", "field_of", "METHODS", "ALL_LINEAR"]

METHODS = ("dpo", "sft", "grpo", "rloo")
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _f(default: Any, help: str) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def field_of(config: type, name: str, **change: Any) -> Any:
    """A field declared as ``config``'s field ``name`` is (its default and help): a config
    that passes knobs on to another one takes them from it instead of declaring them again.
    ``default=`` or ``help=`` change one, where the caller's use differs."""
    (f,) = [f for f in dataclasses.fields(config) if f.name == name]
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    return _f(change.get("default", default), change.get("help", f.metadata.get("help", "")))


@dataclass
class TrainConfig:
    """What every method shares. Saved with every checkpoint and policy version."""

    method: str = _f("sft", "dpo, sft, grpo or rloo (set by the method's config class).")
    output_dir: str = _f("agentkit-train", "Checkpoints go to OUTPUT_DIR/checkpoints, the final adapter to OUTPUT_DIR/adapter.")
    lr: float = _f(1e-4, "AdamW learning rate of the LoRA weights.")
    steps: int = _f(0, "Optimizer steps; 0 derives them from epochs.")
    epochs: float = _f(1.0, "Passes over the examples when steps is 0.")
    batch_size: int = _f(8, "Examples per micro-batch: pairs (dpo), sequences (sft), groups (grpo, rloo).")
    grad_accum: int = _f(1, "Micro-batches per optimizer step.")
    max_grad_norm: float = _f(1.0, "Clip the gradient's global L2 norm to this; 0 disables clipping.")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    warmup_steps: int = _f(0, "Linear warm-up steps of the learning rate.")
    schedule: str = _f("constant", "Learning-rate schedule after warm-up: constant, linear or cosine (to 0).")
    lora_r: int = _f(16, "LoRA rank (ignored when continuing a parent adapter).")
    lora_alpha: int = _f(32, "LoRA scaling numerator: the update is scaled by alpha / r.")
    lora_dropout: float = _f(0.0, "Dropout on the LoRA input during training (costs ~30% of a CPU forward in random numbers).")
    target_modules: list[str] = _f(list(ALL_LINEAR), "Module names that get LoRA adapters (every linear layer but the head).")
    dtype: str = _f("auto", "auto (bf16 autocast where the processor runs bf16 fast, else fp32), bf16 or fp32.")
    prompt_grad: bool = _f(False, "Backpropagate through the prompt tokens too; False runs the prompt without gradient into a KV cache (much faster on long few-shot prompts).")
    max_length: int = _f(0, "Cut prompts from the left (keeping the first token) so prompt + completion fit; 0: no limit.")
    allowed_token_ids: list[int] = _f([], "Train the policy that decodes only these token ids (GenerationRequest.allowed_token_ids): the softmax runs over them alone; empty: the whole vocabulary.")
    seed: int = _f(0, "Seed of the LoRA initialisation, dropout and the data order.")
    checkpoint_every: int = _f(50, "Write a resumable checkpoint every this many optimizer steps; 0: none.")
    keep_checkpoints: int = _f(2, "Keep only the newest this many checkpoints.")
    log_every: int = _f(1, "Log a record every this many optimizer steps.")

    def __post_init__(self) -> None:
        checks = [
            (self.method in METHODS, f"method {self.method!r}: choose one of {', '.join(METHODS)}"),
            (self.lr > 0, f"lr {self.lr}: must be > 0"),
            (self.steps >= 0, f"steps {self.steps}: must be >= 0 (0 derives them from epochs)"),
            (self.steps > 0 or self.epochs > 0, "steps and epochs are both 0: set one of them"),
            (self.batch_size >= 1 and self.grad_accum >= 1, "batch_size and grad_accum must be at least 1"),
            (self.schedule in ("constant", "linear", "cosine"), f"schedule {self.schedule!r}: constant, linear or cosine"),
            (self.lora_r >= 1, f"lora_r {self.lora_r}: must be at least 1"),
            (self.checkpoint_every >= 0 and self.keep_checkpoints >= 1, "checkpoint_every >= 0 and keep_checkpoints >= 1"),
            (all(t >= 0 for t in self.allowed_token_ids), "allowed_token_ids: token ids are >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise AgentkitError(f"{type(self).__name__}: {message}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def help(cls) -> dict[str, str]:
        """Field name -> one-line help (for a CLI or docs)."""
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


@dataclass
class DPOConfig(TrainConfig):
    """DPO on preference pairs; step pairs (Step-DPO) and whole-output pairs use the same loss."""

    method: str = _f("dpo", "dpo.")
    beta: float = _f(0.4, "DPO temperature: how far the policy may move from the reference (Step-DPO used 0.4-0.5).")
    nll_weight: float = _f(1.0, "Weight of the length-normalised NLL of the chosen side (RPO); pure DPO (0) collapsed the format on a weak base.")
    label_smoothing: float = _f(0.0, "Conservative DPO: probability that a preference label is flipped.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.method != "dpo":
            raise AgentkitError(f"DPOConfig: method must be 'dpo', not {self.method!r}")


@dataclass
class SFTConfig(TrainConfig):
    """Supervised fine-tuning on completions (verified successes: RFT / STaR; or gold solutions)."""

    method: str = _f("sft", "sft.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.method != "sft":
            raise AgentkitError(f"SFTConfig: method must be 'sft', not {self.method!r}")


@dataclass
class PGConfig(TrainConfig):
    """Policy gradient on groups of sampled completions with verified rewards (GRPO or RLOO)."""

    method: str = _f("grpo", "grpo (advantage (r - mean) / std) or rloo (leave-one-out mean baseline).")
    clip_eps: float = _f(0.2, "PPO clip range of the importance ratio.")
    kl_coef: float = _f(0.04, "Weight of the k3 KL penalty to the reference (the policy at the start of training).")
    group_size: int = _f(0, "Samples per group; 0 accepts any size >= 2, else other sizes are an error.")
    step_weight: float = _f(0.0, "Weight of per-step progress V(after) - V(before) added to each step's tokens "
                            "(needs RLGroup.step_values/step_spans); 0: outcome advantages only.")
    lr: float = _f(2e-5, "AdamW learning rate of the LoRA weights.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.method not in ("grpo", "rloo"):
            raise AgentkitError(f"PGConfig: method must be 'grpo' or 'rloo', not {self.method!r}")


_CONFIGS = {"dpo": DPOConfig, "sft": SFTConfig, "grpo": PGConfig, "rloo": PGConfig}


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Rebuild the config saved with a checkpoint or a policy version."""
    cls = _CONFIGS.get(data.get("method", ""))
    if cls is None:
        raise AgentkitError(f"config with method {data.get('method')!r}: choose one of {', '.join(METHODS)}")
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})
