"""What one module's work costs: its factorisations (maths.schedule, as the engine runs them) priced with a
device's rates, its diagnostics, and a micro-batch's capture; the estimates a plan and the run's rank assignment
share."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from influence_job.inputs.data import micro_batches
from influence_job.inputs.model import DTYPES
from influence_job.maths.diagnostics import similarity_estimates, similarity_side
from influence_job.maths.projection import Dims
from influence_job.maths.routes import RouteEstimate, pick_route, refine_steps, resolve_gram_dtype, route_estimates
from influence_job.maths.rows import token_gram_width
from influence_job.maths.schedule import Executed, Factorisation, mixed_label, module_schedule
from influence_job.planning.profiles import DeviceProfile
from influence_job.planning.workload import Workload


@dataclass
class ModuleEstimate:
    """One module's curvature and solves, priced: the route label and why, flops, seconds, the largest working
    set, and each factorisation as the engine would run it."""

    route: str
    why: str
    flops: float
    seconds: float
    peak_bytes: int
    factorisations: list[Executed]


def schedule_of(cfg, prompt_bounds: list[tuple[int, int]], token_offsets: np.ndarray) -> list[Factorisation]:
    """The factorisations of every module (the same for all: the rows are the kept positions) for prompts whose
    responses are ``prompt_bounds`` and responses whose kept positions are [token_offsets[r], token_offsets[r+1])."""
    offsets = token_offsets if cfg.curvature.source == "token" else np.arange(len(token_offsets))
    return module_schedule(prompt_bounds, offsets, cfg.curvature.scope, cfg.influence.enabled)


def module_estimate(dims: Dims, schedule: list[Factorisation], cfg, rate=lambda kind: 1.0,
                    limit_bytes: float | None = None, on_gpu: bool = False) -> ModuleEstimate:
    """One module's curvature and solves: each factorisation of ``schedule`` with the route the engine would pick
    for it (curvature.pick_route on the same estimates, the Gram dtype resolved as factor() does), timed with the
    device's ``rate``, plus the RAW Gram G Gᵀ."""
    token = cfg.curvature.source == "token"
    N = max(f.responses[1] for f in schedule)
    row_dim = dims.k_in + dims.k_out if token else dims.D
    width = token_gram_width(dims.k_out, dims.k_in) if token else dims.D * dims.D

    def one(f: Factorisation) -> tuple[str, str, RouteEstimate, float]:
        gram = resolve_gram_dtype(cfg.compute.gram_dtype, on_gpu, f.size, dims.D, width, f.n_rhs, f.quad)

        def seconds(e: RouteEstimate) -> float:
            return (e.gram_flops / rate(gram) + e.fp64_flops / rate("float64")
                    + e.factor_flops / rate("float64_factor"))

        est = route_estimates(f.size, dims.D, row_dim, width, f.n_rhs, token, cfg.compute.token_chunk,
                              refine_steps(token, gram, f.quad))
        route, why = pick_route(est, cfg.curvature.solver, limit_bytes, seconds)
        return route, why, est[route], seconds(est[route])

    runs = [one(f) for f in schedule]
    route, why, _, _ = runs[0]
    routes = [r for r, _, _, _ in runs]
    if len(set(routes)) > 1:
        route, why = mixed_label(routes), why + "; per prompt: " + "/".join(sorted(set(routes)))
    return ModuleEstimate(
        route=route, why=why,
        flops=sum(e.flops for _, _, e, _ in runs) + 2.0 * N * N * dims.D,  # + the RAW Gram G Gᵀ
        seconds=sum(t for _, _, _, t in runs) + 2.0 * N * N * dims.D / rate("float64"),
        peak_bytes=max(e.peak_bytes for _, _, e, _ in runs),
        factorisations=[Executed(f.size, f.n_rhs, f.quad, r) for f, r in zip(schedule, routes, strict=True)],
    )


def module_seconds(cfg, dims: Dims, schedule: list[Factorisation], similarity: bool, unprojected: bool,
                   prompt_rows: list[int], prompt_responses: list[int], profile: DeviceProfile,
                   limit_bytes: float | None = None) -> tuple[ModuleEstimate, float]:
    """A module's estimate and its diagnostics' flops: what a plan reports and what ranks are balanced by (in time,
    not flops: TF32 Gram products and float64 diagnostics run at different rates)."""
    est = module_estimate(dims, schedule, cfg, profile.rate, limit_bytes, profile.gpu)
    return est, diagnostic_flops(cfg, dims, similarity, unprojected, prompt_rows, prompt_responses, limit_bytes)


def module_costs(cfg, modules, unprojected: str | None, row_offsets: np.ndarray,
                 prompt_bounds: list[tuple[int, int]], sim_layers: set, profile: DeviceProfile) -> list[float]:
    """The seconds a run balances its ranks by: each module's (anything with ``dims``, ``layer`` and ``name``)
    estimated solves and diagnostics on ``profile``, for responses whose kept rows are given by ``row_offsets``
    (N+1) and grouped into prompts by ``prompt_bounds``."""
    schedule = schedule_of(cfg, prompt_bounds, row_offsets)
    rows = [int(row_offsets[e] - row_offsets[s]) for s, e in prompt_bounds]
    responses = [e - s for s, e in prompt_bounds]
    out = []
    for m in modules:
        est, diag_flops = module_seconds(cfg, m.dims, schedule, runs_similarity(cfg, m.layer, sim_layers, len(rows)),
                                         m.name == unprojected, rows, responses, profile)
        out.append(est.seconds + diag_flops / profile.rate("float64"))
    return out


