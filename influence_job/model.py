"""The model stage: a local Hugging Face causal LM, or a built-in Qwen2 with seeded random weights.

No weights are ever downloaded: built-in models come from a config and a seed, real checkpoints from a
local directory. Parameters are frozen; the capture stage makes the input embeddings require grad, so
the backward pass computes activation gradients only (no weight-gradient GEMMs, no .grad memory).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from influence_job.config import ModelConfig
from influence_job.errors import InputError
from influence_job.tokenizer import byte_level_tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}

TINY_QWEN2 = dict(
    vocab_size=320,
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    tie_word_embeddings=True,
    bos_token_id=256,
    eos_token_id=256,
    pad_token_id=256,
)


def qwen2_1_5b_config_dict() -> dict:
    """Qwen2.5-1.5B's architecture (shapes only), shipped with the package."""
    text = resources.files("influence_job").joinpath("models/qwen2.5-1.5b.json").read_text()
    return json.loads(text)


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object | None  # a Hugging Face tokenizer, or None when the directory has none
    name: str
    max_length: int


def builtin_model(name: str, dtype: torch.dtype, seed: int, attn: str = "sdpa") -> nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if name == "tiny-qwen2":
        cfg = Qwen2Config(**TINY_QWEN2)
    elif name == "qwen2.5-1.5b-random":
        fields = {k: v for k, v in qwen2_1_5b_config_dict().items() if k != "architectures"}
        cfg = Qwen2Config(**fields)
    else:
        raise InputError(f"unknown built-in model {name!r}; choose tiny-qwen2 or qwen2.5-1.5b-random")
    cfg._attn_implementation = attn
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(cfg)
    return model.to(dtype)


def _load_directory(path: Path, dtype: torch.dtype, attn: str) -> nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    if not path.exists():
        raise InputError(f"model.path {path} does not exist. Point it at a local Hugging Face model directory.")
    if not (path / "config.json").is_file():
        raise InputError(
            f"model.path {path} has no config.json, so it is not a Hugging Face model directory. "
            "Save the model with save_pretrained(), or use model.builtin: tiny-qwen2."
        )
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"model.path {path}: config.json cannot be read by transformers ({exc}).") from None
    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn)
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc) or "AutoModelForCausalLM" in str(exc):
            raise InputError(
                f"model.path {path} holds a {type(config).__name__} ({config.model_type}), which is not a "
                "causal language model. The diagnostic needs a decoder-only LM (AutoModelForCausalLM)."
            ) from None
        raise InputError(f"model.path {path} cannot be loaded: {exc}") from None
    except OSError as exc:
        raise InputError(f"model.path {path}: weights cannot be loaded ({exc}).") from None


def _load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError):
        return None


def load_model(cfg: ModelConfig, device: torch.device) -> LoadedModel:
    dtype = DTYPES[cfg.dtype]
    if cfg.builtin is not None:
        model = builtin_model(cfg.builtin, dtype, cfg.seed, cfg.attn_implementation)
        tokenizer, name = byte_level_tokenizer(), cfg.builtin
    else:
        model = _load_directory(cfg.path, dtype, cfg.attn_implementation)
        tokenizer, name = _load_tokenizer(cfg.path), str(cfg.path)
    model.eval().requires_grad_(False).to(device)
    max_length = int(getattr(model.config, "max_position_embeddings", 0) or 0) or 10**9
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, max_length=max_length)


def select_modules(model: nn.Module, patterns: list[str]) -> list[tuple[str, nn.Linear]]:
    """Every nn.Linear whose qualified name contains one of ``patterns``, in model order."""
    chosen = [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, nn.Linear) and any(p in name for p in patterns)
    ]
    if not chosen:
        linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][:6]
        raise InputError(
            f"no linear module's name contains any of {patterns}. The model's linear modules are named "
            f"like {linear}; set `modules` to substrings of those names."
        )
    return chosen


def module_kind(name: str, patterns: list[str]) -> str:
    """The configured pattern a module matched: groups modules of one kind across layers."""
    return next((p for p in patterns if p in name), name.rsplit(".", 1)[-1])


def layer_index(name: str) -> int | None:
    parts = name.split(".")
    for a, b in zip(parts, parts[1:], strict=False):
        if a == "layers" and b.isdigit():
            return int(b)
    return None
