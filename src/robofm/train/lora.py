"""LoRA fine-tuning of a VLA's encoders, and merge-on-export.

`apply_lora(model, spec)` injects low-rank adapters (peft's LoRA layers) in place into
`model.language` and/or `model.vision`. Each adapted layer then computes
`W x + (alpha / r) * B A dropout(x)`. A is (r, in), Kaiming-initialised; B is (out, r),
zero-initialised, so a freshly adapted model computes exactly what it did before. Every
base parameter of an adapted part is frozen: its embeddings, norms and unadapted layers too.
The rest of the VLA keeps its requires_grad as it was: the projections, trunk, embodiment
adapters and head.

The adapted modules keep their interfaces: a `nn.Linear` becomes a peft `lora.Linear` that
is called the same way. So `VLA.compute_loss` and `sample_actions` run unchanged.
`merge_lora(model)` folds `(alpha / r) * B A` into each base weight and puts the plain
layers back. The merged model has the architecture's own state_dict keys, so
`save_checkpoint` / `load_checkpoint` handle it like any other VLA.

A frozen text encoder (MiniLM by default) runs under `no_grad`, and `VLA.encode_text` caches
its features per instruction. Either would bypass the adapters, so `apply_lora` marks the
part not frozen (`.frozen = False`) while its base weights keep requires_grad=False, and
clears the cache. The encoder then follows `.train()` / `.eval()` like any module, so BERT's
own dropout is active in training mode. `merge_lora` restores the flags.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from robofm.errors import ConfigError, NotAvailableError

__all__ = [
    "LORA_TARGETS",
    "LoraSpec",
    "apply_lora",
    "lora_state_dict",
    "lora_target_modules",
    "merge_lora",
]

LORA_TARGETS = ("language", "vision")  # VLA parts that can carry adapters
# Layers that a VLA's encoders hold but never run, so adapters there would get no gradient.
UNUSED_PARTS = frozenset({"lm_head", "pooler", "classifier"})
PEFT_HINT = "pip install 'robofm[hf]' (peft)"
_RESTORE_ATTR = "_lora_restore"  # on the VLA: part -> (requires_grad by name, frozen flag)


@dataclass(frozen=True)
class LoraSpec:
    """Where the adapters go and how big they are."""

    rank: int = 8  # LoRA rank r: A is (r, in_features), B is (out_features, r)
    alpha: float = 16.0  # scaling alpha; the update B A is multiplied by alpha / rank
    dropout: float = 0.0  # dropout on the adapter input (training mode only), in [0, 1)
    targets: tuple[str, ...] = ("language",)  # VLA parts to adapt: "language" and/or "vision"

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ConfigError(f"LoraSpec.rank must be an integer >= 1, got {self.rank!r}")
        if not self.alpha > 0:
            raise ConfigError(f"LoraSpec.alpha must be > 0, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"LoraSpec.dropout must be in [0, 1), got {self.dropout!r}")
        targets = tuple(self.targets) if not isinstance(self.targets, str) else (self.targets,)
        bad = [t for t in targets if t not in LORA_TARGETS]
        if not targets or bad or len(set(targets)) != len(targets):
            raise ConfigError(
                f"LoraSpec.targets must be distinct names from {list(LORA_TARGETS)}, got "
                f"{self.targets!r}"
            )


def _require_peft():
    try:
        import peft
    except ImportError as e:  # pragma: no cover - depends on the install
        raise NotAvailableError(f"LoRA needs peft: {PEFT_HINT}") from e
    return peft


def _is_adapter(name: str) -> bool:
    """True for the parameter/state names peft gives adapter weights (`...lora_A.default...`)."""
    return any(part.startswith("lora_") for part in name.split("."))


def lora_target_modules(module: nn.Module) -> list[str]:
    """Qualified names (relative to `module`) of the layers LoRA adapts, in module order.

    The rule is every `nn.Linear` plus every pointwise `nn.Conv2d` (1x1 kernel, groups=1,
    which is a per-pixel linear map). Layers under an `lm_head`, `pooler` or `classifier`
    are left out, because a VLA never runs them. On the encoders robofm builds, this picks
    exactly the attention and MLP projections of the transformer layers:
    - Llama/SmolLM, Qwen2, Gemma: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj;
    - MiniLM (BERT): attention.self.{query,key,value}, attention.output.dense,
      intermediate.dense, output.dense;
    - word encoder, small_vit (robofm `Transformer`): attn.q, attn.kv, attn.out, mlp.0, mlp.2;
    - SigLIP/ViT towers: q/k/v/out projections and mlp.fc1/fc2;
    - PaliGemma/Idefics3: both of the above, plus the image-to-text projector.
    Embeddings, position tables, norms and patchify convolutions are not adapted. Conv nets
    only have their pointwise convs adapted: MobileNetV2's expand/project convs, and
    ResNet-FiLM's 1x1 skip convs plus its FiLM linears.
    """
    names = []
    for name, m in module.named_modules():
        if not name or UNUSED_PARTS.intersection(name.split(".")):
            continue
        pointwise = isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == (1, 1) and m.groups == 1
        if isinstance(m, nn.Linear) or pointwise:
            names.append(name)
    return names


def _parts(model: nn.Module, targets: tuple[str, ...]) -> dict[str, nn.Module]:
    parts = {}
    for t in targets:
        part = getattr(model, t, None)
        if part is None:
            why = " (a VLM brings its own tower: target 'language')" if t == "vision" else ""
            raise ConfigError(f"LoRA target {t!r}: this VLA has no {t} encoder{why}")
        parts[t] = part
    return parts


def _lora_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    from peft.tuners.lora import LoraLayer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]


def apply_lora(model: nn.Module, spec: LoraSpec) -> dict[str, int]:
    """Adapt `spec.targets` of `model` (a VLA) in place; see the module docstring.

    Only the adapter weights of the targeted parts are trainable afterwards. Parameters
    outside the targets keep their requires_grad. Build the optimizer after this call.
    Returns parameter counts in elements: {"lora_params": adapter weights added,
    "frozen_base_params": base weights of the targeted parts, now frozen, "targets":
    number of adapted layers}.
    Raises ConfigError if the model already has adapters, if a target is missing (vision
    on a VLM), or if a target has no layer to adapt.
    """
    peft = _require_peft()
    if _lora_layers(model):
        raise ConfigError("the model already has LoRA adapters; merge_lora it first")
    parts = _parts(model, tuple(spec.targets))
    plans = {}
    for name, part in parts.items():
        layers = lora_target_modules(part)
        if not layers:
            raise ConfigError(
                f"LoRA target {name!r}: {type(part).__name__} has no Linear or pointwise "
                f"Conv2d layer to adapt"
            )
        plans[name] = layers
    restore: dict[str, tuple[dict[str, bool], bool | None]] = {}
    setattr(model, _RESTORE_ATTR, restore)  # filled per part, so merge_lora can undo a partial
    counts = {"lora_params": 0, "frozen_base_params": 0, "targets": 0}
    for name, part in parts.items():
        requires_grad = {n: p.requires_grad for n, p in part.named_parameters()}
        restore[name] = (requires_grad, getattr(part, "frozen", None))
        config = peft.LoraConfig(
            r=spec.rank,
            lora_alpha=spec.alpha,
            lora_dropout=spec.dropout,
            # a regex is matched against the whole qualified name: exactly these layers
            target_modules="|".join(map(re.escape, plans[name])),
            bias="none",
        )
        peft.inject_adapter_in_model(config, part)
        for n, p in part.named_parameters():
            adapter = _is_adapter(n)
            p.requires_grad_(adapter)
            counts["lora_params" if adapter else "frozen_base_params"] += p.numel()
        counts["targets"] += len(plans[name])
        if getattr(part, "frozen", False):  # forward must record gradients for the adapters
            part.frozen = False
            part.train(part.training)  # a TextEncoder re-syncs its children's mode
    cache = getattr(model, "_text_cache", None)
    if cache is not None:
        cache.clear()  # features of the unadapted encoder
    return counts


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and remove the LoRA layers, in place.

    Afterwards the model has the plain architecture's state_dict keys, and computes what
    the adapted model computed (up to float rounding). requires_grad and the `frozen` flag
    of the adapted parts are restored to their values before `apply_lora`. A model without
    adapters is returned unchanged. Returns `model`.
    """
    _require_peft()
    for name, layer in _lora_layers(model):
        layer.merge()
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer.get_base_layer())
    restore = model.__dict__.pop(_RESTORE_ATTR, {})
    for part_name in LORA_TARGETS:
        part = getattr(model, part_name, None)
        if part is None:
            continue
        if "peft_config" in part.__dict__:
            del part.peft_config  # set by peft's injection
        if part_name not in restore:
            continue
        requires_grad, frozen = restore[part_name]
        for n, p in part.named_parameters():
            p.requires_grad_(requires_grad.get(n, p.requires_grad))
        if frozen is not None:
            part.frozen = frozen
            part.train(part.training)
    cache = getattr(model, "_text_cache", None)
    if cache is not None:
        cache.clear()
    return model


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors only (the lora_A / lora_B weights), under the model's state_dict
    names: what a LoRA run has to save besides the parts outside the targets."""
    return {k: v for k, v in model.state_dict().items() if _is_adapter(k)}


def spec_from_config(cfg) -> LoraSpec:
    """The LoraSpec a `TrainConfig` asks for (`lora_rank`, `lora_alpha`, `lora_vision`)."""
    targets = ("language", "vision") if cfg.lora_vision else ("language",)
    return LoraSpec(rank=cfg.lora_rank, alpha=cfg.lora_alpha, targets=targets)
