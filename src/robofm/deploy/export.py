"""A checkpoint's inference computation as a standalone `torch.export` program, and the same
computation under `torch.compile`.

`export_checkpoint(ckpt, out)` writes a directory (atomically: built in a temporary sibling,
then renamed):

    policy.pt2        `torch.export.save` of the program, weights inside
    export.json       what runs outside the program (below), input and output specs
    stats.json        the checkpoint's normalisation stats (byte copy)
    action_space.json the checkpoint's ActionSpace contract (byte copy)
    tokenizer/        the HF tokenizer files, when the language backbone has one

The program takes plain tensors, batch 1, in this order (`export.json` "inputs"):
    image_<cam>     float32 (1, T_obs, 3, S, S) in [0, 1], one per camera in order
    state           float32 (1, T_obs, S_state), normalised with stats.json
    input_ids       int64 (1, T_text), 1 <= T_text <= max_text_tokens (dynamic)
    attention_mask  int64 (1, T_text), 1 for real tokens
    noise           float32 (1, H, D) standard normal: flow and diffusion heads only, so
                    the output is a deterministic function of the inputs
and returns normalised actions float32 (1, H, D). Inside: vision encoder, keypoint readout,
the language encoder run on the ids (the Python text cache of `VLA.encode_text` is bypassed),
trunk and head; the embodiment is fixed to the checkpoint's robot. Outside, as `Policy` does:
centre-crop and resize the camera frames, normalise the state, tokenise the prompt (HF
tokenizer in `tokenizer/`, right padding, truncation at max_text_tokens; or the "word"
encoder's hashing, see `robofm.models.language.word_ids`), draw the noise, then unnormalise
the actions (stats key "action"), keep the robot's first `action_space.dim` dimensions and
clip to the ActionSpace bounds. `load_exported(dir)` does all of that around the program.

Heads: `regression` and `bins` (greedy decoding unrolled) export as they are; `flow` takes
the explicit noise; `diffusion` takes it too and its DDIM loop unrolls over the head's
precomputed step list (`DiffusionHead.ddim_steps`). INT8 checkpoints do not export: their
layers hold PyTorch's packed int8 weights, a TorchScript object `torch.export` cannot
serialise (`ConfigError`, naming it). ONNX needs the `onnx` package, not installed here.

`CompiledSampler(model)` is the torch.compile counterpart (`Policy(compile=True)`): it
compiles `encode_prefix` and `head.sample` with `dynamic=False`, while the instruction is
encoded eagerly (cached by the model) and padded to `max_text_tokens`, so one graph serves
every instruction without recompiling.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import inspect
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from robofm.atomic import atomic_dir
from robofm.errors import ConfigError, NotAvailableError
from robofm.types import Observation

PROGRAM_FILE = "policy.pt2"
META_FILE = "export.json"
TOKENIZER_DIR = "tokenizer"
EXPORT_FORMAT = "robofm.export"
EXPORT_VERSION = 1
COPIED_FILES = ("stats.json", "action_space.json")
DEFAULT_PROMPT = "pick up the red cube"


def takes_noise(head: nn.Module) -> bool:
    """Whether `head.sample` accepts an explicit `noise` (the iterative heads)."""
    return "noise" in inspect.signature(head.sample).parameters


class _GivenText:
    """Stands in for `VLA.encode_text` while the instruction is already encoded: returns the
    held (tokens or ids (B, T, ...), mask (B, T) bool) whatever the prompts."""

    def __init__(self) -> None:
        self.value: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(self, prompts: list[str], device: torch.device) -> tuple[torch.Tensor, ...]:
        assert self.value is not None
        return self.value


@contextlib.contextmanager
def _given_text(model: nn.Module, slot: _GivenText, text: tuple) -> Iterator[None]:
    """`model.encode_prefix` reads `text` instead of encoding its prompts, for this block."""
    slot.value = text
    model.encode_text = slot  # an instance attribute shadows the method
    try:
        yield
    finally:
        del model.encode_text
        slot.value = None


def _blank_obs(model: nn.Module, robot: str, images: dict, state: torch.Tensor) -> Observation:
    """An Observation of tensors only: the prompt is supplied by `_given_text`."""
    b = state.shape[0]
    ones = torch.ones(b, dtype=torch.bool, device=state.device)
    return Observation(
        images=images,
        image_mask={c: ones for c in model.cameras},
        state=state,
        state_mask=torch.ones(b, state.shape[-1], dtype=torch.bool, device=state.device),
        prompt=[""] * b,
        embodiment=[robot] * b,
    )


class ActionCore(nn.Module):
    """The VLA's inference computation for one robot on plain tensors (the exported program):
    `forward(*images, state, input_ids, attention_mask[, noise]) -> (B, H, D)` normalised."""

    def __init__(self, model: nn.Module, robot: str):
        super().__init__()
        self.model, self.robot = model, robot
        self.noise = takes_noise(model.head)
        self._slot = _GivenText()

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        n = len(self.model.cameras)
        images = dict(zip(self.model.cameras, inputs[:n], strict=True))
        state, input_ids, attention_mask = inputs[n : n + 3]
        noise = inputs[n + 3] if self.noise else None
        if self.model.kind == "encoder":
            text = self.model.language(input_ids, attention_mask)  # (B, T, Wl), (B, T) bool
        else:  # LMs and VLMs embed the ids themselves
            text = (input_ids, attention_mask.bool())
        obs = _blank_obs(self.model, self.robot, images, state)
        with _given_text(self.model, self._slot, text):
            prefix = self.model.encode_prefix(obs)
        return (
            self.model.head.sample(prefix, noise=noise)
            if self.noise
            else self.model.head.sample(prefix)
        )


def input_names(model: nn.Module) -> list[str]:
    """Names of the program's inputs, in order."""
    names = [f"image_{c}" for c in model.cameras] + ["state", "input_ids", "attention_mask"]
    return names + (["noise"] if takes_noise(model.head) else [])


