"""Frozen dataclass configs and the registries of named presets.

Presets are plain instances in plain dicts (no YAML, no `_target_` strings). The CLI starts from
a preset and overrides fields (`--model.head flow`, `--optim.lr 3e-5`); `dataclasses.replace`
does the same in code. `config_to_dict` / `config_from_dict` give the `config.json` stored in
every checkpoint, with errors that name the offending field path.

Later capabilities add fields and presets here; every preset must round-trip through
`config_from_dict(type(p), config_to_dict(p))`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

from robofm.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a VLA: vision encoder + language backbone + action head."""

    vision: str = "mobilenet_v2"  # vision encoder registry name
    language: str = "minilm"  # language backbone registry name
    vision_size: str = ""  # named full size of an HF vision tower (models/sizes.py); "" = default
    language_size: str = ""  # named full size of an HF LM/VLM (models/sizes.py); "" = default
    vision_stride: int = 0  # CNN token-map stride (mobilenet_v2: 8, 16, 32); 0 = default
    image_readout: str = "grid"  # CNN map -> tokens: "grid" (one per cell) or "keypoints"
    readout_keypoints: int = 16  # K: instruction-conditioned keypoints per camera ("keypoints")
    readout_width: int = 64  # hidden channels of the keypoint readout
    trunk: str = "transformer"  # encoder-kind fusion: "transformer" or "mlp" (one prefix token)
    freeze_backbones: bool = False  # keep vision + language weights frozen (SmolVLA-style)
    max_text_tokens: int = 32  # instruction tokens kept (longer prompts are truncated)
    head: str = "flow"  # action head: "bins", "regression", "flow" or "diffusion"
    width: int = 384  # trunk/token width
    depth: int = 4  # trunk transformer layers
    num_heads: int = 6  # attention heads in the trunk
    head_depth: int = 2  # layers of the action head's decoder / expert
    expert_width: int = 0  # flow action-expert width; 0 = width // 2
    image_size: int = 96  # square camera resolution fed to the vision encoder, px
    n_obs_steps: int = 1  # T_obs: observation history length
    chunk_len: int = 10  # H: actions predicted per inference call
    flow_steps: int = 10  # Euler integration steps of the flow head at inference
    diffusion_steps: int = 10  # DDIM sampling steps of the diffusion head at inference
    dropout: float = 0.0  # dropout in the trunk and head


