"""The cost and memory planner: what a configuration will cost, per phase and per rank, before it runs.

From the model's configuration (no weights: the model is built on PyTorch's meta device) and the data's token
counts, it counts each phase's flops and bytes, the peak device and host memory, and an estimated time on a
device profile; it picks each module's route with the same estimates the engine uses (curvature.route_estimates,
diagnostics.similarity_estimates), assigns modules to ranks as the engine does (distributed.assign_modules), and
warns when something will not fit — with the settings that would.

Estimated time is flops ÷ the profile's rate for that kind of work, a floor that ignores launch overheads and
Python: close at full size, an underestimate for tiny models (bench/default_diagnostic.py prints both).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from influence_job.curvature import (
    RouteEstimate,
    pick_route,
    refine_steps,
    resolve_gram_dtype,
    route_estimates,
    token_gram_width,
)
from influence_job.diagnostics import similarity_estimates, similarity_side
from influence_job.distributed import assign_modules, shard_prompts
from influence_job.memory import meminfo_bytes, rss_bytes
from influence_job.model import DTYPES
from influence_job.projection import Dims, projected_dims

GiB = 2**30
TB = 1e12


@dataclass(frozen=True)
class DeviceProfile:
    """Sustained rates (flop/s) per kind of work, memory, and where the figures come from."""

    name: str
    memory_bytes: float
    rates: dict  # float64 (GEMM), float64_factor (Cholesky), float32, tf32, bfloat16, float16
    host_overhead_bytes: float  # host memory a process on this device holds beyond its arrays (CUDA context)
    source: str
    gpu: bool = True
    timed: bool = True  # False: rates not measured (all 1, so a route is picked by flops, as the engine does)

    def rate(self, kind: str) -> float:
        return self.rates[kind]


# H100 and H200 share the GH100 chip, so the same rates; they differ in memory. Rates: DESIGN.md §2's H200
# measurements (Cholesky D = 13,440 in 26 ms: 31 TF; the Gram GᵀG of 32,768 × 13,440 rows in 219 ms float32,
# 52 ms TF32, 17 ms bfloat16: 54, 227 and 695 TF); the float64 GEMM rate is 85 % of the 67 TF float64 tensor-core
# peak, an assumption no session has measured yet (bench/gpu.sh measures it).
_GH100_RATES = {"float64": 0.85 * 67 * TB, "float64_factor": 31 * TB, "float32": 54 * TB, "tf32": 227 * TB,
                "bfloat16": 695 * TB, "float16": 695 * TB}
PROFILES = {
    "h200": DeviceProfile("h200", 143_771 * 2**20, _GH100_RATES, 1.0 * GiB,
                          "NVIDIA H200 (141 GB): rates from DESIGN.md's H200 measurements, float64 GEMM assumed"),
    "h100": DeviceProfile("h100", 81_559 * 2**20, _GH100_RATES, 1.0 * GiB,
                          "NVIDIA H100 SXM (80 GB): H200 rates (same chip), float64 GEMM assumed"),
}


def _median_seconds(fn, repeats: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


@functools.cache
def cpu_profile(measure: bool = True) -> DeviceProfile:
    """This machine's CPU, measured once per process (about a second): GEMM rates for each dtype at n = 1,024
    and a float64 Cholesky at n = 2,048 (small sizes understate the rates of large factorisations), and the host
    memory (MemTotal). ``measure=False``: the memory only, rates left at 1 (a plan of flops, no times), for a
    run that needs no times and should not spend the second."""
    if not measure:
        return DeviceProfile("cpu", meminfo_bytes("MemTotal") or float("inf"), dict.fromkeys(
            ("float64", "float64_factor", "float32", "tf32", "bfloat16", "float16"), 1.0), 0.0,
            "this machine's CPU, rates not measured", gpu=False, timed=False)
    n = 1024
    rates = {}
    for kind, dtype in (("float64", torch.float64), ("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        a = torch.randn(n, n, dtype=torch.float64).to(dtype)
        rates[kind] = 2 * n**3 / _median_seconds(lambda a=a: a @ a)
    rates["tf32"] = rates["float32"]
    rates["float16"] = rates["bfloat16"]
    m = 2048
    spd = torch.randn(m, m, dtype=torch.float64)
    spd = spd @ spd.T + m * torch.eye(m, dtype=torch.float64)
    rates["float64_factor"] = m**3 / 3 / _median_seconds(lambda: torch.linalg.cholesky(spd), repeats=1)
    return DeviceProfile("cpu", meminfo_bytes("MemTotal") or float("inf"), rates, 0.0,
                         f"this machine's CPU, {torch.get_num_threads()} threads, GEMM/Cholesky rates measured now",
                         gpu=False)


def profile(name: str) -> DeviceProfile:
    if name == "cpu":
        return cpu_profile()
    return PROFILES[name]


# --- the workload ------------------------------------------------------------------------------------------


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
    from influence_job.data import example_data_path, load_dataset
    from influence_job.model import open_model

    source = open_model(cfg.model)
    ds = load_dataset(cfg.data.path or example_data_path(), source.tokenizer, source.vocab_size, source.max_length,
                      cfg.data.accept_threshold, cfg.model.on_overflow, cfg.data.format,
                      cfg.data.columns.model_dump(exclude_none=True))
    return workload_of(cfg, source.name, source.config, ds, _meta_model(source.config, DTYPES[cfg.model.dtype]))


def workload_of(cfg, name: str, config, ds, model) -> Workload:
    """The Workload of a loaded (or meta) ``model`` with configuration ``config`` on the dataset ``ds``."""
    from influence_job.model import layer_index, module_kind, select_modules
    from influence_job.pipeline import choose_unprojected

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
        kept=np.array([r.length if cfg.positions == "all" else len(r.response_ids) for r in ds.responses]),
        n_prompts=len(ds.prompt_ids),
        unprojected=choose_unprojected(cfg.diagnostics.unprojected_module, names),
    )


def device_profile(device: torch.device, measure: bool = True) -> DeviceProfile:
    """The profile of the device a run is on: its GPU's (H100/H200 rates; the memory the GPU reports), or this
    CPU's, measured (``measure=False``: not, see cpu_profile)."""
    if device.type != "cuda":
        return cpu_profile(measure)
    props = torch.cuda.get_device_properties(device)
    base = PROFILES["h100" if "H100" in props.name else "h200"]
    return replace(base, name=props.name, memory_bytes=float(props.total_memory),
                   source=f"{props.name}: {base.source.split(': ', 1)[1]}")


