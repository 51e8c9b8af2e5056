"""INT8 weight quantization of a checkpoint for CPU inference.

`quantize_checkpoint(src, dst)` loads a float checkpoint, replaces the qualifying `nn.Linear`
layers by `Int8DynamicLinear` and writes a new checkpoint directory at `dst` (atomically): the
same `config.json`, `stats.json` and `action_space.json` (byte-identical copies), an INT8
`model.safetensors` and a `quantization.json` manifest. `Policy.from_checkpoint(dst)` loads
it unchanged for callers (the checkpoint loader sees the manifest).

Scheme (CPU, the only backend in this build): weights are int8, symmetric, one scale per
output channel (`scale = max|w_row| / 127.5`, `q = clamp(round(w / scale), -128, 127)`: the
arithmetic of PyTorch's `quantize_dynamic` with `per_channel_dynamic_qconfig`, bit for bit);
activations are quantized per call to uint8 by the `quantized::linear_dynamic` kernel
(fbgemm/x86 on Intel/AMD, qnnpack on ARM), which runs the int8 GEMM and rescales to float.
`torch.ao.quantization` is deprecated in torch 2.13 (torchao, its successor, is not
installed), so `robofm.deploy.int8` calls that kernel directly; see there.

On-disk format: safetensors cannot hold packed quantized weights, and pickle is not used. A
quantized layer `NAME` stores plain tensors instead of `NAME.weight`:
    NAME.weight_int8   int8    (out, in)   the quantized weight q
    NAME.weight_scale  float32 (out,)      per-output-channel scale; w ~= q * scale[:, None]
    NAME.bias          float32 (out,)      unchanged (when the layer has a bias)
Every other tensor keeps its float key and value. The loader rebuilds the float architecture
from `config.json`, swaps the layers listed in `quantization.json` for `Int8DynamicLinear`,
and packs the int8 tensors for the running machine's kernel (so the files are portable
across x86 and ARM). Reload gives bit-identical actions.

What stays float (recorded per module in `quantization.json`):
- LayerNorm / GroupNorm / BatchNorm: per-call statistics, no GEMM to speed up;
- embeddings and learned tokens/positions: lookups and additions, no GEMM;
- convolutions (MobileNetV2, the keypoint readout, ViT patch embedding): PyTorch's dynamic
  quantization covers Linear only; static int8 convs need calibration data, and MobileNet's
  depthwise convs are where int8 MobileNetV2 loses most accuracy;
- the action output layer (`head.out`, the diffusion head's `head.out.1`, the bins head's
  `head.logits`): its outputs are the actions (bin logits) themselves, and it is tiny;
- Linears with fewer than `min_weights` (default 65536) weights: the kernel's fixed cost
  (~15 us per call, quantizing the activations) exceeds the GEMM time it saves (measured on
  x86, one thread: 256x256 at one token 11 us float vs 24 us int8; 512x1024 58 vs 29 us);
- Linears whose weight is tied to another parameter (a tied LM head), to keep the tie;
- a frozen text encoder (MiniLM): it runs once per new instruction (its output is cached), so
  int8 would save no latency, and dynamic int8 measurably bends its features (sentence
  embeddings' cosine to float 0.974-0.986 over six robot instructions; the FFN layers, whose
  activations have outliers, account for most of it). The cost: its 10.6M Linear weights
  (42 MB) stay float in the small preset. LM/VLM trunks, which run every call, are quantized.

Measured on the demo's trained `small` checkpoint (lift, x86, one thread): model.safetensors
122 -> 99 MB, chunk latency p50 9.8 -> 8.2 ms, actions within 1.1 mm (p95 0.5 mm) and 0.03
gripper of float along closed-loop lift rollouts, success 54/60 vs float 55/60. The rest of
its latency is the float MobileNetV2 and keypoint convs.

GPU weight-only INT8 and INT4 need torchao or bitsandbytes; neither is installed here, so
asking for them is a `ConfigError` naming the packages (`check_backend`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from robofm.atomic import atomic_dir
from robofm.deploy.int8 import Int8DynamicLinear
from robofm.errors import ConfigError, NotAvailableError
from robofm.models.checkpoint import CheckpointError, load_checkpoint

QUANT_FILE = "quantization.json"
QUANT_FORMAT = "robofm.quantization"
QUANT_VERSION = 1
COPIED_FILES = ("config.json", "stats.json", "action_space.json")  # byte-identical to the source
MIN_WEIGHTS = 65536  # Linears below this many weights stay float (see the module docstring)
ACTION_OUTPUT_LAYERS = ("head.out", "head.out.1", "head.logits")  # the head's last projection
GPU_PACKAGES = ("torchao", "bitsandbytes")  # weight-only INT8/INT4 kernels, where installed

FLOAT_REASONS = {
    "norm": "normalisation: statistics are computed per call in float; no GEMM to speed up",
    "embedding": "lookup table: no GEMM to speed up; int8 rows would shift trained features",
    "conv": "convolution: PyTorch dynamic int8 covers nn.Linear only (static int8 convs need "
    "calibration); depthwise convs lose most accuracy under int8",
    "parameter": "learned tokens/positions added to activations: no GEMM to speed up",
    "other": "no dynamic int8 kernel for this module type",
    "output": "action output layer: its outputs are the actions (or bin logits); tiny",
    "tied": "weight tied to another parameter; quantizing would break the tie",
    "small": "fewer than min_weights weights: the per-call activation quantization costs more "
    "than the int8 GEMM saves",
    "request": "kept float by request (keep_float / --keep-float)",
    "cached": "frozen text encoder: runs once per instruction (output cached), so int8 saves no "
    "latency, and dynamic int8 bends its features (cosine to float 0.97-0.99)",
}


# ---- which layers ------------------------------------------------------------------------


def _kind(module: nn.Module) -> str:
    """The FLOAT_REASONS key of a non-Linear module that owns parameters directly."""
    if isinstance(module, nn.Embedding | nn.EmbeddingBag):
        return "embedding"
    if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d):
        return "conv"
    norms = nn.LayerNorm | nn.GroupNorm | nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d
    if isinstance(module, norms) or type(module).__name__.endswith("Norm"):  # HF RMSNorms too
        return "norm"
    if isinstance(module, nn.ParameterDict) or any(True for _ in module.children()):
        return "parameter"  # a container's own tokens / positions / queries
    return "other"


def plan_quantization(
    model: nn.Module, min_weights: int = MIN_WEIGHTS, keep_float: tuple[str, ...] = ()
) -> tuple[list[str], dict[str, Any]]:
    """(names of the nn.Linear layers to quantize, in module order; the kept-float record).

    `keep_float`: module names whose Linears (themselves or below them) stay float, an escape
    hatch for a layer a trained model turns out to be sensitive to. The record has "linear"
    (name -> weights, reason) for every Linear kept float, and "modules" (type -> count,
    weights, reason) for every other module owning parameters.
    """
    owners: dict[int, int] = {}  # id(parameter) -> how many modules hold it (ties)
    for _, mod in model.named_modules(remove_duplicate=False):
        for p in mod.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    lang = getattr(model, "language", None)
    cached = getattr(model, "kind", "") == "encoder" and getattr(lang, "frozen", False)
    quantize: list[str] = []
    linear: dict[str, Any] = {}
    modules: dict[str, Any] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            n = mod.weight.numel()
            if name in ACTION_OUTPUT_LAYERS:
                reason = "output"
            elif any(name == k or name.startswith(k + ".") for k in keep_float):
                reason = "request"
            elif cached and name.startswith("language."):
                reason = "cached"
            elif owners.get(id(mod.weight), 0) > 1:
                reason = "tied"
            elif n < min_weights:
                reason = "small"
            else:
                quantize.append(name)
                continue
            linear[name] = {"weights": n, "reason": FLOAT_REASONS[reason]}
            continue
        own = list(mod.parameters(recurse=False))
        if not own or isinstance(mod, Int8DynamicLinear):
            continue
        kind = _kind(mod)
        key = "parameters" if kind == "parameter" else type(mod).__name__
        entry = modules.setdefault(key, {"count": 0, "weights": 0, "reason": FLOAT_REASONS[kind]})
        entry["count"] += 1
        entry["weights"] += sum(p.numel() for p in own)
    return quantize, {"linear": linear, "modules": modules}


def _swap(model: nn.Module, names: list[str], make) -> None:
    """Replace each named nn.Linear of `model` by `make(linear)`."""
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, make(getattr(parent, child)))
    if hasattr(model, "_text_cache"):
        model._text_cache.clear()  # cached text features came from the float encoder


def quantize_model(model: nn.Module, names: list[str]) -> nn.Module:
    """Quantize the named nn.Linear layers of `model` in place (int8, see `quantize_weight`)."""
    _swap(model, names, Int8DynamicLinear.from_float)
    return model


# ---- backends ------------------------------------------------------------------------------


def check_backend(mode: str, device: str = "cpu") -> str:
    """The kernel that serves `mode` on `device`, or a clear error naming what is missing.

    CPU INT8 uses PyTorch's own dynamic-quantization kernel. GPU INT8 and INT4 (any device)
    are weight-only schemes that need torchao or bitsandbytes.
    """
    if mode not in ("int8", "int4"):
        raise ConfigError(f"quantization mode must be 'int8' or 'int4', got {mode!r}")
    if mode == "int8" and torch.device(device).type == "cpu":
        engine = torch.backends.quantized.engine
        if engine == "none" or not hasattr(torch.ops.quantized, "linear_dynamic"):
            raise ConfigError(
                f"this torch build ({torch.__version__}) has no quantized CPU engine "
                f"(supported: {torch.backends.quantized.supported_engines})"
            )
        return f"torch quantized::linear_dynamic ({engine})"
    what = "INT4 weights" if mode == "int4" else f"INT8 on {device}"
    found = [p for p in GPU_PACKAGES if importlib.util.find_spec(p) is not None]
    if not found:
        raise ConfigError(
            f"{what}: needs weight-only kernels from the 'torchao' or 'bitsandbytes' package, and "
            "neither is installed (pip install torchao); CPU --int8 needs neither"
        )
    raise NotAvailableError(
        f"{what}: {found[0]} is installed, but robofm's {found[0]} export has not landed in "
        "this build; use --int8 on CPU"
    )


# ---- checkpoints ---------------------------------------------------------------------------


def checkpoint_bytes(path: str | Path) -> int:
    """Bytes on disk of what inference loads from checkpoint `path`: model.safetensors, the
    JSON files and quantization.json (not training state such as train_state.pt)."""
    files = ("model.safetensors", *COPIED_FILES, QUANT_FILE)
    return sum((Path(path) / f).stat().st_size for f in files if (Path(path) / f).is_file())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    path.write_text(json.dumps(manifest, indent=2) + "\n")


def quantize_checkpoint(
    src: str | Path,
    dst: str | Path,
    *,
    mode: str = "int8",
    device: str = "cpu",
    min_weights: int = MIN_WEIGHTS,
    keep_float: tuple[str, ...] = (),
    overwrite: bool = False,
) -> Path:
    """Write an INT8 copy of float checkpoint `src` to the new directory `dst`; returns `dst`.

    `dst` is built in a temporary sibling and renamed when complete, so a failure never
    leaves a partial `dst`; an existing `dst` is refused unless `overwrite`. `min_weights`:
    Linears with fewer weights stay float (0 quantizes every eligible Linear); `keep_float`
    names modules to keep float (see `plan_quantization`). `mode` "int4" and non-CPU
    `device`s need torchao/bitsandbytes (`check_backend`).
    """
    src, dst = Path(src), Path(dst)
    backend = check_backend(mode, device)
    if (src / QUANT_FILE).exists():
        raise ConfigError(f"{src} is already quantized ({QUANT_FILE}); quantize its float source")
    if dst.resolve() == src.resolve() or src.resolve() in dst.resolve().parents:
        raise ConfigError(f"output {dst} must lie outside the source checkpoint {src}")
    if dst.exists() and not overwrite:
        raise ConfigError(f"{dst} already exists (pass overwrite=True / --overwrite to replace it)")
    model, _, _ = load_checkpoint(src)  # checks config, weights and the stats hash
    unknown = sorted(set(keep_float) - {n for n, _ in model.named_modules()})
    if unknown:
        raise ConfigError(f"keep_float names no module of {src}: {unknown}")
    names, kept = plan_quantization(model, min_weights, tuple(keep_float))
    if not names:
        raise ConfigError(
            f"{src}: no Linear layer qualifies for int8 (min_weights={min_weights}, largest "
            f"Linear {max((v['weights'] for v in kept['linear'].values()), default=0)} "
            "weights); small layers would only run slower (min_weights=0 forces them)"
        )
    quantize_model(model, names)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    manifest = {
        "format": QUANT_FORMAT,
        "version": QUANT_VERSION,
        "mode": mode,
        "backend": backend,
        "scheme": "weights int8, symmetric per output channel (scale = max|w| / 127.5); "
        "activations quantized to uint8 per call (dynamic)",
        "keys": {
            "NAME.weight_int8": "int8 (out, in), replaces NAME.weight",
            "NAME.weight_scale": "float32 (out,); NAME.weight ~= weight_int8 * scale[:, None]",
            "NAME.bias": "float32 (out,), unchanged",
        },
        "min_weights": min_weights,
        "keep_float": list(keep_float),
        "source": {
            "path": str(src.resolve()),
            "model_sha256": _sha256(src / "model.safetensors"),
            "model_bytes": (src / "model.safetensors").stat().st_size,
        },
        "quantized": names,
        "kept_float": kept,
    }
    with atomic_dir(dst, overwrite=overwrite) as tmp:
        save_file(state, str(tmp / "model.safetensors"), metadata={"robofm": QUANT_FILE})
        for name in COPIED_FILES:
            shutil.copyfile(src / name, tmp / name)
        manifest["model_bytes"] = (tmp / "model.safetensors").stat().st_size
        _write_manifest(tmp / QUANT_FILE, manifest)
    return dst


def read_quantization(path: str | Path) -> dict[str, Any]:
    """The validated `quantization.json` of checkpoint `path` (errors name the file)."""
    file = Path(path) / QUANT_FILE
    try:
        body = json.loads(file.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{file}: missing; {path} is not a quantized checkpoint") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file}: invalid JSON: {e}") from None
    if not isinstance(body, dict):
        raise CheckpointError(f"{file}: expected a JSON object, got {type(body).__name__}")
    if body.get("format") != QUANT_FORMAT or body.get("version") != QUANT_VERSION:
        raise CheckpointError(
            f"{file}: format {body.get('format')!r} version {body.get('version')!r}; expected "
            f"{QUANT_FORMAT!r} version {QUANT_VERSION}"
        )
    if body.get("mode") != "int8":
        raise CheckpointError(f"{file}: mode {body.get('mode')!r}; this build loads 'int8' only")
    names = body.get("quantized")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise CheckpointError(f"{file}: 'quantized' must be a non-empty list of module names")
    return body


def _check_weights_file(file: Path, layers: dict[str, nn.Linear]) -> None:
    """Every quantized layer's int8 weight and scale are in `file` with the right dtype and
    shape (read from the safetensors header only)."""
    with safe_open(str(file), framework="pt") as f:
        keys = set(f.keys())
        for name, lin in layers.items():
            want = {
                f"{name}.weight_int8": ("I8", [lin.out_features, lin.in_features]),
                f"{name}.weight_scale": ("F32", [lin.out_features]),
            }
            for key, (dtype, shape) in want.items():
                if key not in keys:
                    raise CheckpointError(f"{file}: missing {key} (listed in {QUANT_FILE})")
                sl = f.get_slice(key)
                if sl.get_dtype() != dtype or list(sl.get_shape()) != shape:
                    raise CheckpointError(
                        f"{file}: {key} is {sl.get_dtype()} {sl.get_shape()}, expected "
                        f"{dtype} {shape}"
                    )


def prepare_quantized(
    model: nn.Module, path: str | Path, *, device: str = "cpu", inference: bool = True
) -> None:
    """Swap the Linears listed in `path/quantization.json` for empty `Int8DynamicLinear`s,
    so the checkpoint's int8 tensors load into `model` (the hook of `load_checkpoint`)."""
    path = Path(path)
    manifest = read_quantization(path)
    if not inference:
        raise CheckpointError(
            f"{path}: an INT8 inference checkpoint ({QUANT_FILE}); train or fine-tune from its "
            f"float source {manifest.get('source', {}).get('path', '')!s}"
        )
    if torch.device(device).type != "cpu":
        raise ConfigError(f"{path}: INT8 dynamic quantization runs on CPU; got device {device!r}")
    modules = dict(model.named_modules())
    names = manifest["quantized"]
    bad = [n for n in names if not isinstance(modules.get(n), nn.Linear)]
    if bad:
        raise CheckpointError(
            f"{path / QUANT_FILE}: {bad[:3]} are not Linear layers of the architecture in "
            "config.json"
        )
    _check_weights_file(path / "model.safetensors", {n: modules[n] for n in names})
    _swap(
        model,
        names,
        lambda lin: Int8DynamicLinear(lin.in_features, lin.out_features, lin.bias is not None),
    )


def load_quantized(path: str | Path, device: str = "cpu"):
    """(VLA with INT8 layers, eval mode; Normalizer; SpacesFile) from a quantized checkpoint.

    `Policy.from_checkpoint` does the same for any checkpoint, float or quantized.
    """
    read_quantization(path)  # a clear error when `path` is not quantized
    return load_checkpoint(path, device=device, allow_quantized=True)
