"""The plan as text (`influence-job plan`) and as JSON-ready data (`--json`)."""

from __future__ import annotations

from influence_job.planning.plan import ModulePlan, Plan, secs_text, si_text
from influence_job.planning.profiles import GiB


def render(plan: Plan) -> str:
    """The plan as text: per phase and rank, then per module kind, then warnings and what fits."""
    dev = plan.device
    lines = [f"device: {dev.source}; {dev.memory_bytes / GiB:.0f} GiB; rates (flop/s): "
             + ", ".join(f"{k} {si_text(v)}" for k, v in dev.rates.items()),
             f"ranks: {plan.ranks}", "",
             "phase            rank      flops   bytes moved  peak device    peak host   est. time"]
    for p in plan.phases:
        lines.append(f"{p.phase:<16} {p.rank:>4} {si_text(p.flops):>10} {si_text(p.bytes_moved, 'B'):>13} "
                     f"{p.peak_device_bytes / GiB:>8.2f} GiB {p.peak_host_bytes / GiB:>8.2f} GiB "
                     f"{secs_text(p.seconds):>11}")
    lines += ["", "estimated wall time (slowest rank per phase; a rank's curvature_solve and diagnostics as one, they "
              f"interleave; statistics/report/write not included): {secs_text(plan.seconds())}", "",
              "modules (by kind): count, D, route and why (the first factorisation's two routes, timed), flops and "
              "estimated time per module (all its factorisations), largest working set"]
    kinds: dict[str, list[ModulePlan]] = {}
    for m in plan.modules:
        kinds.setdefault(m.kind, []).append(m)
    for kind, ms in kinds.items():
        m = max(ms, key=lambda x: x.flops)
        lines.append(f"  {kind:<10} ×{len(ms):<3} D={m.D:<7} {m.route:<8} {si_text(m.flops):>9} "
                     f"{secs_text(m.seconds)} {m.peak_bytes / GiB:.2f} GiB — {m.why}")
        if m.diagnostic_flops:
            lines.append(f"  {'':<10}      diagnostics {si_text(m.diagnostic_flops)} "
                         f"({secs_text(m.diagnostic_seconds)}) on the modules that have them")
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
        "modules": [{k: v for k, v in vars(m).items() if k != "factorisations"} for m in plan.modules],
        "warnings": plan.warnings,
        "fits_with": plan.notes,
        "summary": plan.summary(),
    }
