"""`Int8DynamicLinear`: an inference-only `nn.Linear` with int8 weights, run by PyTorch's
dynamic-quantization kernel `quantized::linear_dynamic` (fbgemm/x86 on Intel/AMD, qnnpack
on ARM): activations are quantized to uint8 per call, the GEMM runs in int8 and the result
is rescaled to float32.

`torch.ao.quantization` (whose `quantize_dynamic` wraps this kernel) is deprecated in torch
2.13 in favour of torchao, which is not installed here; the kernel remains, so this module
calls it directly and keeps no `torch.ao` module in the model. The weights are quantized
with the arithmetic of `quantize_dynamic(..., per_channel_dynamic_qconfig)`, bit for bit.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence torch's deprecation notices for quantized tensors (the kernels still work)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*quantiz", category=UserWarning)
        warnings.filterwarnings("ignore", message=r".*quantiz", category=DeprecationWarning)
        yield


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Float (out, in) -> (q int8 (out, in), scale float32 (out,)), symmetric per row."""
    w = weight.detach().float()
    amax = w.abs().amax(dim=1)  # (out,)
    scale = (amax / 127.5).clamp_min(torch.finfo(torch.float32).eps)
    q = torch.clamp(torch.round(w * (1.0 / scale)[:, None]), -128, 127).to(torch.int8)
    return q, scale


class Int8DynamicLinear(nn.Module):
    """Inference-only `nn.Linear` with int8 weights and dynamically quantized activations.

    Holds only the kernel's packed weight; its state dict is the plain tensors
    `weight_int8` (out, in) int8, `weight_scale` (out,) float32 and `bias` (out,) float32.
    Input (..., in) float32 -> output (..., out) float32.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features, self.has_bias = in_features, out_features, bias
        zeros = torch.zeros(out_features) if bias else None
        q = torch.zeros(out_features, in_features, dtype=torch.int8)
        self._pack(q, torch.ones(out_features), zeros)

    @classmethod
    def from_float(cls, linear: nn.Linear) -> Int8DynamicLinear:
        """Quantize a float `nn.Linear` (weights per output channel, see `quantize_weight`)."""
        out = cls(linear.in_features, linear.out_features, bias=linear.bias is not None)
        q, scale = quantize_weight(linear.weight)
        bias = None if linear.bias is None else linear.bias.detach().float().cpu()
        out._pack(q.cpu(), scale.cpu(), bias)
        return out

    def _pack(self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        zero = torch.zeros(self.out_features, dtype=torch.long)
        with _quiet():
            qw = torch._make_per_channel_quantized_tensor(q, scale.double(), zero, 0)
            self._packed = torch.ops.quantized.linear_prepack(qw, bias)

    def unpacked(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(q int8 (out, in), scale float32 (out,), bias float32 (out,) or None)."""
        with _quiet():
            qw, bias = torch.ops.quantized.linear_unpack(self._packed)
            return qw.int_repr(), qw.q_per_channel_scales().float(), bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        y = torch.ops.quantized.linear_dynamic(x.float(), self._packed, True)  # (..., out)
        return y if dtype == torch.float32 else y.to(dtype)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        q, scale, bias = self.unpacked()
        destination[prefix + "weight_int8"] = q
        destination[prefix + "weight_scale"] = scale
        if bias is not None:
            destination[prefix + "bias"] = bias

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors
    ):
        names = ["weight_int8", "weight_scale"] + (["bias"] if self.has_bias else [])
        shapes = {
            "weight_int8": (torch.int8, (self.out_features, self.in_features)),
            "weight_scale": (torch.float32, (self.out_features,)),
            "bias": (torch.float32, (self.out_features,)),
        }
        got = {}
        for name in names:
            key = prefix + name
            if key not in state_dict:
                missing_keys.append(key)
                continue
            t, (dtype, shape) = state_dict[key], shapes[name]
            if t.dtype != dtype or tuple(t.shape) != shape:
                errors.append(f"{key}: expected {dtype} {shape}, got {t.dtype} {tuple(t.shape)}")
                continue
            got[name] = t
        if strict:
            own = {prefix + n for n in names}
            unexpected_keys.extend(k for k in state_dict if k.startswith(prefix) and k not in own)
        if len(got) == len(names):
            scale = got["weight_scale"]
            if not bool(torch.isfinite(scale).all() and (scale > 0).all()):
                errors.append(f"{prefix}weight_scale: scales must be finite and > 0")
                return
            # copies: the packed weight keeps its source alive, which would otherwise pin the
            # whole memory-mapped checkpoint file
            q, scale = got["weight_int8"].cpu().clone(), got["weight_scale"].cpu().clone()
            bias = got.get("bias")
            self._pack(q, scale, None if bias is None else bias.cpu().clone())

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 dynamic"