def factor_bytes(dims: Dims, rows: int, responses: int, itemsize: int) -> int:
    """A module's per-position factors U, V (``itemsize`` bytes each) and its float64 response gradients G."""
    return rows * (dims.k_in + dims.k_out) * itemsize + responses * dims.D * 8


def diagnostic_flops(cfg, dims: Dims, similarity: bool, unprojected: bool, prompt_rows: list[int],
                     prompt_responses: list[int], limit_bytes: float | None = None) -> float:
    """Flops of one module's diagnostics, run beside its solves: the curvature similarity (``similarity``: the
    module is in the similarity's layers and there are two prompts or more), by the side the engine takes, and the
    unprojected comparison (``unprojected``: it is the comparison's module) — its exact Gram and the sketch
    bound's d_out² and d_in² Grams."""
    flops = 0.0
    if similarity:
        token = cfg.curvature.source == "token"
        rows = prompt_rows if token else prompt_responses
        row_dim = dims.k_in + dims.k_out if token else dims.D
        flops += similarity_estimates(rows, dims.D, row_dim)[similarity_side(rows, dims.D, row_dim, limit_bytes)][0]
    if unprojected:
        N = sum(prompt_responses)
        flops += 2.0 * N * N * dims.d_in * dims.d_out + 2.0 * N * dims.d_out * dims.d_in * (dims.d_out + dims.d_in)
    return flops


def runs_similarity(cfg, layer: int | None, layers: set, n_prompts: int) -> bool:
    """Whether a module of ``layer`` gets the curvature similarity: it is on, the layer is one of ``layers``
    (similarity_layers) and there are two prompts or more to compare."""
    return cfg.diagnostics.curvature_similarity and layer in layers and n_prompts > 1


def similarity_layers(cfg, module_layers) -> set:
    """The layers whose modules the curvature similarity runs on: the middle one, or all (or all when modules have
    no layer)."""
    layers = set(module_layers)
    if cfg.diagnostics.curvature_similarity_layers == "all" or None in layers:
        return layers
    return {(max(layers) + 1) // 2}


def capture_flops(work: Workload, ranks_resp: np.ndarray, micro_batch_tokens: int,
                   score_copies: int) -> tuple[float, float, float, int]:
    """(model flops in the model's dtype, float64 hook flops, largest activation bytes of one micro-batch, number
    of micro-batches) of one rank's capture."""
    lengths = work.seq_lengths[ranks_resp]
    padded, attention, largest = 0, 0.0, 0.0
    batches = micro_batches(lengths.tolist(), micro_batch_tokens)
    for batch in batches:
        width = int(max(lengths[i] for i in batch))
        padded += width * len(batch)
        attention += len(batch) * width * width
        largest = max(largest, activation_bytes(work, width * len(batch),
                                                score_copies * len(batch) * width * width))
    # Forward and backward (input gradients only: the weights are frozen) of every linear map; attention scores
    # and values, forward (2·s²·d multiply-adds per layer) and backward (twice that).
    model = 2.0 * 2 * padded * work.linear_madds_per_token + 2.0 * 6 * attention * work.hidden * work.layers
    kept = int(work.kept[ranks_resp].sum())
    hooks = sum(2.0 * padded * (m.dims.d_in * m.dims.k_in + m.dims.d_out * m.dims.k_out) for m in work.modules)
    grads = sum(2.0 * kept * m.dims.D for m in work.modules)  # G's float64 per-sequence products
    return model + hooks, grads, largest, len(batches)


def activation_bytes(work: Workload, tokens: int, score_entries: int = 0) -> float:
    """Autograd's saved tensors for one micro-batch of ``tokens`` padded positions with frozen weights: per layer
    and token the two RMSNorm inputs, attention's q, k, v and output, the MLP's gate and up outputs and their
    activation (4·hidden + 2·kv + 3·intermediate values in the model's dtype); the logits, their float32 copy
    that logsumexp keeps, and the logits' gradient (vocabulary × (2·model bytes + 4) per position). Where the
    attention kernel keeps its probabilities (eager attention, and PyTorch's CPU kernel for a padding mask) also
    heads × Σ s² per layer (``score_entries``: Σ over the batch's sequences of s², padded, times the copies
    held: one for the CPU sdpa kernel, three for eager attention, as tests/planning/test_plan.py's memory probe
    finds)."""
    mb = DTYPES[work.model_dtype].itemsize
    per_layer = (4 * work.hidden + 2 * work.kv_dim + 3 * work.intermediate) * mb
    logits = work.vocab * (2 * mb + 4)
    return tokens * (work.layers * per_layer + logits) + score_entries * work.heads * work.layers * mb