def example_inputs(
    model: nn.Module, robot: str, prompt: str = DEFAULT_PROMPT, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """Valid inputs for `ActionCore(model, robot)`: random frames and state, `prompt`'s ids,
    standard normal noise where the head takes it."""
    cfg = model.cfg
    g = torch.Generator().manual_seed(seed)
    s, t = cfg.image_size, cfg.n_obs_steps
    images = [torch.rand(1, t, 3, s, s, generator=g) for _ in model.cameras]
    state = torch.randn(1, t, model.embodiments.state_dims[robot], generator=g) * 0.5
    ids = model.language.tokenize([prompt], cfg.max_text_tokens)
    out = (*images, state, ids["input_ids"], ids["attention_mask"])
    if takes_noise(model.head):
        out += (torch.randn(1, cfg.chunk_len, model.action_dim, generator=g),)
    return out


def _text_limit(model: nn.Module) -> int:
    """Largest T_text the program accepts: max_text_tokens (the word encoder: also its
    learned positions)."""
    from robofm.models.language import WORD_MAX_LEN, WordEncoder

    limit = model.cfg.max_text_tokens
    return min(limit, WORD_MAX_LEN) if isinstance(model.language, WordEncoder) else limit


def export_model(model: nn.Module, robot: str, prompt: str = DEFAULT_PROMPT):
    """`torch.export.ExportedProgram` of `ActionCore(model, robot)`; the text length is
    dynamic. A failure is a `ConfigError` naming the head and torch's reason."""
    from robofm.deploy.int8 import Int8DynamicLinear

    head = model.cfg.head
    if any(isinstance(m, Int8DynamicLinear) for m in model.modules()):
        raise ConfigError(
            f"head {head!r}: an INT8 model does not export: its Linear layers hold PyTorch's "
            "packed int8 weights (torch.classes.quantized.LinearPackedParamsBase, a "
            "TorchScript object) that torch.export cannot serialise; export the float "
            "checkpoint instead"
        )
    core = ActionCore(model.eval(), robot).eval()
    args = example_inputs(model, robot, prompt)
    text = torch.export.Dim("text_len", min=1, max=_text_limit(model))
    n = len(model.cameras)
    dynamic: list[Any] = [None] * (n + 1) + [{1: text}, {1: text}]
    dynamic += [None] * (len(args) - len(dynamic))
    try:
        with torch.no_grad():
            return torch.export.export(core, args, dynamic_shapes=(tuple(dynamic),))
    except Exception as e:  # torch raises many types; the reason is in the first line
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise ConfigError(
            f"head {head!r} (language {model.cfg.language!r}): torch.export failed: "
            f"{type(e).__name__}: {reason}"
        ) from e


def _tokenizer_info(model: nn.Module, max_len: int) -> dict[str, Any]:
    from robofm.models.language import WORD_BUCKETS, WORD_MAX_LEN, WordEncoder

    if isinstance(model.language, WordEncoder):
        return {
            "kind": "word",
            "buckets": model.language.buckets,
            "max_length": min(max_len, WORD_MAX_LEN),
            "rule": "ids = [1] + [2 + crc32(w.encode('utf-8')) % buckets for w in the lower-"
            "cased runs of letters (regex [^\\W\\d_]+)], truncated to max_length; mask all 1 "
            "(robofm.models.language.word_ids)",
            "default_buckets": WORD_BUCKETS,
        }
    if getattr(model.language, "tokenizer", None) is None:
        raise ConfigError(f"language backbone {model.cfg.language!r} has no tokenizer to save")
    return {
        "kind": "hf",
        "dir": TOKENIZER_DIR,
        "max_length": max_len,
        "call": "tokenizer([prompt + text_suffix], padding='longest', truncation=True, "
        "max_length=max_length), padding and truncation on the right",
        "text_suffix": "\n" if getattr(model.language, "family", "") == "paligemma" else "",
    }


def export_checkpoint(
    src: str | Path,
    out: str | Path,
    *,
    prompt: str = DEFAULT_PROMPT,
    overwrite: bool = False,
    fmt: str = "pt2",
) -> dict[str, Any]:
    """Export checkpoint `src` to the directory `out` (see the module docstring); returns
    the `export.json` body. `prompt` only shapes the example used for tracing."""
    from robofm.config import config_to_dict
    from robofm.models.checkpoint import load_checkpoint

    if fmt == "onnx":
        missing = [p for p in ("onnx", "onnxscript") if importlib.util.find_spec(p) is None]
        raise NotAvailableError(
            "ONNX export is not in this build"
            + (
                f" and needs {' and '.join(missing)} (pip install {' '.join(missing)})"
                if missing
                else ""
            )
            + "; the torch.export program (--format pt2) needs nothing beyond torch"
        )
    if fmt != "pt2":
        raise ConfigError(f"unknown export format {fmt!r}; valid: pt2, onnx")
    src, out = Path(src), Path(out)
    if (src / "quantization.json").exists():
        raise ConfigError(
            f"{src}: an INT8 checkpoint (quantization.json) does not export: its layers hold "
            "PyTorch's packed int8 weights (a TorchScript object, "
            "torch.classes.quantized.LinearPackedParamsBase) that torch.export cannot "
            "serialise; export the float checkpoint it was made from"
        )
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} already exists (pass --overwrite to replace it)")
    model, normalizer, spaces = load_checkpoint(src)
    robot = spaces.action.robot
    program = export_model(model, robot, prompt)
    cfg = model.cfg
    s, t = cfg.image_size, cfg.n_obs_steps
    state_dim = model.embodiments.state_dims[robot]
    text_max = _text_limit(model)
    specs = [
        {
            "name": f"image_{c}",
            "shape": [1, t, 3, s, s],
            "dtype": "float32",
            "doc": f"camera '{c}', RGB in [0, 1], centre-cropped and resized to {s} px",
        }
        for c in model.cameras
    ]
    specs += [
        {"name": "state", "shape": [1, t, state_dim], "dtype": "float32", "doc": "normalised"},
        {"name": "input_ids", "shape": [1, "T_text"], "dtype": "int64", "max_T_text": text_max},
        {"name": "attention_mask", "shape": [1, "T_text"], "dtype": "int64", "doc": "1 = token"},
    ]
    if takes_noise(model.head):
        specs.append(
            {
                "name": "noise",
                "shape": [1, cfg.chunk_len, model.action_dim],
                "dtype": "float32",
                "doc": "standard normal; the chunk is a deterministic function of it",
            }
        )
    meta = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "torch": torch.__version__,
        "program": PROGRAM_FILE,
        "source": str(src),
        "robot": robot,
        "head": cfg.head,
        "language": cfg.language,
        "cameras": list(model.cameras),
        "image_size": s,
        "n_obs_steps": t,
        "state_dim": state_dim,
        "chunk_len": cfg.chunk_len,
        "action_dim": model.action_dim,
        "action_space_dim": spaces.action.dim,
        "inputs": specs,
        "output": {
            "name": "actions",
            "shape": [1, cfg.chunk_len, model.action_dim],
            "dtype": "float32",
            "doc": "normalised; unnormalise with stats.json key 'action', keep the first "
            "action_space_dim dims, clip to the ActionSpace bounds",
        },
        "image_transform": {
            "image_crop_scale": list(
                getattr(model, "transforms", {}).get("image_crop_scale", (1.0, 1.0))
            ),
            "doc": "robofm.data.transforms.build_image_transform(image_size, train=False, "
            "scale=image_crop_scale): centre crop keeping sqrt(mean scale) of each side, "
            "then resize",
        },
        "normalization": {
            "file": "stats.json",
            "state_key": "observation.state",
            "action_key": "action",
            "stats_sha256": normalizer.stats_sha256,
        },
        "action_space": spaces.action.to_dict(),
        "tokenizer": _tokenizer_info(model, cfg.max_text_tokens),
        "model": config_to_dict(cfg),
    }
    with atomic_dir(out, overwrite=overwrite) as tmp:
        torch.export.save(program, str(tmp / PROGRAM_FILE))
        for name in COPIED_FILES:
            shutil.copyfile(src / name, tmp / name)
        if meta["tokenizer"]["kind"] == "hf":
            model.language.tokenizer.save_pretrained(str(tmp / TOKENIZER_DIR))
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


