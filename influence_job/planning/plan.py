"""The cost and memory planner: what a configuration will cost, per phase and per rank, before it runs.

From the workload (the model's shape and the data's token counts) it prices each module's factorisations as the
engine runs them (estimate.module_estimate over maths.schedule), the diagnostics beside them and each phase's
flops, bytes and peak memory on a device profile; it assigns modules to ranks as the run does
(assignment.assign_modules) and warns when something will not fit — with the settings that would.

Estimated time is flops ÷ the profile's rate for that kind of work, a floor that ignores launch overheads and
Python: close at full size, an underestimate for tiny models (bench/default_diagnostic.py prints both).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from influence_job.base.memory import rss_bytes
from influence_job.inputs.model import DTYPES
from influence_job.maths.projection import projected_dims
from influence_job.maths.schedule import Executed
from influence_job.planning.assignment import assign_modules, shard_prompts
from influence_job.planning.estimate import (
    capture_flops,
    factor_bytes,
    module_seconds,
    runs_similarity,
    schedule_of,
    similarity_layers,
)
from influence_job.planning.profiles import DeviceProfile, GiB
from influence_job.planning.workload import ModuleShape, Workload


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
    factorisations: list[Executed] = field(default_factory=list)  # as the engine would run them


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
            cost = (f"≈ {secs_text(self.seconds())} (curvature+solve {secs_text(self.seconds('curvature_solve'))}, "
                    f"diagnostics {secs_text(self.seconds('diagnostics'))}; compute only, a floor)")
        else:
            flops = {k: sum(p.flops for p in self.phases if k in (None, p.phase))
                     for k in (None, "curvature_solve", "diagnostics")}
            cost = (f"{si_text(flops[None], 'flop')} (curvature+solve {si_text(flops['curvature_solve'], 'flop')}, "
                    f"diagnostics {si_text(flops['diagnostics'], 'flop')}; times: influence-job plan --device cpu)")
        return (f"plan ({self.device.name}, {self.ranks} rank{'s' if self.ranks > 1 else ''}): {cost}, {mem}; routes "
                + ", ".join(f"{k} {v}" for k, v in sorted(routes.items()))
                + (f"; {len(self.warnings)} warning(s)" if self.warnings else ""))


def secs_text(x: float) -> str:
    """Seconds to a tenth from 10 s, else to three significant digits (microseconds do not print as 0.000 s)."""
    return f"{x:.1f} s" if x >= 10 else f"{x:.3g} s"


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
    ends = np.cumsum(prompt_resp).tolist()  # responses are grouped by prompt, in prompt order
    schedule = schedule_of(cfg, list(zip([0, *ends[:-1]], ends, strict=True)),
                           np.concatenate([[0], np.cumsum(work.kept)]).astype(int))
    layers = similarity_layers(cfg, [m.layer for m in work.modules])
    plans = []
    for m in work.modules:
        est, diag_flops = module_seconds(cfg, m.dims, schedule, runs_similarity(cfg, m.layer, layers, P),
                                         m.name == work.unprojected, prompt_rows, prompt_resp, device, limit)
        plans.append(ModulePlan(m.name, m.kind, m.dims.D, est.route, est.why, est.flops, est.seconds, est.peak_bytes,
                                factor_bytes(m.dims, T, N, fb), factorisations=est.factorisations,
                                diagnostic_flops=diag_flops, diagnostic_seconds=diag_flops / device.rate("float64")))
    for m, owner in zip(plans, assign_modules([m.seconds + m.diagnostic_seconds for m in plans], ranks), strict=True):
        m.owner = owner
    phases = _phases(cfg, work, plans, device, ranks, baseline, fb, mb)
    plan = Plan(device, ranks, plans, phases)
    _check(cfg, work, plan, limit)
    if plan.warnings and suggest:
        plan.notes += _what_fits(cfg, work, device, ranks)
    return plan


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
        model_flops, hook_flops, activations, n_batches = capture_flops(work, local, cfg.compute.micro_batch_tokens,
                                                                         score_copies)
        factors = sum(factor_bytes(m.dims, n_rows, len(local), fb) for m in work.modules)
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
                     f"(peak {mem / GiB:.1f} GiB, ≈ {secs_text(p.seconds())})")
    return lines


def _with(cfg, **sections):
    data = cfg.model_dump()
    for key, value in sections.items():
        data[key] = {**data[key], **value}
    return type(cfg).model_validate(data)


def _reshaped(work: Workload, cfg) -> list[ModuleShape]:
    return [replace(m, dims=projected_dims(m.dims.d_in, m.dims.d_out, cfg.projection)) for m in work.modules]


def si_text(x: float, unit: str = "") -> str:
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}".rstrip()