def _meta_model(config, dtype):
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


# --- the plan ----------------------------------------------------------------------------------------------


@dataclass
class ModulePlan:
    name: str
    kind: str
    D: int
    route: str  # of the global (or, per_prompt scope, the first prompt's) factorisation
    why: str
    flops: float
    seconds: float
    peak_bytes: int  # working set of its largest factorisation
    factor_bytes: int  # its U, V (all positions) and G, held by its owner
    owner: int = 0
    diagnostic_flops: float = 0.0
    diagnostic_seconds: float = 0.0


@dataclass
class PhasePlan:
    phase: str
    rank: int
    flops: float
    bytes_moved: float
    peak_device_bytes: float
    peak_host_bytes: float
    seconds: float


INTERLEAVED = ("curvature_solve", "diagnostics")  # one loop per rank: a module's diagnostics follow its solves


@dataclass
class Plan:
    device: DeviceProfile
    ranks: int
    modules: list[ModulePlan]
    phases: list[PhasePlan]
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def seconds(self, phase: str | None = None) -> float:
        """Estimated wall time of a phase (its slowest rank) or of the run: ranks wait for each other between
        phases, except that each rank's diagnostics run in its curvature loop, module by module, so those two
        phases count as one (the slowest rank's sum)."""
        if phase:
            return max(p.seconds for p in self.phases if p.phase == phase)
        names = [n for n in dict.fromkeys(p.phase for p in self.phases) if n not in INTERLEAVED]
        loop: dict[int, float] = {}
        for p in self.phases:
            if p.phase in INTERLEAVED:
                loop[p.rank] = loop.get(p.rank, 0.0) + p.seconds
        return sum(self.seconds(n) for n in names) + max(loop.values(), default=0.0)

    def peak_device_bytes(self) -> float:
        return max(p.peak_device_bytes for p in self.phases)

    def peak_host_bytes(self) -> float:
        return max(p.peak_host_bytes for p in self.phases)

    def summary(self) -> str:
        """The one line `run` prints before it starts."""
        routes = {}
        for m in self.modules:
            routes[m.route] = routes.get(m.route, 0) + 1
        mem = (f"peak GPU {self.peak_device_bytes() / GiB:.1f} GiB, host {self.peak_host_bytes() / GiB:.1f} GiB"
               if self.device.gpu else f"peak memory {self.peak_host_bytes() / GiB:.1f} GiB")
        if self.device.timed:
            cost = (f"≈ {_secs(self.seconds())} (curvature+solve {_secs(self.seconds('curvature_solve'))}, "
                    f"diagnostics {_secs(self.seconds('diagnostics'))}; compute only, a floor)")
        else:
            flops = {k: sum(p.flops for p in self.phases if k in (None, p.phase))
                     for k in (None, "curvature_solve", "diagnostics")}
            cost = (f"{_si(flops[None], 'flop')} (curvature+solve {_si(flops['curvature_solve'], 'flop')}, "
                    f"diagnostics {_si(flops['diagnostics'], 'flop')}; times: influence-job plan --device cpu)")
        return (f"plan ({self.device.name}, {self.ranks} rank{'s' if self.ranks > 1 else ''}): {cost}, {mem}; routes "
                + ", ".join(f"{k} {v}" for k, v in sorted(routes.items()))
                + (f"; {len(self.warnings)} warning(s)" if self.warnings else ""))