@dataclass(frozen=True)
class DataConfig:
    """Which datasets to train on, how to mix them and how to batch them."""

    paths: tuple[str, ...] = ()  # dataset directories or RLDS/HDF5 paths
    weights: tuple[float, ...] = ()  # sampling weight per path; empty means equal weights
    batch_size: int = 32  # samples per optimizer step (per rank under DDP)
    num_workers: int = 0  # DataLoader worker processes
    val_episodes: int = 0  # episodes per dataset held out for validation
    norm_mode: str = "mean_std"  # "mean_std", "min_max" or "quantile" (q01/q99)
    image_aug: bool = True  # random resized crop + colour jitter at train time
    cache_features: bool = True  # frozen vision + no image_aug: encode each frame only once


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warmup and cosine decay."""

    lr: float = 1e-4  # peak learning rate
    vision_lr_scale: float = 0.1  # vision encoder lr = lr * this, once unfrozen
    weight_decay: float = 1e-4  # AdamW decoupled weight decay
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW betas
    warmup_steps: int = 100  # linear warmup from 0 to lr
    min_lr_ratio: float = 0.1  # cosine decays to lr * this
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    grad_accum: int = 1  # micro-batches per optimizer step


@dataclass(frozen=True)
class TrainConfig:
    """A training run: model, data, optimisation and bookkeeping."""

    model: ModelConfig = field(default_factory=ModelConfig)  # architecture
    data: DataConfig = field(default_factory=DataConfig)  # datasets and batching
    optim: OptimConfig = field(default_factory=OptimConfig)  # optimiser and schedule
    steps: int = 1000  # optimizer steps
    seed: int = 0  # seeds data order, init and augmentation
    freeze_vision_frac: float = 0.5  # vision encoder frozen for this fraction of steps
    lora_rank: int = 0  # LoRA rank on the language backbone; 0 = full fine-tuning
    lora_alpha: float = 16.0  # LoRA scale alpha (effective scale alpha / rank)
    lora_vision: bool = False  # also put LoRA adapters on the vision encoder
    head_only: bool = False  # train only the action head (everything else frozen)
    ema_decay: float = 0.0  # EMA of the weights with this decay; 0 = no EMA
    device: str = "auto"  # "auto" (this rank's GPU if any, else CPU), "cpu", "cuda:0", ...
    fsdp: bool = False  # under torchrun: shard with FSDP2 instead of DDP
    resume: bool = True  # continue from out_dir's latest checkpoint when there is one
    init_from: str = ""  # checkpoint directory to start from; "" = pretrained backbones
    model_pretrained: bool = True  # build backbones from pretrained weights (False: tiny)
    out_dir: str = "runs/train"  # where checkpoints, logs and plots go
    log_every: int = 10  # steps between log lines
    trackers: tuple[str, ...] = ()  # extra metric sinks: "tensorboard", "wandb" (if installed)
    ckpt_every: int = 500  # steps between checkpoints (each runs the validation pass)
    val_batches: int = 8  # batches of held-out windows per validation pass
    keep_last: int = 2  # checkpoints kept besides the best one


# ---------------------------------------------------------------------------------------------
# Preset registries: name -> plain instance. Add new presets here, in one place.

MODEL_PRESETS: dict[str, ModelConfig] = {
    # CI-sized: built-in tiny encoders, under 5M parameters, one step well under a second.
    "tiny": ModelConfig(
        vision="small_vit",
        language="word",
        head="flow",
        width=64,
        depth=2,
        num_heads=2,
        image_size=32,
        chunk_len=4,
        flow_steps=4,
        diffusion_steps=4,
    ),
    # The CPU demo: pretrained MobileNetV2 (ImageNet, stride-8 map: 12x12 cells per 96 px
    # camera) read out as 16 instruction-conditioned keypoints per camera, frozen MiniLM, an
    # MLP fusion trunk and the L1 chunk head: learns lift in minutes on 2 cores (README).
    "small": ModelConfig(
        vision_stride=8,
        image_readout="keypoints",
        trunk="mlp",
        head="regression",
        width=512,
        depth=2,
        num_heads=8,
        head_depth=1,
        chunk_len=4,
    ),
    # The distillation student (`robofm deploy distill`): `small`'s frozen stride-8
    # MobileNetV2 keypoints, but a from-scratch word encoder instead of MiniLM and a narrower
    # MLP trunk; a single-task specialist a tenth of `small`'s size.
    "specialist": ModelConfig(
        language="word",
        vision_stride=8,
        image_readout="keypoints",
        trunk="mlp",
        head="regression",
        width=256,
        depth=2,
        num_heads=4,
        head_depth=1,
        chunk_len=4,
    ),
    # pi0-sized: PaliGemma 3B (SigLIP so400m + Gemma 2B) + a ~300M flow action expert.
    # Built on the meta device for parameter counts; real weights come from `path`.
    "pi0": ModelConfig(
        vision="siglip",
        language="paligemma",
        language_size="3b",
        head="flow",
        num_heads=8,
        head_depth=18,
        expert_width=1024,
        image_size=224,
        chunk_len=50,
        flow_steps=10,
        max_text_tokens=48,
    ),
    # OpenVLA-sized: Llama 2 7B trunk + SigLIP so400m tower, 256-bin action tokens.
    "openvla": ModelConfig(
        vision="siglip",
        vision_size="so400m",
        language="llama",
        language_size="7b",
        head="bins",
        num_heads=32,
        head_depth=1,
        image_size=224,
        chunk_len=1,
        max_text_tokens=48,
    ),
    # SmolVLA-sized: SmolVLM2-500M-shaped VLM (SigLIP base/16 + SmolLM2 truncated to 16
    # layers), frozen, plus a flow action expert (~100M trainable).
    "smolvla-size": ModelConfig(
        vision="siglip",
        vision_size="base16",
        language="llama",
        language_size="smollm2_360m_16l",
        freeze_backbones=True,
        head="flow",
        num_heads=10,
        head_depth=16,
        expert_width=640,
        image_size=224,
        chunk_len=50,
        flow_steps=10,
        max_text_tokens=48,
    ),
}

TRAIN_PRESETS: dict[str, TrainConfig] = {
    # Fine-tuning on 50-500 demonstrations: low lr (documented range 1e-5..5e-5),
    # vision frozen for the first half, then unfrozen at a tenth of the lr.
    "finetune": TrainConfig(optim=OptimConfig(lr=2e-5, warmup_steps=50)),
    # Pretraining on robot-data mixtures from the internet-pretrained backbones.
    "pretrain": TrainConfig(
        optim=OptimConfig(lr=1e-4, warmup_steps=500), steps=20000, freeze_vision_frac=0.0
    ),
}


def get_preset(registry: dict[str, T], name: str, kind: str = "preset") -> T:
    """Look up `name`; an unknown name is a `ConfigError` listing the valid ones."""
    if name not in registry:
        raise ConfigError(f"unknown {kind} {name!r}; valid: {', '.join(sorted(registry))}")
    return registry[name]


# ---------------------------------------------------------------------------------------------
# JSON round trip for configs (config.json in checkpoints).


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Nested plain dict (tuples become lists) of a dataclass config."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise ConfigError(f"expected a dataclass instance, got {type(cfg).__name__}")
    return _plain(dataclasses.asdict(cfg))


def config_from_dict(cls: type[T], data: Any, source: str = "config") -> T:
    """Build `cls` from a dict made by `config_to_dict`, checking every field's type.

    Missing fields take their defaults (so old checkpoints load after a field is added);
    unknown fields and wrong types are a `ConfigError` naming `source` and the field path.
    """
    return _parse(cls, data, source)


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _parse(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected an object, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise ConfigError(f"{where}: unknown field(s) {unknown}")
        kwargs = {k: _parse(hints[k], v, f"{where}.{k}") for k, v in value.items()}
        return tp(**kwargs)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _parse(arg, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_parse(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
        return tuple(
            _parse(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True))
        )
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected an object, got {type(value).__name__}")
        _, vt = typing.get_args(tp)
        return {str(k): _parse(vt, v, f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp in (int, str, bool):
        if type(value) is not tp:
            raise ConfigError(
                f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}"
            )
        return value
    if tp is Any:
        return value
    raise ConfigError(f"{where}: unsupported config type {tp!r}")
