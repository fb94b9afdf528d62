"""The workload a plan prices: the model's shape (read on PyTorch's meta device, no weights) and the data's token
counts, per module and per response."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from influence_job.inputs.data import configured_dataset
from influence_job.inputs.model import DTYPES, choose_unprojected, layer_index, module_kind, open_model, select_modules
from influence_job.maths.capture import kept_rows
from influence_job.maths.projection import Dims, projected_dims


@dataclass(frozen=True)
class ModuleShape:
    name: str
    kind: str
    layer: int | None
    dims: Dims


@dataclass
class Workload:
    """Everything the estimates need, read from the configuration, the model config and the data."""

    model: str
    model_dtype: str
    params: int
    linear_madds_per_token: int  # Σ over every nn.Linear (lm_head included) of d_in·d_out
    layers: int
    hidden: int
    intermediate: int
    kv_dim: int
    heads: int
    vocab: int
    modules: list[ModuleShape]
    prompt_of: np.ndarray  # (N,) prompt index of each response
    seq_lengths: np.ndarray  # (N,) prompt + response tokens
    kept: np.ndarray  # (N,) positions whose factors are kept (all positions, or the response's)
    n_prompts: int
    unprojected: str | None = None


def workload(cfg) -> Workload:
    """Read the model's shape (meta device, no weights) and the data's token counts for ``cfg``."""
    source = open_model(cfg.model)
    ds = configured_dataset(cfg, source)
    return workload_of(cfg, source.name, source.config, ds, _meta_model(source.config, DTYPES[cfg.model.dtype]))


def workload_of(cfg, name: str, config, ds, model) -> Workload:
    """The Workload of a loaded (or meta) ``model`` with configuration ``config`` on the dataset ``ds``."""
    selected = select_modules(model, cfg.modules)
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    c = config
    heads = int(getattr(c, "num_attention_heads", 1))
    head_dim = int(getattr(c, "head_dim", None) or c.hidden_size // heads)
    names = [n for n, _ in selected]
    return Workload(
        model=name, model_dtype=cfg.model.dtype,
        params=sum(p.numel() for p in model.parameters()),
        linear_madds_per_token=sum(m.in_features * m.out_features for m in linear),
        layers=int(c.num_hidden_layers), hidden=int(c.hidden_size),
        intermediate=int(getattr(c, "intermediate_size", 4 * c.hidden_size)),
        kv_dim=int(getattr(c, "num_key_value_heads", heads)) * head_dim, heads=heads, vocab=int(c.vocab_size),
        modules=[ModuleShape(n, module_kind(n, cfg.modules), layer_index(n),
                             projected_dims(m.in_features, m.out_features, cfg.projection)) for n, m in selected],
        prompt_of=np.array([r.prompt_index for r in ds.responses]),
        seq_lengths=np.array([r.length for r in ds.responses]),
        kept=kept_rows(ds, cfg.positions),
        n_prompts=len(ds.prompt_ids),
        unprojected=choose_unprojected(cfg.diagnostics.unprojected_module, names),
    )


def _meta_model(config, dtype):
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=dtype)