def _secs(x: float) -> str:
    """Seconds to a tenth from 10 s, else to three significant digits (microseconds do not print as 0.000 s)."""
    return f"{x:.1f} s" if x >= 10 else f"{x:.3g} s"


def module_estimate(dims: Dims, prompt_rows: list[int], prompt_responses: list[int], cfg,
                    rate=lambda kind: 1.0, limit_bytes: float | None = None,
                    on_gpu: bool = False) -> tuple[str, str, float, float, int]:
    """(route, why, flops, seconds, peak bytes) of one module's curvature + solves: the global factorisation (scope
    global) and one per prompt (scope per_prompt, or for the influence rows), as engine.process_module does them.
    Routes are chosen as the engine chooses them (curvature.pick_route) but timed with the device's rates."""
    token = cfg.curvature.source == "token"
    N = sum(prompt_responses)
    rows = sum(prompt_rows) if token else N
    row_dim = dims.k_in + dims.k_out if token else dims.D
    width = token_gram_width(dims.k_out, dims.k_in) if token else dims.D * dims.D

    def one(n: int, n_rhs: int, quad: bool) -> tuple[str, str, RouteEstimate, float]:
        """(route, why, estimate, seconds) of one factorisation, its Gram dtype resolved as factor() does."""
        gram = resolve_gram_dtype(cfg.compute.gram_dtype, on_gpu, n, dims.D, width, n_rhs, quad)

        def seconds(e: RouteEstimate) -> float:
            return (e.gram_flops / rate(gram) + e.fp64_flops / rate("float64")
                    + e.factor_flops / rate("float64_factor"))

        est = route_estimates(n, dims.D, row_dim, width, n_rhs, token, cfg.compute.token_chunk,
                              refine_steps(token, gram, quad))
        route, why = pick_route(est, cfg.curvature.solver, limit_bytes, seconds)
        return route, why, est[route], seconds(est[route])

    runs = []
    if cfg.curvature.scope == "global":
        runs.append(one(rows, N, True))
    if cfg.curvature.scope == "per_prompt" or cfg.influence.enabled:
        for n_p, r_p in zip(prompt_rows if token else prompt_responses, prompt_responses, strict=True):
            per_prompt = cfg.curvature.scope == "per_prompt"
            runs.append(one(n_p, N if per_prompt else r_p, per_prompt))
    route, why, _, _ = runs[0]
    flops = sum(e.flops for _, _, e, _ in runs) + 2.0 * N * N * dims.D  # + the RAW Gram G Gᵀ
    secs = sum(t for _, _, _, t in runs) + 2.0 * N * N * dims.D / rate("float64")
    routes = {r for r, _, _, _ in runs}
    if len(routes) > 1:
        route, why = "mixed(" + ",".join(sorted(routes)) + ")", why + "; per prompt: " + "/".join(sorted(routes))
    return route, why, flops, secs, max(e.peak_bytes for _, _, e, _ in runs)