class ExportedModel:
    """An exported program with what runs around it: `model(*inputs)` runs the program;
    `sample_actions(obs)` takes an `Observation` (batch 1) like `VLA.sample_actions`, and
    `policy()` wraps it in a `Policy` (normalisation, image transforms, history, clipping)."""

    def __init__(self, path: str | Path):
        from robofm.config import ModelConfig, config_from_dict

        self.path = Path(path)
        meta_file = self.path / META_FILE
        if not meta_file.is_file():
            raise ConfigError(f"{self.path}: not an exported policy (no {META_FILE})")
        self.meta = json.loads(meta_file.read_text())
        if self.meta.get("format") != EXPORT_FORMAT or self.meta.get("version") != EXPORT_VERSION:
            raise ConfigError(
                f"{meta_file}: format {self.meta.get('format')!r} version "
                f"{self.meta.get('version')!r}; expected {EXPORT_FORMAT!r} v{EXPORT_VERSION}"
            )
        self.program = torch.export.load(str(self.path / PROGRAM_FILE))
        self._run = self.program.module()
        self.cfg = config_from_dict(ModelConfig, self.meta["model"], f"{meta_file}: model")
        self.cameras = tuple(self.meta["cameras"])
        self.robot = self.meta["robot"]
        self.action_dim = int(self.meta["action_dim"])
        self.embodiments = SimpleNamespace(state_dims={self.robot: int(self.meta["state_dim"])})
        crop = self.meta["image_transform"]["image_crop_scale"]
        self.transforms = {"image_crop_scale": list(crop)}
        self.noise = any(i["name"] == "noise" for i in self.meta["inputs"])
        self._tokenizer = None

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Run the program on inputs in `export.json` order -> (1, H, D) normalised."""
        return self._run(*inputs)

    def eval(self) -> ExportedModel:
        return self

    def tokenize(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids (1, T), attention_mask (1, T)) int64, as the checkpoint's encoder does."""
        info = self.meta["tokenizer"]
        if info["kind"] == "word":
            from robofm.models.language import word_ids

            ids = torch.tensor([word_ids(prompt, info["buckets"])[: info["max_length"]]])
            return ids, torch.ones_like(ids)
        if self._tokenizer is None:
            from robofm.models.hf_backbones import load_tokenizer

            self._tokenizer = load_tokenizer(self.path / info["dir"])
            self._tokenizer.padding_side = self._tokenizer.truncation_side = "right"
        enc = self._tokenizer(
            [prompt + info["text_suffix"]],
            padding="longest",
            truncation=True,
            max_length=info["max_length"],
            return_tensors="pt",
        )
        return enc["input_ids"].long(), enc["attention_mask"].long()

    @torch.inference_mode()
    def sample_actions(
        self,
        obs: Observation,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(1, H, D) normalised chunk for a batch-1 `Observation` of this robot; the noise
        is drawn from `generator` as the model's head draws it, unless given."""
        if obs.batch_size != 1 or obs.embodiment != [self.robot]:
            raise ConfigError(
                f"an exported policy runs batch 1 of robot {self.robot!r}; got {obs.embodiment}"
            )
        ids, mask = self.tokenize(obs.prompt[0])
        inputs = [obs.images[c].float() for c in self.cameras] + [obs.state.float(), ids, mask]
        if self.noise:
            shape = (1, self.cfg.chunk_len, self.action_dim)
            inputs.append(noise if noise is not None else torch.randn(shape, generator=generator))
        return self(*inputs)

    def policy(self, seed: int = 0):
        """A `Policy` (observation dict in, robot-unit actions out) running this program."""
        from robofm.data.stats import load_normalizer
        from robofm.policy import Policy
        from robofm.spaces import load_spaces

        normalizer = load_normalizer(self.path / "stats.json")
        spaces = load_spaces(self.path / "action_space.json")
        return Policy(self, normalizer, spaces, seed=seed)


def load_exported(path: str | Path) -> ExportedModel:
    """Load an `export_checkpoint` directory; see `ExportedModel`."""
    return ExportedModel(path)


def compare_exported(
    src: str | Path, exported: str | Path, *, calls: int = 20, warmup: int = 3
) -> dict[str, float]:
    """Parity and latency of an exported program against the checkpoint it came from, on
    the same random inputs (same noise): max |exported - eager| over the normalised chunk,
    and median ms per call of each (calls interleaved, after `warmup`)."""
    from robofm.models.checkpoint import load_checkpoint

    model, _, spaces = load_checkpoint(src)
    exp = load_exported(exported)
    core = ActionCore(model, spaces.action.robot).eval()
    diffs = []
    with torch.inference_mode():
        for seed, prompt in enumerate(
            (DEFAULT_PROMPT, "lift it", "put the green cylinder on the pad")
        ):
            args = example_inputs(model, spaces.action.robot, prompt, seed=seed)
            diffs.append(float((exp(*args) - core(*args)).abs().max()))
        args = example_inputs(model, spaces.action.robot)
        times: dict[str, list[float]] = {"eager": [], "exported": []}
        for i in range(warmup + calls):
            for name, fn in (("eager", core), ("exported", exp)):
                t0 = time.perf_counter()
                fn(*args)
                if i >= warmup:
                    times[name].append((time.perf_counter() - t0) * 1000.0)
    return {
        "max_abs_diff": max(diffs),
        "eager_ms_median": float(np.median(times["eager"])) if calls else float("nan"),
        "exported_ms_median": float(np.median(times["exported"])) if calls else float("nan"),
    }


# ---- torch.compile -------------------------------------------------------------------------


class CompiledSampler:
    """`model.sample_actions(obs, generator)` with `encode_prefix` and `head.sample` compiled
    (`torch.compile(dynamic=False)`, inductor). The instruction is encoded eagerly (the
    model's cache) and, for encoder-kind backbones, padded to `max_text_tokens` with masked
    zeros (the trunk has no positions, so padding changes nothing), so every instruction
    reuses one graph; the noise is drawn eagerly from `generator` exactly as the head draws
    it, so seeds give the same chunks as eager. The first call compiles (seconds to a minute).
    """

    def __init__(self, model: nn.Module, **compile_kw: Any):
        self.model = model
        self.noise = takes_noise(model.head)
        kw = {"dynamic": False, **compile_kw}
        self._encode = torch.compile(model.encode_prefix, **kw)
        self._sample = torch.compile(model.head.sample, **kw)
        self._slot = _GivenText()

    def __call__(self, obs: Observation, generator: torch.Generator | None = None) -> torch.Tensor:
        model, device = self.model, obs.state.device
        text, mask = model.encode_text(obs.prompt, device)  # (B, T, W) or ids (B, T)
        pad = model.cfg.max_text_tokens - text.shape[1]
        if model.kind == "encoder" and pad > 0:
            text = F.pad(text, (0, 0, 0, pad))  # (B, L, W)
            mask = F.pad(mask, (0, pad))  # (B, L) bool, False = padding
        kw = {}
        if self.noise:
            b, dtype = obs.batch_size, next(model.head.parameters()).dtype
            shape = (b, model.cfg.chunk_len, model.action_dim)
            kw["noise"] = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        blank = dataclasses.replace(obs, prompt=[""] * obs.batch_size)
        with _given_text(model, self._slot, (text, mask)):
            prefix = self._encode(blank)
        return self._sample(prefix, **kw)
