"""The capture stage: one forward and one backward pass per micro-batch, hooks on the selected modules.

For each selected module and each captured position t the hooks record the projected factors
v_t = P_in x_t (forward) and u_t = P_out δ_t (backward), never a per-token D-vector. The exact
projected gradient of response r is G_r = Σ_{t∈r} u_t v_tᵀ (float64), one batched product per
micro-batch. Rows of U and V are stored response by response in input order, positions in order, written
in place into storage allocated once (the row counts are known from the data before the first batch).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from influence_job.base.errors import InputError
from influence_job.inputs.data import Dataset, micro_batches
from influence_job.inputs.model import DTYPES, layer_index, module_kind
from influence_job.maths.projection import Dims, projected_dims, projection_matrices

log = logging.getLogger(__name__)


@dataclass
class ModuleFactors:
    """Everything the later stages need about one module, in float64 (G) or factor dtype (U, V)."""

    name: str
    kind: str
    layer: int | None
    dims: Dims
    G: torch.Tensor  # (N, k_out*k_in) float64: vec(Σ_t u_t v_tᵀ), row-major over (k_out, k_in)
    U: torch.Tensor  # (T, k_out) per-position output-gradient factors
    V: torch.Tensor  # (T, k_in) per-position input factors


@dataclass
class Capture:
    modules: list[ModuleFactors]
    row_offsets: np.ndarray  # (N+1,): rows of response r are [row_offsets[r], row_offsets[r+1])
    row_token: torch.Tensor  # (T,) index of the response token this position predicts, or -1
    entropy: list[np.ndarray]  # per response: policy entropy at each response token's position
    log_prob: np.ndarray  # (N,) L_r
    n_positions: int  # real (unpadded) positions processed
    unprojected_name: str | None = None
    unprojected: torch.Tensor | None = None  # (N, d_out*d_in) float64 exact gradients of one module


@dataclass
class Batch:
    index: list[int]  # response indices (input order) in this micro-batch
    input_ids: torch.Tensor
    attention: torch.Tensor
    keep: torch.Tensor  # positions summed into the response gradient
    predict: torch.Tensor  # positions whose logits predict a response token
    weight: torch.Tensor  # objective weight per sequence: 1 or A_r
    dest: torch.Tensor  # the factor rows (input order) of the kept positions, sequence by sequence
    keep_flat: torch.Tensor  # the kept positions as indices into (sequence × position): no mask sync in hooks
    keep_cpu: torch.Tensor
    predict_cpu: torch.Tensor


def kept_rows(ds: Dataset, positions: str) -> np.ndarray:
    """Factor rows per response: every position of its sequence, or the positions that predict its tokens."""
    return np.array([r.length if positions == "all" else len(r.response_ids) for r in ds.responses], dtype=np.int64)


def make_batch(ds: Dataset, index: list[int], positions: str, objective: str, offsets: np.ndarray,
                device) -> Batch:
    seqs = [ds.responses[i].prompt_ids + ds.responses[i].response_ids for i in index]
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    attention = torch.zeros(len(seqs), width, dtype=torch.long)
    predict = torch.zeros(len(seqs), width, dtype=torch.bool)
    for b, (i, s) in enumerate(zip(index, seqs, strict=True)):
        ids[b, : len(s)] = torch.tensor(s)
        attention[b, : len(s)] = 1
        p = len(ds.responses[i].prompt_ids)
        predict[b, p - 1 : len(s) - 1] = True
    keep = attention.bool() if positions == "all" else predict
    weight = torch.tensor(
        [ds.responses[i].advantage if objective == "advantage_log_prob" else 1.0 for i in index],
        dtype=torch.float64,
    )
    dest = torch.cat([torch.arange(offsets[i], offsets[i + 1]) for i in index])
    keep_flat = torch.nonzero(keep.flatten()).flatten()
    return Batch(index, ids.to(device), attention.to(device), keep.to(device), predict.to(device), weight.to(device),
                  dest.to(device), keep_flat.to(device), keep, predict)


class _Hooks:
    """Forward/backward hooks that turn activations and output gradients into u, v factors."""

    def __init__(self, selected, patterns, proj_cfg, n, n_rows, dtype, factor_dtype, device, unprojected_name):
        self.factor_dtype = factor_dtype
        self.unprojected_name = unprojected_name
        self.entries = []
        self.handles = []
        for name, mod in selected:
            dims = projected_dims(mod.in_features, mod.out_features, proj_cfg)
            mats = projection_matrices(name, dims, proj_cfg)
            if mats is not None:
                mats = tuple(m.to(device=device, dtype=dtype) for m in mats)
            entry = dict(
                name=name, kind=module_kind(name, patterns), dims=dims, proj=mats,
                G=torch.zeros(n, dims.k_out * dims.k_in, dtype=torch.float64, device=device),
                # Preallocated: each micro-batch writes its rows in place (no per-batch pieces, no concatenation).
                U=torch.empty(n_rows, dims.k_out, dtype=factor_dtype, device=device),
                V=torch.empty(n_rows, dims.k_in, dtype=factor_dtype, device=device),
                raw=None,
            )
            if name == unprojected_name:
                entry["raw"] = torch.zeros(n, mod.out_features * mod.in_features, dtype=torch.float64, device=device)
            self.entries.append(entry)
            self.handles.append(mod.register_forward_hook(self._forward(entry)))
        self.batch: Batch | None = None

    def _forward(self, entry):
        def hook(_mod, inputs, output):
            x = inputs[0].detach()
            v = x if entry["proj"] is None else x @ entry["proj"][0].T
            # Only the unprojected comparison's module needs x in its backward hook; any other reference would
            # keep every module's input alive until its backward (the model's weights take no gradient, so
            # autograd itself does not keep them).
            output.register_hook(self._backward(entry, x if entry["raw"] is not None else None, v))

        return hook

    def _backward(self, entry, x, v):
        def hook(grad):
            b = self.batch
            u = grad if entry["proj"] is None else grad @ entry["proj"][1].T
            keep = b.keep.unsqueeze(-1)
            per_seq = torch.einsum("bso,bsi->boi", (u * keep).double(), v.double())
            entry["G"][b.index] = per_seq.reshape(len(b.index), -1)
            entry["U"].index_copy_(0, b.dest, u.flatten(0, 1).index_select(0, b.keep_flat).to(self.factor_dtype))
            entry["V"].index_copy_(0, b.dest, v.flatten(0, 1).index_select(0, b.keep_flat).to(self.factor_dtype))
            if entry["raw"] is not None:
                full = torch.einsum("bso,bsi->boi", (grad * keep).double(), x.double())
                entry["raw"][b.index] = full.reshape(len(b.index), -1)

        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


SOFTMAX_CHUNK_ELEMENTS = 2**26  # vocabulary entries of one chunk of token_log_probs (256 MiB in float32)


def token_log_probs(logits: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """log π of each next token at every position, and the policy entropy there (no grad).

    In position chunks: log π(y) = x_y − logsumexp(x) and H = logsumexp(x) − Σ softmax(x)·x, so that neither a
    full log-softmax nor its exponential over the vocabulary is ever held (two T×V float32 arrays, ≈ 10 GB per
    8,192-token micro-batch at Qwen2's 151,936 tokens); for a float32 model the autograd graph keeps only the
    logits it already has and one value per position.
    """
    x, y = logits[:, :-1], batch.input_ids[:, 1:]
    wide = torch.promote_types(logits.dtype, torch.float32)
    step = max(1, SOFTMAX_CHUNK_ELEMENTS // max(1, x.shape[0] * x.shape[-1]))
    targets, entropies = [], []
    for s in range(0, x.shape[1], step):
        c = x[:, s:s + step].to(wide)
        lse = torch.logsumexp(c, dim=-1)
        targets.append(c.gather(-1, y[:, s:s + step].unsqueeze(-1)).squeeze(-1) - lse)
        with torch.no_grad():
            entropies.append(lse - (torch.softmax(c, dim=-1) * c).sum(-1))
    return torch.cat(targets, dim=1), torch.cat(entropies, dim=1)


def capture(
    model: nn.Module,
    selected: list[tuple[str, nn.Linear]],
    ds: Dataset,
    cfg,
    device: torch.device,
    unprojected_name: str | None = None,
    progress=None,
) -> Capture:
    """Run every micro-batch forward and backward once and return the per-module factors."""
    dtype = next(model.parameters()).dtype
    factor_dtype = DTYPES[cfg.compute.factor_dtype]
    if dtype == torch.float64:
        factor_dtype = torch.float64  # an exact float64 run keeps exact factors
    n = ds.n
    offsets = np.concatenate([[0], np.cumsum(kept_rows(ds, cfg.positions))]).astype(np.int64)
    hooks = _Hooks(selected, cfg.modules, cfg.projection, n, int(offsets[-1]), dtype, factor_dtype, device,
                   unprojected_name)
    embed = model.get_input_embeddings()
    row_token = torch.full((int(offsets[-1]),), -1, dtype=torch.long)
    entropy: list[np.ndarray] = [np.empty(0)] * n
    log_prob = np.zeros(n)
    n_positions = 0
    batches = micro_batches([r.length for r in ds.responses], cfg.compute.micro_batch_tokens)
    try:
        for k, index in enumerate(batches):
            b = make_batch(ds, index, cfg.positions, cfg.objective, offsets, device)
            hooks.batch = b
            ent_cpu, per_seq_cpu = _forward_backward(model, embed, b, ds, index)
            for j, i in enumerate(index):
                p = len(ds.responses[i].prompt_ids)
                kept = torch.nonzero(b.keep_cpu[j]).flatten()
                row_token[offsets[i]:offsets[i + 1]] = (kept - (p - 1)).where(b.predict_cpu[j, kept], -1)
                entropy[i] = ent_cpu[j, b.predict_cpu[j, :-1]].numpy()
                log_prob[i] = float(per_seq_cpu[j])
            n_positions += int(b.attention.sum())
            if progress:
                progress(k + 1, len(batches), len(index), int(b.attention.sum()))
    finally:
        hooks.remove()
    modules = [_module_factors(e, ds) for e in hooks.entries]
    raw = next((e["raw"] for e in hooks.entries if e["raw"] is not None), None)
    return Capture(
        modules=modules,
        row_offsets=offsets,
        row_token=row_token,
        entropy=entropy,
        log_prob=log_prob,
        n_positions=n_positions,
        unprojected_name=unprojected_name if raw is not None else None,
        unprojected=raw,
    )


def _forward_backward(model: nn.Module, embed, b: Batch, ds: Dataset, index: list[int]):
    """One micro-batch forward and backward (the hooks take its factors); returns its entropies and per-sequence
    log-probabilities on the CPU. A function of its own so that nothing of the batch's graph lives into the next
    batch's forward: its logits alone are micro_batch_tokens × vocabulary values."""
    embeds = embed(b.input_ids).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeds, attention_mask=b.attention, use_cache=False).logits
    target, ent = token_log_probs(logits, b)
    pred = b.predict[:, :-1]
    per_seq = (target * pred).sum(-1)
    if not torch.isfinite(per_seq).all():
        bad = [ds.responses[index[i]].response_id for i in torch.nonzero(~torch.isfinite(per_seq)).flatten()]
        raise InputError(_nonfinite_message(f"log-probabilities of responses {bad[:5]}"))
    (per_seq.double() * b.weight).sum().backward()
    return ent.double().cpu(), per_seq.detach().double().cpu().numpy()  # one copy each


def _module_factors(entry: dict, ds: Dataset) -> ModuleFactors:
    """A module's captured factors, refused when its gradients hold a NaN or Inf (named by response)."""
    if not torch.isfinite(entry["G"]).all():
        bad = torch.nonzero(~torch.isfinite(entry["G"]).all(-1)).flatten().tolist()
        raise InputError(_nonfinite_message(f"gradients of module {entry['name']} for responses "
                                            f"{[ds.responses[i].response_id for i in bad[:5]]}"))
    return ModuleFactors(entry["name"], entry["kind"], layer_index(entry["name"]), entry["dims"], entry["G"],
                         entry["U"], entry["V"])


def _nonfinite_message(what: str) -> str:
    return (
        f"non-finite values (NaN or Inf) in the {what}. The model produces them on this input: check the "
        "checkpoint's weights for NaN/Inf, and use model.dtype: float32 if a half-precision run overflows."
    )