def _factor_bytes(dims: Dims, rows: int, responses: int, factor_bytes: int) -> int:
    return rows * (dims.k_in + dims.k_out) * factor_bytes + responses * dims.D * 8


def make_plan(cfg, work: Workload, device: DeviceProfile, ranks: int = 1, baseline_host: float | None = None,
              suggest: bool = True) -> Plan:
    """The plan of ``cfg`` on ``ranks`` ranks of ``device``.

    ``baseline_host``: host bytes of a process with the libraries loaded (default: this process's resident size
    now, which has imported torch and transformers, plus the device's context overhead). ``suggest``: when it does
    not fit, re-plan with the usual remedies and say which fit (plan.notes).
    """
    baseline = (baseline_host if baseline_host is not None else rss_bytes()) + device.host_overhead_bytes
    fb = 8 if work.model_dtype == "float64" else DTYPES[cfg.compute.factor_dtype].itemsize
    mb = DTYPES[work.model_dtype].itemsize
    N, P = len(work.prompt_of), work.n_prompts
    prompt_rows = np.bincount(work.prompt_of, weights=work.kept, minlength=P).astype(int).tolist()
    prompt_resp = np.bincount(work.prompt_of, minlength=P).astype(int).tolist()
    T = int(sum(prompt_rows))
    limit = device.memory_bytes * 0.9
    plans = []
    for m in work.modules:
        route, why, flops, secs, peak = module_estimate(m.dims, prompt_rows, prompt_resp, cfg, device.rate, limit,
                                                        device.gpu)
        plans.append(ModulePlan(m.name, m.kind, m.dims.D, route, why, flops, secs, peak,
                                _factor_bytes(m.dims, T, N, fb)))
    _plan_diagnostics(cfg, work, plans, prompt_rows, prompt_resp, device, limit)
    for m, owner in zip(plans, assign_modules([m.seconds + m.diagnostic_seconds for m in plans], ranks), strict=True):
        m.owner = owner
    phases = _phases(cfg, work, plans, device, ranks, baseline, fb, mb)
    plan = Plan(device, ranks, plans, phases)
    _check(cfg, work, plan, limit)
    if plan.warnings and suggest:
        plan.notes += _what_fits(cfg, work, device, ranks)
    return plan


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


def _plan_diagnostics(cfg, work: Workload, plans: list[ModulePlan], prompt_rows, prompt_resp, device, limit) -> None:
    """Each module's diagnostic flops and time."""
    layers = similarity_layers(cfg, [m.layer for m in work.modules])
    for shape, plan in zip(work.modules, plans, strict=True):
        similarity = runs_similarity(cfg, shape.layer, layers, work.n_prompts)
        plan.diagnostic_flops = diagnostic_flops(cfg, shape.dims, similarity, shape.name == work.unprojected,
                                                 prompt_rows, prompt_resp, limit)
        plan.diagnostic_seconds = plan.diagnostic_flops / device.rate("float64")


