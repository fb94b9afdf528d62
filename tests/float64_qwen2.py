"""A Qwen2 that computes in float64 throughout, so that exact comparisons are exact on every CPU.

Why: Hugging Face's Qwen2 keeps three operations in float32 even in a float64 model — RMSNorm, the
rotary angles' cos/sin, and the eager attention softmax. Their vectorised float32 kernels round an element
differently depending on where it falls in the tensor (e.g. AVX-512 lanes against a scalar tail), so padding
a sequence into a micro-batch moves a float64 run by ~1e-7 relative on AVX-512 CPUs while AVX2 happens to
agree. That noise is nine orders above float64 rounding and would hide real engine errors behind loose
tolerances. With these three operations in the model's own dtype, a padded float64 run and an unpadded
float64 reference differ by float64 rounding only, whatever kernels PyTorch picks.

The patch changes nothing for float32/bfloat16 models (the computation dtype is max(model dtype, float32),
as in the originals) and raises if transformers renames what it replaces, instead of silently not patching.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn
from transformers.models.qwen2 import modeling_qwen2 as qwen2


def _wide(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def rms_norm_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    input_dtype = hidden_states.dtype
    hidden_states = hidden_states.to(_wide(input_dtype))
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
    return self.weight * hidden_states.to(input_dtype)


def rotary_forward(self, x: torch.Tensor, position_ids: torch.Tensor):
    dtype = _wide(x.dtype)
    freqs = position_ids[..., None].to(dtype) * self.inv_freq.to(device=x.device, dtype=dtype)
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * self.attention_scaling).to(x.dtype), (emb.sin() * self.attention_scaling).to(x.dtype)


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    key_states = qwen2.repeat_kv(key, module.num_key_value_groups)
    value_states = qwen2.repeat_kv(value, module.num_key_value_groups)
    attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=_wide(query.dtype)).to(query.dtype)
    attn_output = torch.matmul(attn_weights, value_states).transpose(1, 2).contiguous()
    return attn_output, attn_weights


PATCHES = (
    (qwen2.Qwen2RMSNorm, "forward", rms_norm_forward),
    (qwen2.Qwen2RotaryEmbedding, "forward", rotary_forward),
    (qwen2, "eager_attention_forward", eager_attention_forward),
)


def apply() -> None:
    """Patch for the rest of the process (the subprocess launcher uses this)."""
    for owner, name, new in PATCHES:
        getattr(owner, name)  # AttributeError if transformers no longer has it
        setattr(owner, name, new)


@contextmanager
def float64_qwen2():
    """Patch within the block, restoring the originals afterwards."""
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in PATCHES]
    apply()
    try:
        yield
    finally:
        for owner, name, old in saved:
            setattr(owner, name, old)
