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

from influence_job.base.errors import InputError
from influence_job.inputs.config import ModelConfig
from influence_job.inputs.tokenizer import byte_level_tokenizer

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
class ModelSource:
    """What is known before any weight is loaded: enough to validate the data first."""

    config: object  # a transformers PretrainedConfig
    tokenizer: object | None  # a Hugging Face tokenizer, or None when the directory has none
    name: str

    @property
    def vocab_size(self) -> int:
        return int(self.config.vocab_size)

    @property
    def max_length(self) -> int:
        return int(getattr(self.config, "max_position_embeddings", 0) or 0) or 10**9


def builtin_config(name: str):
    from transformers import Qwen2Config

    if name == "tiny-qwen2":
        return Qwen2Config(**TINY_QWEN2)
    if name == "qwen2.5-1.5b-random":
        return Qwen2Config(**{k: v for k, v in qwen2_1_5b_config_dict().items() if k != "architectures"})
    raise InputError(f"unknown built-in model {name!r}; choose tiny-qwen2 or qwen2.5-1.5b-random")


def open_model(cfg: ModelConfig) -> ModelSource:
    """Read the model's configuration and tokenizer (no weights), checking the directory is a causal LM."""
    if cfg.builtin is not None:
        return ModelSource(builtin_config(cfg.builtin), byte_level_tokenizer(), cfg.builtin)
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    path = cfg.path
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
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise InputError(
            f"model.path {path} holds a {config.model_type!r} model, which is not a causal language model. "
            "The diagnostic needs a decoder-only LM that AutoModelForCausalLM loads (e.g. Qwen2, Llama)."
        )
    return ModelSource(config, _load_tokenizer(path), str(path))


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def _load_tokenizer(path: Path):
    """The directory's tokenizer, or None when it ships none (transformers would build an empty one)."""
    from transformers import AutoTokenizer

    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        return None
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError):
        return None


def load_model(cfg: ModelConfig, source: ModelSource, device: torch.device) -> nn.Module:
    """The weights: seeded random for built-ins, from_pretrained for a directory; frozen, in eval mode."""
    from transformers import AutoModelForCausalLM, Qwen2ForCausalLM
    from transformers.utils import logging as hf_logging

    dtype = DTYPES[cfg.dtype]
    if cfg.builtin is not None:
        source.config._attn_implementation = cfg.attn_implementation
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = Qwen2ForCausalLM(source.config).to(dtype)
    else:
        hf_logging.disable_progress_bar()  # the job reports its own progress
        try:
            model = AutoModelForCausalLM.from_pretrained(
                cfg.path, dtype=dtype, attn_implementation=cfg.attn_implementation
            )
        except (OSError, ValueError) as exc:
            raise InputError(f"model.path {cfg.path}: the weights cannot be loaded ({exc}).") from None
    return model.eval().requires_grad_(False).to(device)


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


def choose_unprojected(setting: str | None, names: list[str]) -> str | None:
    """The module of diagnostics.unprojected_module: 'auto' is the middle layer's k_proj (else that layer's first
    selected module), a name must be among the selected modules ``names``, None disables the comparison."""
    if setting is None:
        return None
    if setting != "auto":
        if setting not in names:
            raise InputError(
                f"diagnostics.unprojected_module {setting!r} is not among the selected modules; use one of "
                f"{names[:3]}... or 'auto', or null to disable the comparison."
            )
        return setting
    layers = [layer_index(n) for n in names if layer_index(n) is not None]
    if not layers:
        return names[0]
    middle = (max(layers) + 1) // 2
    in_middle = [n for n in names if layer_index(n) == middle] or names
    return next((n for n in in_middle if "k_proj" in n), in_middle[0])