def _capture_flops(work: Workload, ranks_resp: np.ndarray, micro_batch_tokens: int,
                   score_copies: int) -> tuple[float, float, float, int]:
    """(model flops in the model's dtype, float64 hook flops, largest activation bytes of one micro-batch, number
    of micro-batches) of one rank's capture."""
    from influence_job.data import micro_batches

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
    heads × Σ s² per layer (``score_entries``: Σ over the batch's sequences of s², padded, times the copies held —
    measured on CPU with tiny-qwen2: about 1 for the CPU sdpa kernel, 3 for eager attention)."""
    mb = DTYPES[work.model_dtype].itemsize
    per_layer = (4 * work.hidden + 2 * work.kv_dim + 3 * work.intermediate) * mb
    logits = work.vocab * (2 * mb + 4)
    return tokens * (work.layers * per_layer + logits) + score_entries * work.heads * work.layers * mb


def _phases(cfg, work: Workload, plans: list[ModulePlan], device: DeviceProfile, ranks: int, baseline: float,
            fb: int, mb: int) -> list[PhasePlan]:
    P = work.n_prompts
    tokens = np.bincount(work.prompt_of, weights=work.seq_lengths, minlength=P)
    shards = shard_prompts(tokens.astype(int).tolist(), ranks)
    weights = work.params * mb
    dev_rate = device.rate({"float64": "float64", "float32": "float32"}.get(work.model_dtype, work.model_dtype))
    # Building a built-in model's random weights, or reading (and hashing) a checkpoint: about 1 GB/s.
    load_seconds = work.params * (4 if cfg.model.builtin else mb) / 1e9
    host_load = baseline + (work.params * (4 + mb) if cfg.model.builtin else weights)
    out = []
    for r, (a, b) in enumerate(shards):
        local = np.flatnonzero((work.prompt_of >= a) & (work.prompt_of < b))
        n_rows = int(work.kept[local].sum())
        score_copies = 3 if cfg.model.attn_implementation == "eager" else (0 if device.gpu else 1)
        model_flops, hook_flops, activations, n_batches = _capture_flops(work, local, cfg.compute.micro_batch_tokens,
                                                                         score_copies)
        factors = sum(_factor_bytes(m.dims, n_rows, len(local), fb) for m in work.modules)
        unproj = next((len(local) * m.dims.d_in * m.dims.d_out * 8 for m in work.modules
                       if m.name == work.unprojected), 0)
        capture_dev = weights + factors + unproj + activations
        owned = [m for m in plans if m.owner == r]
        held = sum(m.factor_bytes for m in owned)
        exchange_dev = factors + held if ranks > 1 else factors
        solve_dev = held + max((m.peak_bytes for m in owned), default=0)
        moved = sum(m.factor_bytes for m in plans) * (ranks - 1) / ranks if ranks > 1 else 0.0

        def host(dev_bytes: float) -> float:
            return baseline + (0.0 if device.gpu else dev_bytes)

        out += [
            PhasePlan("load", r, 0.0, weights, weights, host_load, load_seconds),
            # Bytes: the weights read by each micro-batch's forward and backward, and the factors written.
            PhasePlan("capture", r, model_flops + hook_flops, 2 * weights * n_batches + factors, capture_dev,
                      host(capture_dev), model_flops / dev_rate + hook_flops / device.rate("float64")),
            # One rank keeps its factors where they are; with more, a rank holds its own prompts' factors of every
            # module until sent and the whole factors of the modules it owns.
            PhasePlan("exchange", r, 0.0, moved, exchange_dev, host(exchange_dev),
                      moved / (450e9 if device.gpu else 5e9)),
            PhasePlan("curvature_solve", r, sum(m.flops for m in owned), held, solve_dev, host(solve_dev),
                      sum(m.seconds for m in owned)),
            PhasePlan("diagnostics", r, sum(m.diagnostic_flops for m in owned), 0.0, solve_dev, host(solve_dev),
                      sum(m.diagnostic_seconds for m in owned)),
        ]
    return out


# --- warnings and the settings that fit --------------------------------------------------------------------


def _check(cfg, work: Workload, plan: Plan, limit: float) -> None:
    dev = plan.device
    over = [m for m in plan.modules if m.peak_bytes > limit]
    for m in over[:3]:
        plan.warnings.append(
            f"{m.name}: {m.route} route needs {m.peak_bytes / GiB:.1f} GiB for one factorisation, more than 90 % "
            f"of the {dev.name}'s {dev.memory_bytes / GiB:.0f} GiB ({m.why})")
    if len(over) > 3:
        plan.warnings.append(f"... and {len(over) - 3} more modules of that size")
    peak = plan.peak_device_bytes() if dev.gpu else plan.peak_host_bytes()
    if peak > limit and not over:
        worst = max(plan.phases, key=lambda p: p.peak_device_bytes)
        plan.warnings.append(
            f"rank {worst.rank}'s {worst.phase} phase needs {peak / GiB:.1f} GiB, more than 90 % of the "
            f"{dev.name}'s {dev.memory_bytes / GiB:.0f} GiB")


def _fits(plan: Plan) -> bool:
    limit = plan.device.memory_bytes * 0.9
    return (plan.peak_device_bytes() if plan.device.gpu else plan.peak_host_bytes()) <= limit


def _what_fits(cfg, work: Workload, device: DeviceProfile, ranks: int) -> list[str]:
    """Re-plan with the usual remedies and say which fit. When the capture alone does not fit, first the
    capture's remedies (bfloat16 weights, smaller micro-batches), then each curvature remedy on top of them."""
    limit = device.memory_bytes * 0.9

    def attempt(c, r) -> Plan:
        return make_plan(c, replace(work, modules=_reshaped(work, c), model_dtype=c.model.dtype), device, r,
                         baseline_host=0.0, suggest=False)

    def capture_peak(p: Plan) -> float:
        return max(x.peak_device_bytes if device.gpu else x.peak_host_bytes for x in p.phases if x.phase == "capture")

    base, prefix = cfg, []
    if capture_peak(attempt(cfg, ranks)) > limit:
        for dtype in dict.fromkeys([cfg.model.dtype, "bfloat16"]):
            tokens = [t for t in (cfg.compute.micro_batch_tokens // 2**i for i in range(6)) if t]
            found = next((t for t in tokens if capture_peak(attempt(
                _with(cfg, model={"dtype": dtype}, compute={"micro_batch_tokens": t}), ranks)) <= limit), None)
            if found:
                base = _with(cfg, model={"dtype": dtype}, compute={"micro_batch_tokens": found})
                prefix = ([f"model.dtype: {dtype}"] if dtype != cfg.model.dtype else []) + \
                    ([f"compute.micro_batch_tokens: {found}"] if found != cfg.compute.micro_batch_tokens else [])
                break
        else:
            return ["the capture does not fit even with bfloat16 weights and 256-token micro-batches"]
    tries = [(prefix, base, ranks)] if prefix else []
    if cfg.curvature.solver != "auto":
        tries.append((prefix + ["curvature.solver: auto"], _with(base, curvature={"solver": "auto"}), ranks))
    tries.append((prefix + ["curvature.source: response"], _with(base, curvature={"source": "response"}), ranks))
    for f in (cfg.projection.factor * 2, cfg.projection.factor * 4):
        tries.append((prefix + [f"projection.factor: {f}"], _with(base, projection={"factor": f}), ranks))
    for cap in (8192, 4096):
        tries.append((prefix + [f"projection.max_hessian_dim: {cap}"],
                      _with(base, projection={"max_hessian_dim": cap}), ranks))
    for more in (ranks * 2, ranks * 8):
        tries.append((prefix + [f"{more} ranks"], base, more))
    lines = []
    for labels, c, r in tries:
        try:
            p = attempt(c, r)
        except Exception as exc:  # noqa: BLE001 — a remedy that cannot be planned is reported, not raised
            lines.append(f"{' + '.join(labels)}: cannot be planned ({exc})")
            continue
        mem = p.peak_device_bytes() if device.gpu else p.peak_host_bytes()
        lines.append(f"{' + '.join(labels)}: {'fits' if _fits(p) and not p.warnings else 'does not fit'} "
                     f"(peak {mem / GiB:.1f} GiB, ≈ {_secs(p.seconds())})")
    return lines


def _with(cfg, **sections):
    data = cfg.model_dump()
    for key, value in sections.items():
        data[key] = {**data[key], **value}
    return type(cfg).model_validate(data)


def _reshaped(work: Workload, cfg) -> list[ModuleShape]:
    return [replace(m, dims=projected_dims(m.dims.d_in, m.dims.d_out, cfg.projection)) for m in work.modules]


# --- printing ----------------------------------------------------------------------------------------------


def _si(x: float, unit: str = "") -> str:
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}".rstrip()


def render(plan: Plan) -> str:
    """The plan as text: per phase and rank, then per module kind, then warnings and what fits."""
    dev = plan.device
    lines = [f"device: {dev.source}; {dev.memory_bytes / GiB:.0f} GiB; rates (flop/s): "
             + ", ".join(f"{k} {_si(v)}" for k, v in dev.rates.items()),
             f"ranks: {plan.ranks}", "",
             "phase            rank      flops   bytes moved  peak device   peak host   est. time"]
    for p in plan.phases:
        lines.append(f"{p.phase:<16} {p.rank:>4} {_si(p.flops):>10} {_si(p.bytes_moved, 'B'):>13} "
                     f"{p.peak_device_bytes / GiB:>9.2f} Gi {p.peak_host_bytes / GiB:>8.2f} Gi {_secs(p.seconds):>11}")
    lines += ["", "estimated wall time (slowest rank per phase; a rank's curvature_solve and diagnostics as one, they "
              f"interleave; statistics/report/write not included): {_secs(plan.seconds())}", "",
              "modules (by kind): count, D, route and why (the first factorisation's two routes, timed), flops and "
              "estimated time per module (all its factorisations), largest working set"]
    kinds: dict[str, list[ModulePlan]] = {}
    for m in plan.modules:
        kinds.setdefault(m.kind, []).append(m)
    for kind, ms in kinds.items():
        m = max(ms, key=lambda x: x.flops)
        lines.append(f"  {kind:<10} ×{len(ms):<3} D={m.D:<7} {m.route:<8} {_si(m.flops):>9} {_secs(m.seconds)} "
                     f"{m.peak_bytes / GiB:.2f} GiB — {m.why}")
        if m.diagnostic_flops:
            lines.append(f"  {'':<10}      diagnostics {_si(m.diagnostic_flops)} ({_secs(m.diagnostic_seconds)}) "
                         f"on the modules that have them")
    lines.append("")
    lines += [f"warning: {w}" for w in plan.warnings] or ["fits: no warnings"]
    if plan.notes:
        lines += ["", "settings that would fit:"] + [f"  {n}" for n in plan.notes]
    return "\n".join(lines)


def as_dict(plan: Plan) -> dict:
    """The plan as JSON-ready data (`influence-job plan --json`)."""
    return {
        "device": {"name": plan.device.name, "memory_bytes": plan.device.memory_bytes, "rates": plan.device.rates,
                   "source": plan.device.source},
        "ranks": plan.ranks,
        "seconds": plan.seconds(),
        "peak_device_bytes": plan.peak_device_bytes(),
        "peak_host_bytes": plan.peak_host_bytes(),
        "phases": [vars(p) for p in plan.phases],
        "modules": [vars(m) for m in plan.modules],
        "warnings": plan.warnings,
        "fits_with": plan.notes,
        "summary": plan.summary(),
    }
